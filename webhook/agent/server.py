"""The agent's unix socket server: takes each core from the static helper, and drains the spool
(webhook/agent/spool_drain.py).

Protocol (SOCK_SEQPACKET, one message per step; see webhook/native/coredump-helper.c):

    helper -> agent  b"CDH/1\\0" + each argv[1..] NUL-terminated   (the kernel's %-values)
    agent  -> helper b"ACK"                                         (sent at once)
    helper -> agent  b"FD" + SCM_RIGHTS(the core pipe)              (the helper has let go)
    agent  -> helper b"outcome=... size=... path=... reason=..."    (the helper logs it)

The helper only sends the fd after the ACK and spools when the ACK is late, so a core is never
read by both. The kernel keeps the crashing process (and ``/proc/<pid>``) until every reader
of the pipe other than itself has closed it (``wait_for_dump_helpers``): once the fd is here,
the process is pinned until THIS process closes it, whatever the helper does. The dump timeout
is therefore enforced here: when a handler overruns, the fd number is atomically replaced by a
directory (``dup2``, webhook/agent/corefd.py), which drops the agent's reference to the pipe (the kernel then sees a
closed pipe, stops dumping and reaps the process) and makes the handler's next read fail with
``EISDIR`` instead of reading a short core as if it were whole.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry

from webhook.agent.corefd import CoreFd, Once
from webhook.agent.release import releasing
from webhook.agent.server_metrics import ServerMetrics
from webhook.agent.settings import AgentSettings
from webhook.agent.spool_drain import STOPPING, SpoolDrain
from webhook.agent.stream_limits import REASON_AGENT_STOPPED, REASON_TIMEOUT

log = logging.getLogger(__name__)

PROTO_HELLO = b"CDH/1"
PROTO_ACK = b"ACK"
PROTO_FD = b"FD"
MAX_MESSAGE = 8192
#: The helper answers each step at once; a peer silent this long is gone or broken.
PROTOCOL_TIMEOUT_SECONDS = 5.0
#: The cut comes this long after dump_timeout_seconds: a handler that watches the same deadline
#: (CrashProcessor does) stops first and records "timeout" itself; the cut is the backstop for
#: one stuck elsewhere (a hung NFS write).
CUT_MARGIN_SECONDS = 2.0
#: After cutting an overrunning dump, how long the handler gets to notice and write its metadata.
CUT_GRACE_SECONDS = 5.0

#: handler(request, fd) -> outcome (with .outcome, .reason, .path, .size). The fd belongs to
#: the server: the handler reads it until EOF and must not close it.
Handler = Callable[[Any, int], Any]
#: request_factory(argv, spooled) -> the handler's request.
RequestFactory = Callable[[list[str], bool], Any]


def crash_request(argv: list[str], spooled: bool) -> Any:
    """Build H4b's ``CrashRequest`` from the helper's arguments."""
    from webhook.agent.crash_request import CrashRequest

    request = CrashRequest.from_argv(list(argv))
    return dataclasses.replace(request, spooled=True) if spooled else request


@dataclass
class ServerOutcome:
    """An outcome the server decides itself (the handler overran, raised, or never returned)."""

    outcome: str
    reason: str
    path: str | None = None
    size: int = 0


class AgentServer:
    """Listens on ``settings.socket_path``; hands each core to ``handler`` under a deadline."""

    def __init__(
        self,
        settings: AgentSettings,
        handler: Handler,
        *,
        request_factory: RequestFactory = crash_request,
        registry: CollectorRegistry | None = None,
        cut_margin_seconds: float = CUT_MARGIN_SECONDS,
        cut_grace_seconds: float = CUT_GRACE_SECONDS,
    ) -> None:
        self.settings = settings
        self.cut_margin_seconds = cut_margin_seconds
        self.cut_grace_seconds = cut_grace_seconds
        self.handler = handler
        self.request_factory = request_factory
        self.registry = registry if registry is not None else REGISTRY
        self.metrics = ServerMetrics(self.registry)
        self._slots = threading.BoundedSemaphore(max(1, settings.max_concurrent_dumps))
        self._stop = threading.Event()
        #: Set when a stopping agent's wait is over: dumps still running are cut, cores still
        #: waiting for a slot go to the spool.
        self._abandon = threading.Event()
        self._listener: socket.socket | None = None
        self._socket_ino = -1
        self._threads: list[threading.Thread] = []
        self._active: set[threading.Thread] = set()
        self._active_lock = threading.Lock()
        self._placeholder = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._spool = SpoolDrain(settings, self._deliver, self.metrics, self._stop)

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Bind the socket (0600), drain the spool once, then serve in background threads."""
        self._listener = self._bind(self.settings.socket_path)
        self._socket_ino = os.stat(self.settings.socket_path).st_ino
        self._spawn(self._accept_loop, "agent-accept")
        self._spawn(self._drain_loop, "agent-spool")

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    @property
    def healthy(self) -> bool:
        """Serving: the socket is bound and the accept loop is alive."""
        return self._listener is not None and not self._stop.is_set() and all(t.is_alive() for t in self._threads)

    def stop(self, wait_seconds: float = 10.0) -> None:
        """Stop accepting (the helper spools new crashes), give in-flight dumps ``wait_seconds``.

        Cores waiting for a slot do not wait: they are written to the spool at once, where the
        next agent finds them. Dumps still running when the wait is over are cut (marked
        partial by their handler, with the reason) rather than dying with the process.
        """
        first = not self._stop.is_set()
        self._stop.set()
        if self._listener is not None and first:
            try:
                if os.stat(self.settings.socket_path).st_ino == self._socket_ino:
                    os.unlink(self.settings.socket_path)  # ours, not a successor's
            except FileNotFoundError:
                pass
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept() at once
            except OSError:
                pass
            self._listener.close()
        for t in self._threads:
            t.join(timeout=2.0)
        deadline = time.monotonic() + wait_seconds
        with self._active_lock:
            active = list(self._active)
        for t in active:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        with self._active_lock:
            active = list(self._active)
        if active:
            self._abandon.set()
            late = time.monotonic() + self.cut_grace_seconds + 1.0
            for t in active:
                t.join(timeout=max(0.0, late - time.monotonic()))
        with self._active_lock:
            idle = not self._active
        if idle and self._placeholder >= 0:  # a dump in flight may yet need it to cut its fd
            os.close(self._placeholder)
            self._placeholder = -1

    @staticmethod
    def _bind(path: str) -> socket.socket:
        """Bind a SOCK_SEQPACKET socket, replacing a stale one; refuse if an agent is live."""
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            if not stat.S_ISSOCK(st.st_mode):
                raise RuntimeError(f"{path} exists and is not a socket; refusing to remove it")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            probe.settimeout(1.0)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # stale: left by an agent that was killed
            else:
                raise RuntimeError(f"another agent is already listening on {path}")
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.bind(path)
        os.chmod(path, 0o600)  # before listen(): nobody can connect in between
        sock.listen(128)
        sock.settimeout(0.5)
        return sock

    # --- the helper connections -------------------------------------------------------------
    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                log.exception("accept failed")
                time.sleep(0.1)
                continue
            t = threading.Thread(target=self._serve_connection, args=(conn,), name="agent-dump", daemon=True)
            with self._active_lock:
                self._active.add(t)
            t.start()

    def _serve_connection(self, conn: socket.socket) -> None:
        try:
            with conn:
                self._serve(conn)
        except Exception:  # never let one connection take the agent down
            log.exception("helper connection failed")
        finally:
            with self._active_lock:
                self._active.discard(threading.current_thread())

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(PROTOCOL_TIMEOUT_SECONDS)
        hello = conn.recv(MAX_MESSAGE)
        fields = hello.split(b"\0")
        if not hello.endswith(b"\0") or fields[0] != PROTO_HELLO:
            self.metrics.handovers.labels("protocol_error").inc()
            log.warning("unknown message from a helper; closing", extra={"received": hello[:64].hex()})
            return
        argv = [f.decode("utf-8", "surrogateescape") for f in fields[1:-1]]
        conn.sendall(PROTO_ACK)
        msg, fds, _flags, _addr = socket.recv_fds(conn, MAX_MESSAGE, 1)
        if msg != PROTO_FD or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            # EOF here: the helper timed out before our ACK and is spooling the core itself.
            result = "helper_gave_up" if msg == b"" else "protocol_error"
            self.metrics.handovers.labels(result).inc()
            log.warning("helper did not pass the core", extra={"argv": argv, "result": result})
            return
        self.metrics.handovers.labels("accepted").inc()
        outcome = self._deliver(argv, fds[0], spooled=False)
        try:
            conn.settimeout(PROTOCOL_TIMEOUT_SECONDS)
            conn.sendall(_outcome_line(outcome))
        except OSError:
            pass  # the helper gave up waiting: it only wanted the answer for its log

    # --- running the handler ----------------------------------------------------------------
    def _deliver(self, argv: list[str], fd: int, *, spooled: bool, note: str = "", entry: str = "") -> Any:
        """Build the request and run the handler under the slot limit and the dump timeout.

        Always closes ``fd``; never raises.
        """
        core = CoreFd(fd)
        try:
            try:
                request = self.request_factory(argv, spooled)
                if spooled:
                    request = _with_spool_reason(request, note, entry)
            except Exception as exc:  # bad arguments: the core cannot be attributed
                log.error("bad helper arguments", extra={"argv": argv, "error": str(exc)})
                core.release()  # no handler thread will hold it
                return ServerOutcome("failed", f"bad helper arguments: {exc}")
            self.metrics.dumps_queued.inc()
            try:
                got_slot = self._acquire_slot(spooled)
            finally:
                self.metrics.dumps_queued.dec()
            if not got_slot:
                core.release()  # no handler thread will hold it
                if spooled:  # already in the spool: left there for the next agent
                    return ServerOutcome(STOPPING, "agent stopped before this spooled core's turn")
                return self._spool_at_stop(argv, core)
            self.metrics.dumps_in_progress.inc()
            slot = Once(self._free_slot)
            try:
                return self._run_with_deadline(request, core, argv, note, slot)
            finally:
                slot()
        finally:
            core.release()  # closes now, or when a handler that overran finally returns

    def _free_slot(self) -> None:
        self.metrics.dumps_in_progress.dec()
        self._slots.release()

    def _acquire_slot(self, spooled: bool) -> bool:
        """Wait for a dump slot; False when the agent is stopping (and the core should be spooled)."""
        while True:
            if self._stop.is_set():
                # Stopping: a core that has not started goes to the spool now rather than wait
                # for a slot it may never get before the process exits (a spooled one stays).
                return False if spooled else self._slots.acquire(blocking=False)
            if self._slots.acquire(timeout=0.2):
                if self._stop.is_set() and spooled:
                    self._slots.release()
                    return False
                return True

    def _spool_at_stop(self, argv: list[str], core: CoreFd) -> ServerOutcome:
        """Write a core that never got a slot into the spool, the next agent delivers it."""
        from webhook.agent.handback import write_spool_entry

        try:
            entry = write_spool_entry(self.settings, argv, core.fd,
                                      "agent stopped before this core's turn; spooled by the agent")
        except OSError as exc:
            log.error("could not spool a core at stop", extra={"argv": argv, "error": str(exc)})
            return ServerOutcome("failed", f"agent stopped; spooling failed: {exc}")
        self.metrics.stop_spooled.inc()
        log.warning("agent stopping: core spooled for the next agent", extra={"argv": argv, "entry": entry})
        return ServerOutcome("spooled", "agent stopped before this core's turn", path=entry)

    def _run_with_deadline(self, request: Any, core: CoreFd, argv: list[str], note: str,
                           slot: Callable[[], None] = lambda: None) -> Any:
        box: dict[str, Any] = {}
        done = threading.Event()

        def let_go() -> bool:
            """The handler has the core (webhook/agent/release.py): the process and the slot go."""
            if not core.let_go(self._placeholder):
                return False
            slot()  # the next queued crash starts while this one is hashed
            return True

        def work() -> None:
            try:
                with releasing(let_go):
                    box["outcome"] = self.handler(request, core.fd)
            except BaseException as exc:  # the handler promises not to raise; be sure anyway
                box["error"] = exc
            finally:
                done.set()
                core.release()

        started = time.monotonic()
        worker = threading.Thread(target=work, name="agent-handler", daemon=True)
        worker.start()
        timeout = self.settings.dump_timeout_seconds
        deadline = started + timeout + self.cut_margin_seconds
        while not done.wait(max(0.0, min(0.2, deadline - time.monotonic()))):
            if self._abandon.is_set():
                reason = "agent stopped before the dump finished"
                if core.cut(self._placeholder, reason, REASON_AGENT_STOPPED):
                    self.metrics.stop_cut.inc()
                    log.warning("dump cut: the agent is stopping", extra={"argv": argv, "reason": reason})
                break
            if time.monotonic() >= deadline:
                reason = f"dump timeout ({timeout:g}s)"
                if core.cut(self._placeholder, reason, REASON_TIMEOUT):
                    self.metrics.dump_timeouts.inc()
                    log.warning("dump cut by the timeout; the process is released",
                                extra={"argv": argv, "reason": reason})
                break
        if not done.is_set():
            if not done.wait(self.cut_grace_seconds):
                self.metrics.handlers_stuck.inc()
                threading.Thread(target=self._watch_stuck, args=(done,), daemon=True).start()
                log.error("handler still running after its dump was cut", extra={"argv": argv})
                return ServerOutcome("failed", reason + "; handler did not return")
        if "error" in box:
            log.error("handler raised", extra={"argv": argv, "error": repr(box["error"])})
            return ServerOutcome("failed", f"handler error: {box['error']!r}")
        outcome = box.get("outcome")
        if outcome is None:
            return ServerOutcome("failed", "handler returned nothing")
        log.debug(
            "handler finished",
            extra={"argv": argv, "seconds": round(time.monotonic() - started, 3), "note": note},
        )
        return outcome

    def _watch_stuck(self, done: threading.Event) -> None:
        done.wait()
        self.metrics.handlers_stuck.dec()

    # --- the spool --------------------------------------------------------------------------
    def _drain_loop(self) -> None:
        interval = max(0.5, self.settings.spool_drain_interval_seconds)
        while not self._stop.is_set():
            try:
                self.drain_spool()
            except Exception:
                log.exception("spool drain failed")
            self._stop.wait(interval)
    def drain_spool(self) -> list[tuple[str, str]]:
        """Deliver every complete spool entry through the handler (webhook/agent/spool_drain.py);
        returns ``(entry, result)`` pairs."""
        return self._spool.drain()


def _with_spool_reason(request: Any, reason: str, entry: str = "") -> Any:
    """Hand the helper's spool reason and the entry (its record of the process: cgroup,
    registration) to a request that has those fields (H4b's)."""
    if not dataclasses.is_dataclass(request) or isinstance(request, type):
        return request
    names = {f.name for f in dataclasses.fields(request)}
    changes = {k: v for k, v in (("spool_reason", reason), ("spool_entry", entry)) if v and k in names}
    return dataclasses.replace(request, **changes) if changes else request



def _outcome_line(outcome: Any) -> bytes:
    """The line the helper writes to helper.log."""
    parts = [
        f"outcome={getattr(outcome, 'outcome', '?')}",
        f"size={getattr(outcome, 'size', 0)}",
        f"path={getattr(outcome, 'path', None) or '-'}",
        f"reason={getattr(outcome, 'reason', '') or '-'}",
    ]
    return " ".join(parts).encode("utf-8", "replace")[:MAX_MESSAGE]
