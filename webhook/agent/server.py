"""The agent's unix socket server: takes each core from the static helper, and drains the spool.

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
directory (``dup2``), which drops the agent's reference to the pipe (the kernel then sees a
closed pipe, stops dumping and reaps the process) and makes the handler's next read fail with
``EISDIR`` instead of reading a short core as if it were whole.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import socket
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from webhook.agent.release import releasing
from webhook.agent.settings import AgentSettings

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
#: A spooled entry whose delivery failed this many times is set aside as <name>.failed.
MAX_SPOOL_ATTEMPTS = 3
SPOOL_TMP_SUFFIX = ".tmp"
SPOOL_FAILED_SUFFIX = ".failed"
#: Outcomes after which a spooled entry is done with (anything but "failed").
FINAL_OUTCOMES = frozenset({"written", "partial", "skipped", "rate_limited", "chained"})
#: The server's outcome for a spooled core the stopping agent left in the spool (not an attempt).
STOPPING = "stopping"

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


class ServerMetrics:
    """The agent-level series this module owns (the crash path's own live in metrics.py)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        kw = {"registry": registry}
        self.handovers = Counter(
            "coredump_agent_handovers_total",
            "Helper connections by result (accepted, protocol_error, helper_gave_up).",
            ["result"],
            **kw,
        )
        self.dumps_in_progress = Gauge("coredump_agent_dumps_in_progress",
                                       "Cores being read now (until their process is released).", **kw)
        self.dumps_queued = Gauge(
            "coredump_agent_dumps_queued", "Cores received and waiting for a free slot (max_concurrent_dumps).", **kw
        )
        self.dump_timeouts = Counter(
            "coredump_agent_dump_timeouts_total", "Dumps cut by the agent's dump timeout.", **kw
        )
        self.stop_spooled = Counter(
            "coredump_agent_stop_spooled_total",
            "Cores that were waiting for a slot when the agent stopped, written to the spool for the next agent.",
            **kw,
        )
        self.stop_cut = Counter(
            "coredump_agent_stop_cut_total",
            "Dumps still running after the agent's stop timeout, cut and marked partial.",
            **kw,
        )
        self.handlers_stuck = Gauge(
            "coredump_agent_handlers_stuck", "Handlers still running after their dump was cut.", **kw
        )
        self.spool_entries = Gauge("coredump_agent_spool_entries", "Complete entries waiting in the spool.", **kw)
        self.spool_deliveries = Counter(
            "coredump_agent_spool_deliveries_total",
            "Spooled cores handled, by result (delivered, retry, failed, bad).",
            ["result"],
            **kw,
        )


class _CoreFd:
    """The received pipe fd, closed exactly once, and cut on timeout without a reuse race.

    ``cut`` and ``close`` share a lock, and both check that the number still names the file
    that was received (st_dev, st_ino): a handler that closed it by mistake cannot make us
    close or overwrite an unrelated file that reused the number.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        st = os.fstat(fd)
        self._identity = (st.st_dev, st.st_ino)
        self._placeholder: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._holders = 2  # the server and the handler thread: the fd closes when both let go
        self.cut_reason: str | None = None

    def _still_ours(self) -> bool:
        try:
            st = os.fstat(self.fd)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) in (self._identity, self._placeholder)

    def _swap(self, placeholder: int, reason: str | None) -> bool:
        """Put ``placeholder`` where the core's fd was, once, and only while the fd is still ours."""
        with self._lock:
            if self._closed or self._placeholder is not None or not self._still_ours():
                return False
            ph = os.fstat(placeholder)
            os.dup2(placeholder, self.fd, inheritable=False)
            self._placeholder = (ph.st_dev, ph.st_ino)
            if reason is not None:
                self.cut_reason = reason
            return True

    def cut(self, placeholder: int, reason: str) -> bool:
        """Drop our reference to the core; the handler's next read fails (EISDIR)."""
        return self._swap(placeholder, reason)

    def let_go(self, placeholder: int) -> bool:
        """The handler has the whole core: drop the pipe now (the kernel reaps the process)
        while the handler finishes (hash, metadata). Same swap as :meth:`cut`, no reason."""
        return self._swap(placeholder, None)

    def release(self) -> None:
        """One holder is done with the fd; the last one closes it."""
        with self._lock:
            self._holders -= 1
            if self._holders > 0:
                return
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._still_ours():
                os.close(self.fd)
            else:
                log.error("core fd was closed by the handler; not closing its number again", extra={"fd": self.fd})


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
        self._drain_lock = threading.Lock()
        self._placeholder = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

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
            log.warning("unknown message from a helper; closing", extra={"message": hello[:64].hex()})
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
        core = _CoreFd(fd)
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
            slot = _Once(lambda: (self.metrics.dumps_in_progress.dec(), self._slots.release()))
            try:
                return self._run_with_deadline(request, core, argv, note, slot)
            finally:
                slot()
        finally:
            core.release()  # closes now, or when a handler that overran finally returns

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

    def _spool_at_stop(self, argv: list[str], core: _CoreFd) -> ServerOutcome:
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

    def _run_with_deadline(self, request: Any, core: _CoreFd, argv: list[str], note: str,
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
                if core.cut(self._placeholder, reason):
                    self.metrics.stop_cut.inc()
                    log.warning("dump cut: the agent is stopping", extra={"argv": argv, "reason": reason})
                break
            if time.monotonic() >= deadline:
                reason = f"dump timeout ({timeout:g}s)"
                if core.cut(self._placeholder, reason):
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
        """Deliver every complete spool entry through the handler (``spooled=True``).

        Returns ``(entry, result)`` pairs. Entries are removed once handled; a failed delivery
        is retried at the next drain, and set aside as ``<entry>.failed`` after a few tries.
        """
        spool = self.settings.spool_dir
        results: list[tuple[str, str]] = []
        with self._drain_lock:
            try:
                names = sorted(os.listdir(spool))
            except FileNotFoundError:
                return results
            self._adopt_abandoned(spool, names)
            names = sorted(os.listdir(spool))
            pending = [n for n in names if _is_complete_entry(spool, n)]
            self.metrics.spool_entries.set(len(pending))
            for name in pending:
                if self._stop.is_set():
                    break
                result = self._deliver_entry(os.path.join(spool, name))
                self.metrics.spool_deliveries.labels(result).inc()
                results.append((name, result))
            self.metrics.spool_entries.set(
                len([n for n in os.listdir(spool) if _is_complete_entry(spool, n)]) if os.path.isdir(spool) else 0
            )
        return results

    def _adopt_abandoned(self, spool: str, names: list[str]) -> None:
        """A ``.tmp`` entry older than any live helper can be is renamed complete (marked)."""
        max_age = self.settings.spool_timeout_seconds + self.settings.helper_timeout_seconds + 300
        now = time.time()
        for name in names:
            if not name.endswith(SPOOL_TMP_SUFFIX):
                continue
            path = os.path.join(spool, name)
            try:
                if now - os.stat(path).st_mtime < max_age:
                    continue
                with open(os.path.join(path, "reason"), "a") as f:
                    f.write("; spool entry abandoned by the helper before it was complete")
                os.rename(path, path[: -len(SPOOL_TMP_SUFFIX)])
                log.warning("adopted an abandoned spool entry", extra={"entry": name})
            except OSError as exc:
                log.warning("cannot adopt spool entry", extra={"entry": name, "error": str(exc)})

    def _deliver_entry(self, path: str) -> str:
        name = os.path.basename(path)
        try:
            with open(os.path.join(path, "args"), "rb") as f:
                raw = f.read()
        except OSError as exc:
            log.error("spool entry without args; set aside", extra={"entry": name, "error": str(exc)})
            _set_aside(path)
            return "bad"
        argv = [a.decode("utf-8", "surrogateescape") for a in raw.split(b"\0")]
        if argv and argv[-1] == "":
            argv.pop()
        reason = _read_text(os.path.join(path, "reason"))
        core_path = os.path.join(path, "core")
        try:
            fd = os.open(core_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)  # spool was full: args only
        outcome = self._deliver(argv, fd, spooled=True, note=reason, entry=path)
        kind = getattr(outcome, "outcome", "failed")
        log.info(
            "spooled core delivered" if kind in FINAL_OUTCOMES else "spooled core not delivered",
            extra={
                "entry": name,
                "outcome": kind,
                "reason": getattr(outcome, "reason", ""),
                "path": getattr(outcome, "path", None),
                "spool_reason": reason,
            },
        )
        if kind in FINAL_OUTCOMES:
            shutil.rmtree(path, ignore_errors=True)
            return "delivered"
        if kind == STOPPING:
            return "retry"
        attempts = int(_read_text(os.path.join(path, "attempts")) or 0) + 1
        with open(os.path.join(path, "attempts"), "w") as f:
            f.write(str(attempts))
        if attempts >= MAX_SPOOL_ATTEMPTS:
            _set_aside(path)
            return "failed"
        return "retry"


class _Once:
    """Calls ``fn`` the first time it is called, never again (thread-safe)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._fn: Callable[[], Any] | None = fn
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            fn, self._fn = self._fn, None
        if fn is not None:
            fn()


def _is_complete_entry(spool: str, name: str) -> bool:
    return (
        not name.startswith(".")
        and not name.endswith(SPOOL_TMP_SUFFIX)
        and not name.endswith(SPOOL_FAILED_SUFFIX)
        and os.path.isdir(os.path.join(spool, name))
    )


def _set_aside(path: str) -> None:
    try:
        os.rename(path, path + SPOOL_FAILED_SUFFIX)
    except OSError:
        shutil.rmtree(path, ignore_errors=True)


def _with_spool_reason(request: Any, reason: str, entry: str = "") -> Any:
    """Hand the helper's spool reason and the entry (its record of the process: cgroup,
    registration) to a request that has those fields (H4b's)."""
    if not dataclasses.is_dataclass(request) or isinstance(request, type):
        return request
    names = {f.name for f in dataclasses.fields(request)}
    changes = {k: v for k, v in (("spool_reason", reason), ("spool_entry", entry)) if v and k in names}
    return dataclasses.replace(request, **changes) if changes else request


def _read_text(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


def _outcome_line(outcome: Any) -> bytes:
    """The line the helper writes to helper.log."""
    parts = [
        f"outcome={getattr(outcome, 'outcome', '?')}",
        f"size={getattr(outcome, 'size', 0)}",
        f"path={getattr(outcome, 'path', None) or '-'}",
        f"reason={getattr(outcome, 'reason', '') or '-'}",
    ]
    return " ".join(parts).encode("utf-8", "replace")[:MAX_MESSAGE]
