"""The crash path: from the kernel's core pipe and the helper's arguments to a core on disk.

``CrashProcessor.handle`` identifies the crashing process from ``/proc/<%P>`` (registration in
its environment, cross-checked with its cgroup), expands the pod's pattern as the kernel would,
and streams the core into the container's own view (``writer``) within the node's limits
(``stream``, ``limits``), with ``<name>.json`` next to it (``metadata``). Processes without a
registration are skipped, chained to the previous pipe helper or written to the node location.
Logs, metrics, the pod Event and the notification never delay the answer to the helper.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, BinaryIO

from webhook import constants
from webhook.agent import chain as chain_mod
from webhook.agent import inflight
from webhook.agent import metadata as meta
from webhook.agent import metrics as metrics_mod
from webhook.agent.creds import Credentials, CredentialsError, as_process_credentials
from webhook.agent.finish import finish_core
from webhook.agent.identity import UNVERIFIED_DIR, VERIFIED, Resolved, report_mismatches, resolve
from webhook.agent.limits import RateLimiter
from webhook.agent.metafile import ReservedMetadata
from webhook.agent.pod_retention import POD_DIRS_FILE, PodDirs
from webhook.agent.procinfo import CgroupIdentity, Identity, ProcessGone, ProcessInfo, identify, read_process
from webhook.agent.release import release_now
from webhook.agent.settings import AgentSettings
from webhook.agent.stream import REASON_RLIMIT, StreamLimits, parse_size, stream_core
from webhook.agent.writer import OutputFile, SafeRoot
from webhook.pattern import CrashInfo, PatternError, expand, parse

log = logging.getLogger(__name__)

#: The helper's argv after argv[0], in this order (the agent's core_pattern is built from it).
HELPER_ARGS = ("%P", "%p", "%I", "%i", "%s", "%t", "%c", "%d", "%C", "%u", "%g", "%h", "%e")

#: Below this soft RLIMIT_CORE an unregistered process gets no core (systemd-coredump's rule).
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

OUTCOMES = ("written", "partial", "skipped", "rate_limited", "failed", "chained")


@dataclass(frozen=True)
class CrashRequest:
    """The kernel's view of one crash, as the helper passes it (see :data:`HELPER_ARGS`)."""

    global_pid: int
    pid: int
    global_tid: int
    tid: int
    signal: int
    time: int
    rlimit_core: int
    dump_mode: int
    cpu: int
    uid: int
    gid: int
    hostname: str
    comm: str
    #: From the helper's spool: the process is gone, /proc/<global_pid> means nothing.
    spooled: bool = False
    #: Why the helper spooled it (the spool entry's "reason"), recorded in the metadata.
    spool_reason: str = ""
    #: The spool entry's directory: the helper's record of the process (webhook/agent/spooled.py).
    spool_entry: str = ""
    #: A gcore request's ID (webhook/agent/snapshots.py) rather than a crash: not rate
    #: limited, and the metadata says ``gcore``.
    snapshot_id: str = ""

    @classmethod
    def from_argv(cls, argv: list[str]) -> CrashRequest:
        """Parse the helper's arguments (argv[1:]); ValueError says what is wrong."""
        if len(argv) != len(HELPER_ARGS):
            raise ValueError(f"expected {len(HELPER_ARGS)} helper arguments ({' '.join(HELPER_ARGS)}), "
                             f"got {len(argv)}: {argv!r}")
        values: list[Any] = []
        for spec, raw in zip(HELPER_ARGS[:11], argv[:11], strict=False):
            if spec == "%C" and raw == "":
                values.append(0)  # kernels before 6.2 drop %C
                continue
            try:
                values.append(int(raw))
            except ValueError:
                raise ValueError(f"helper argument {spec} is not a number: {raw!r}") from None
            if values[-1] < 0:
                raise ValueError(f"helper argument {spec} is negative: {raw!r}")
        if values[0] <= 0:
            raise ValueError(f"helper argument %P must be a positive PID, got {argv[0]!r}")
        return cls(*values, hostname=argv[11], comm=argv[12])

    def crash_info(self, exe: str = "") -> CrashInfo:
        return CrashInfo(pid=self.pid, global_pid=self.global_pid, tid=self.tid, global_tid=self.global_tid,
                         uid=self.uid, gid=self.gid, signal=self.signal, time=self.time, hostname=self.hostname,
                         comm=self.comm, exe=exe, rlimit_core=self.rlimit_core, dump_mode=self.dump_mode,
                         cpu=self.cpu)


@dataclass
class CrashOutcome:
    """What became of one crash (also the answer the server gives the helper)."""

    outcome: str  # one of OUTCOMES
    reason: str
    #: The core's path as the crashing container sees it (node location: the agent's path).
    path: str | None = None
    metadata_path: str | None = None
    size: int = 0  # original bytes captured
    disk_size: int = 0  # bytes allocated on disk
    duration: float = 0.0
    destination: str | None = None  # "pod", "node", "chain"
    #: Where the agent wrote it, as the agent sees it (for the node location, = path).
    host_path: str | None = None
    digest: str | None = None  # "xxh128:<hex>" (webhook/digest.py)
    compression: str = "none"
    truncated: bool = False
    namespace: str | None = None
    pod: str | None = None
    pod_uid: str | None = None
    container: str | None = None
    container_id: str | None = None
    pid: int = 0
    global_pid: int = 0
    signal: int = 0
    comm: str = ""
    node: str = ""
    #: Cores of this container refused by the rate limit so far (rate_limited outcomes).
    dropped: int = 0
    #: "verified": namespace, pod and container come from the pod watch; "unverified": the
    #: watch did not know the pod at the crash, only pod UID and container ID are given.
    identity: str = "unverified"
    #: (st_dev, st_ino) of the written core: proves it is the same file when the names are
    #: filled in later through another process of the container (webhook/agent/pending.py).
    file_id: tuple[int, int] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


#: What deciding on one crash gives: the outcome, the metadata document (None when nothing was
#: written) and the signature job for the worker (analysis.SignatureJob, or None).
_Handled = tuple[CrashOutcome, dict | None, Any]


#: Names for a crash: from the cgroup and the pod watch only (webhook/agent/identity.py).
_Who = Resolved


@dataclass
class _Target:
    """Where to write: a root, a directory inside it, a file name, and the limits."""

    root_path: str  # what SafeRoot opens (the agent's path of the root)
    directory: str  # inside the root
    name: str
    destination: str  # "pod" or "node"
    max_bytes: int | None
    max_reason: str
    compression: str
    uid: int | None
    gid: int | None
    pattern: str
    #: The crashing process's filesystem credentials: the pod's directories, core, metadata and
    #: saved binaries are created with them (None: the node location, created as the agent).
    creds: Credentials | None = None

    @property
    def pod(self) -> bool:
        return self.destination == "pod"


#: errnos that mean "the crashing process itself could not create this here".
_DENIED = (errno.EACCES, errno.EPERM)

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def _component(value: str | None, fallback: str) -> str:
    """A single, harmless path component for the node location."""
    value = _SAFE_NAME.sub("_", value or "")[:128].strip(".")
    return value or fallback


class CrashProcessor:
    """Handles crashes; safe to call from several threads at once."""

    def __init__(self, settings: AgentSettings, previous_pattern: str | None = None, *,
                 clock: Callable[[], float] = time.time, events: Any = None, notifier: Any = None,
                 metrics: metrics_mod.AgentMetrics | None = None,
                 pod_lookup: Callable[[str], meta.PodView | None] | None = None,
                 proc: str = "/proc", signatures: Any = None, journal: Any = None,
                 pending: Any = None, index: Any = None, pod_gone: Callable[[str], bool] | None = None) -> None:
        """``events``/``notifier``/``index``: objects with ``submit(dict)``; None builds them from
        the settings (``events``, ``notify_url``, ``index``: the CoreDump writer), False disables
        them. ``pod_lookup(pod_uid)`` is the pod watch's cache (namespace, names, image, labels,
        owner); it must not block. ``pod_gone(pod_uid)``: the watch knows the pod was deleted (the
        index marks its emptyDir cores Gone). ``journal``: the in-flight record (inflight.Journal;
        None builds it in the host dir, False disables it). ``pending``
        (``webhook.agent.pending.PendingIdentities``) takes the summaries of crashes the watch did
        not know yet: their Event, notification and CoreDump wait for the verified names."""
        self.settings = settings
        self.previous_pattern = previous_pattern.strip() if previous_pattern else None
        self.clock = clock
        self.metrics = metrics or metrics_mod.get()
        self.pod_lookup = pod_lookup
        self.pending = pending
        self.proc = proc
        self.rate = RateLimiter(settings.rate_limit_count, settings.rate_limit_seconds, clock=clock)
        if events is None:
            from webhook.agent.events import make_event_poster

            events = make_event_poster(settings.events)
        if notifier is None:
            from webhook.agent.notify import make_notifier

            notifier = make_notifier(settings.notify_url, settings.notify_format)
        if index is None:
            from webhook.agent.index import make_index_writer

            index = make_index_writer(settings, pod_lookup, pod_gone)
        self.events = events or None
        self.notifier = notifier or None
        self.index = index or None
        self.node_pattern = parse(settings.node_core_name)
        self.journal = inflight.Journal(settings.host_dir) if journal is None else (journal or None)
        # pod-volume directories written to: the retention loop prunes them (pod_retention.py)
        self.pod_dirs = PodDirs(os.path.join(settings.host_dir, POD_DIRS_FILE))
        self._dropped_seen: set[str] = set()
        self._dropped_lock = threading.Lock()
        # Crash signatures (webhook/agent/analysis.py): None builds the worker from the
        # settings, False disables it; a crash's job goes to it once _report has the summary.
        self.signatures = self._make_signatures(signatures)

    # --- the entry point ------------------------------------------------------------------------
    def handle(self, request: CrashRequest, core: int | BinaryIO) -> CrashOutcome:
        """Save one core (or decide not to); never raises."""
        start = time.monotonic()
        doc: dict[str, Any] | None = None
        job: Any = None
        try:
            outcome, doc, job = self._handle(request, core, start)
        except Exception as exc:  # noqa: BLE001 - the crash path must answer, whatever happened
            log.exception("crash handling failed", extra={"pid": request.global_pid})
            outcome = CrashOutcome("failed", f"internal_error: {exc}")
        outcome.duration = time.monotonic() - start
        outcome.pid = request.pid
        outcome.global_pid = request.global_pid
        outcome.signal = request.signal
        outcome.comm = request.comm
        outcome.node = self.settings.node_name
        try:
            self._report(outcome, doc, job)
        except Exception:  # noqa: BLE001
            log.exception("crash reporting failed")
        return outcome

    # --- decisions ------------------------------------------------------------------------------
    def _handle(self, request: CrashRequest, core: int | BinaryIO, start: float) -> _Handled:
        proc: ProcessInfo | None = None
        if request.spooled:  # who it was, from the helper's record; a live process of its container
            from webhook.agent.spooled import spooled_identity

            ident, proc = spooled_identity(request.spool_entry, self.proc)
        else:
            try:
                proc = read_process(request.global_pid, self.proc)
                ident = identify(proc.environ, proc.cgroup)
            except ProcessGone:
                ident = Identity(None, CgroupIdentity(), "process_gone")
        who = self._who(ident, request)
        if ident.registration is not None and proc is not None:
            key = who.rate_key("")  # the container ID from the cgroup: renaming changes nothing
            if not request.snapshot_id and not self.rate.allow(key):  # a gcore was asked for
                return self._rate_limited(who, key), None, None
            try:
                if who.unwritable:  # a read-only mount the webhook recorded: no attempt that must fail
                    raise _NoPodTarget("pod_volume_read_only", who.unwritable)
                return self._write(request, core, proc, ident, who, self._pod_target(request, proc, ident), start)
            except _NoPodTarget as exc:  # nothing read yet: the node location gets it
                log.warning("pod destination unusable, using the node location",
                            extra={"pid": request.global_pid, "reason": exc.reason, "detail": exc.detail,
                                   "namespace": who.namespace, "pod": who.pod, "container": who.container})
                return self._write(request, core, proc, ident, who, self._node_target(request, proc, who, True),
                                   start, fallback_reason=exc.reason, fallback_detail=exc.detail)

        mode = self.settings.unregistered
        if mode == "auto":
            mode = "chain" if chain_mod.is_pipe(self.previous_pattern) else "node"
        if proc is None:
            mode = "node"  # spooled or vanished: only the node location makes sense
        if mode == "skip":
            return CrashOutcome("skipped", ident.reason, **self._who_fields(who)), None, None
        if mode == "chain":
            if chain_mod.is_pipe(self.previous_pattern):
                return self._chain(request, core, proc, ident, who, start), None, None
            mode = "node"
        if mode != "node":
            log.warning("unknown 'unregistered' setting, using node", extra={"setting": mode})
        if request.rlimit_core < PAGE_SIZE and proc is not None:
            return CrashOutcome("skipped", f"{ident.reason}; rlimit_core {request.rlimit_core} below a page",
                                **self._who_fields(who)), None, None
        key = who.rate_key(request.comm)
        if not self.rate.allow(key):
            return self._rate_limited(who, key), None, None
        target = self._node_target(request, proc, who, False)
        return self._write(request, core, proc, ident, who, target, start)

    def _who(self, ident: Identity, request: CrashRequest) -> _Who:
        """Names from the cgroup and the pod watch; the registration's names are only compared."""
        who = resolve(ident.cgroup, ident.registration, self.pod_lookup)
        if who.mismatches:
            report_mismatches(who, self.metrics, request.global_pid)
        if who.pod_uid and not who.verified:
            self.metrics.unverified.inc()
        return who

    @staticmethod
    def _who_fields(who: _Who) -> dict[str, Any]:
        return {"namespace": who.namespace, "pod": who.pod, "pod_uid": who.pod_uid,
                "container": who.container, "container_id": who.container_id, "identity": who.state}

    def _rate_limited(self, who: _Who, key: tuple[str, str]) -> CrashOutcome:
        self.metrics.rate_limited.labels(who.namespace or "").inc()  # verified, or ""
        dropped = self.rate.dropped(key)
        return CrashOutcome("rate_limited",
                            f"more than {self.settings.rate_limit_count} core(s) in "
                            f"{self.settings.rate_limit_seconds:g}s for this container",
                            dropped=dropped, **self._who_fields(who))

    def _pod_target(self, request: CrashRequest, proc: ProcessInfo, ident: Identity) -> _Target:
        reg = ident.registration
        assert reg is not None
        try:
            pattern = parse(reg.pattern, kernel=True)  # named as the kernel would name it
        except PatternError as exc:
            raise _NoPodTarget("invalid_pattern", exc.reason) from None
        if pattern.dropped:
            self._log_dropped_once(pattern, request)
        expanded = expand(pattern, request.crash_info(proc.exe), append_pid=self.settings.append_pid)
        if pattern.is_relative:
            if request.spooled:  # the crashed process's cwd is gone with it
                raise _NoPodTarget("relative_pattern_spooled", "a relative pattern needs the crashed process's cwd")
            cwd = self._checked_cwd(request, proc)
            expanded = posixpath.join(cwd, expanded)
        directory, name = posixpath.split(expanded)
        # The smaller of the node's and the pod's caps; 0 (or nothing) is no cap, never "no limit
        # at all" for the other (COREDUMP_MAX_SIZE=0 must not lift the node's maximum).
        caps = [c for c in (self.settings.max_core_bytes, parse_size(reg.max_size)) if c]
        max_bytes = min(caps) if caps else None
        compression = (reg.compress or self.settings.compression).strip().lower()
        if compression not in ("zstd", "none"):
            compression = self.settings.compression
        if proc.credentials is None:
            raise _NoPodTarget("root_unreachable",
                               f"credentials of {request.global_pid} unreadable: no filesystem uid/gid in its status")
        # proc is the crashed process, or for a spooled core a live process of the same container
        return _Target(root_path=f"{self.proc}/{proc.global_pid}/root", directory=directory or "/", name=name,
                       destination="pod", max_bytes=max_bytes, max_reason="size_limit",
                       compression=compression, uid=request.uid, gid=request.gid, pattern=reg.pattern,
                       creds=proc.credentials)

    def _log_dropped_once(self, pattern: Any, request: CrashRequest) -> None:
        """The kernel drops unknown specifiers; so do we, and say so once per pattern."""
        with self._dropped_lock:
            if pattern.raw in self._dropped_seen:
                return
            self._dropped_seen.add(pattern.raw)
        log.warning("pattern has specifiers the kernel drops; dropped them too",
                    extra={"pattern": pattern.raw, "dropped": list(pattern.dropped), "pid": request.global_pid})

    def _checked_cwd(self, request: CrashRequest, proc: ProcessInfo) -> str:
        """The process cwd inside its root, proven to be the same directory as its real cwd.

        ``/proc/<pid>/cwd`` is a magic link we must not follow inside the container, and the
        cwd may even lie outside the root (chroot without chdir): we resolve the cwd's path
        from the root with RESOLVE_IN_ROOT and check it is the very directory (st_dev,
        st_ino) the process has as cwd. Anything else is refused (the node location gets it).
        """
        if not proc.cwd:
            raise _NoPodTarget("cwd_outside_root", "the working directory is not below the process root")
        try:
            real = os.stat(f"{self.proc}/{request.global_pid}/cwd")
            with SafeRoot.open(f"{self.proc}/{request.global_pid}/root") as root:
                seen = root.stat(proc.cwd)
        except OSError as exc:
            raise _NoPodTarget("cwd_unreachable", str(exc)) from None
        if (real.st_dev, real.st_ino) != (seen.st_dev, seen.st_ino):
            raise _NoPodTarget("cwd_outside_root", f"{proc.cwd} inside the root is not the process cwd")
        return proc.cwd

    def _node_target(self, request: CrashRequest, proc: ProcessInfo | None, who: _Who,
                     registered: bool) -> _Target:
        short_id = (who.container_id or "unknown-container")[:12]
        if who.pod_uid and who.verified:
            parts = (_component(who.namespace, "_unknown-namespace"), _component(who.pod, f"pod-{who.pod_uid}"),
                     _component(who.container, short_id))
        elif who.pod_uid:  # names not verified: filed by pod UID and container ID only
            parts = (UNVERIFIED_DIR, _component(f"pod-{who.pod_uid}", "pod"), _component(short_id, "container"))
        elif proc is None:
            parts = ("unknown",)
        else:
            parts = ("host",)
        name = expand(self.node_pattern, request.crash_info(proc.exe if proc else ""), append_pid=False)
        name = _component(name, f"core.{request.global_pid}.{request.time}")
        if registered or proc is None:  # a pod's opt-in (or unknown): its full core up to the maximum
            max_bytes, reason = self.settings.max_core_bytes, "size_limit"
        else:  # %c honoured: truncate at the soft limit, like systemd-coredump
            max_bytes = min(self.settings.max_core_bytes, request.rlimit_core)
            reason = REASON_RLIMIT if request.rlimit_core < self.settings.max_core_bytes else "size_limit"
        return _Target(root_path=self.settings.node_cores_dir, directory="/" + "/".join(parts), name=name,
                       destination="node", max_bytes=max_bytes or None,
                       max_reason=reason, compression=self.settings.compression, uid=None, gid=None,
                       pattern=self.settings.node_core_name)

    # --- writing --------------------------------------------------------------------------------
    def _write(self, request: CrashRequest, core: int | BinaryIO, proc: ProcessInfo | None, ident: Identity,
               who: _Who, target: _Target, start: float,
               fallback_reason: str | None = None, fallback_detail: str = "") -> _Handled:
        if not target.pod:
            os.makedirs(self.settings.node_cores_dir, mode=0o700, exist_ok=True)
        try:
            root = SafeRoot.open(target.root_path)  # as root, before any switch: /proc/<pid>/root needs it
        except OSError as exc:
            if target.pod:
                raise _NoPodTarget("root_unreachable", str(exc)) from None
            raise
        names = inflight.tmp_names(target.name)
        token = None
        if self.journal is not None:  # before anything is created: a killed agent's successor finds it
            token = self.journal.begin(inflight.entry_for(
                request, who, target, names, node=self.settings.node_name, exe=proc.exe if proc else "",
                registered=ident.registration is not None, identification=fallback_reason or ident.reason))
        try:
            try:
                # The kernel would create the core with the process's credentials (a pod's
                # target carries them; the node location's has none): so do we.
                with as_process_credentials(target.creds):
                    dirfd, out, meta_out = self._create(root, target, names)
            except CredentialsError as exc:
                raise _NoPodTarget("credentials_unavailable", str(exc)) from None
            try:
                # Creation proved the permission: streaming, fsync and the rename run as the agent.
                return self._stream(request, core, proc, ident, who, target, dirfd, out, start, fallback_reason,
                                    meta_out, fallback_detail=fallback_detail)
            finally:
                meta_out.discard()  # a no-op once the metadata is committed
                os.close(dirfd)
        finally:
            if self.journal is not None:
                self.journal.end(token)
            root.close()

    def _create(self, root: SafeRoot, target: _Target,
                names: tuple[str | None, str | None] = (None, None)) -> tuple[int, OutputFile, ReservedMetadata]:
        """The target directory's fd (made when missing), the temporary core file in it, and the
        metadata file with its space reserved (metafile.py: a full volume still gets the reason).

        For a pod, a refusal becomes :class:`_NoPodTarget`: ``permission_denied`` when the
        process's own credentials may not create it (EACCES/EPERM), else why the directory or
        the file is unusable.
        """
        pod = target.pod
        try:
            dirfd = root.open_dir(target.directory, uid=target.uid, gid=target.gid)
        except OSError as exc:
            if pod:
                reason = "permission_denied" if exc.errno in _DENIED else "directory_unusable"
                raise _NoPodTarget(reason, f"{target.directory}: {exc.strerror or exc}") from None
            raise
        try:
            if pod:
                st = os.fstatvfs(dirfd)
                if st.f_bavail * st.f_frsize <= self.settings.keep_free_bytes:
                    raise _NoPodTarget("pod_volume_full",
                                       f"{target.directory} has less than keep_free_bytes free")
            try:
                meta_out = ReservedMetadata(dirfd, target.name + constants.METADATA_SUFFIX, mode=0o644,
                                            tmp_name=names[1])
            except OSError as exc:
                if pod:
                    reason = ("permission_denied" if exc.errno in _DENIED else
                              "pod_volume_full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "create_failed")
                    raise _NoPodTarget(reason, f"{target.directory}: {exc.strerror or exc}") from None
                raise
            try:
                return dirfd, OutputFile(dirfd, target.name, mode=0o600, tmp_name=names[0]), meta_out
            except OSError as exc:
                meta_out.discard()
                if pod:
                    reason = "permission_denied" if exc.errno in _DENIED else "create_failed"
                    raise _NoPodTarget(reason, f"{target.directory}: {exc.strerror or exc}") from None
                raise
        except BaseException:
            os.close(dirfd)
            raise

    def _stream(self, request: CrashRequest, core: int | BinaryIO, proc: ProcessInfo | None, ident: Identity,
                who: _Who, target: _Target, dirfd: int, out: OutputFile, start: float,
                fallback_reason: str | None, meta_out: ReservedMetadata, fallback_detail: str = "") -> _Handled:
        s = self.settings
        limits = StreamLimits(max_bytes=target.max_bytes, max_reason=target.max_reason,
                              keep_free_bytes=s.keep_free_bytes, deadline=start + s.dump_timeout_seconds,
                              compression=target.compression, zstd_level=s.zstd_level,
                              zstd_threads=s.zstd_threads)
        try:
            out.chown(target.uid, target.gid)
            result = stream_core(core, out.fd, limits)  # the only step that needs the pipe
        except BaseException:
            out.discard()
            raise
        ext = ".zst" if target.compression == "zstd" else ""
        final: str | None = None
        commit_error = None
        if result.complete or result.size > 0:
            try:
                # Named now (the binaries and the signature job need the name while the process
                # is pinned); made durable after the release.
                final = out.commit(target.name, ext if result.complete else ext + constants.PARTIAL_SUFFIX,
                                   sync=False)
            except OSError as exc:
                commit_error = f"{exc.strerror or exc}"
                out.discard()
        else:
            out.discard()
        host_dir = posixpath.join(target.root_path, target.directory.lstrip("/"))
        view_dir = target.directory if target.pod else host_dir  # the node location: the agent's path
        path = posixpath.join(view_dir, final) if final else None
        host_path = posixpath.join(host_dir, final) if final else None
        exe = proc.exe if proc else ""
        doc = meta.build(
            node=s.node_name, namespace=who.namespace, pod=who.pod, pod_uid=who.pod_uid, container=who.container,
            container_id=who.container_id, image=who.image, labels=who.labels, owner=who.owner, runtime=who.runtime,
            registered=ident.registration is not None, identification=fallback_reason or ident.reason,
            destination=target.destination, pid=request.pid, global_pid=request.global_pid, tid=request.tid,
            global_tid=request.global_tid, uid=request.uid, gid=request.gid, signal=request.signal, exe=exe,
            comm=request.comm, hostname=request.hostname, time=request.time, path=path or "", file=final or "",
            size=result.size, stored_size=result.written, disk_size=0, digest=None,
            compression=target.compression, truncated=not result.complete, reason=result.reason,
            pattern=target.pattern, rlimit_core=request.rlimit_core, dump_mode=request.dump_mode,
            spool_reason=request.spool_reason)
        doc["identity"] = who.state
        if fallback_reason:  # why a registered pod's core is in the node location
            doc["fallback_reason"], doc["fallback_detail"] = fallback_reason, fallback_detail or None
        if who.mismatches:
            doc["identity_mismatches"] = sorted(who.mismatches)  # the fields only, never the claims
        if request.snapshot_id:
            doc["gcore"] = True
            doc["gcore_request"] = request.snapshot_id
        pinned = None if request.spooled else proc  # a spooled core's process is gone: no binaries of it
        files, links = self._keep_binaries(request, pinned, dirfd, final, doc, target)
        job = self._signature_job(pinned, dirfd, final, final and final + constants.METADATA_SUFFIX, doc, target,
                                  files, links)

        # --- the process is let go here (webhook/agent/release.py): the rest can wait ---------
        release_now()
        if final:
            result = finish_core(out.fd, result, limits, s.digest)  # digest from the page cache; holes
            try:
                out.sync()
            except OSError as exc:
                log.warning("could not fsync the core", extra={"path": path, "error": str(exc)})
        disk_size = 0
        file_id = None
        if final:
            try:
                st = os.stat(final, dir_fd=dirfd, follow_symlinks=False)
                disk_size, file_id = st.st_blocks * 512, (st.st_dev, st.st_ino)
            except OSError:
                pass
        if commit_error:
            outcome, reason = "failed", f"commit_failed: {commit_error}"
        elif result.complete:
            outcome, reason = "written", fallback_reason or ident.reason
        elif final:
            outcome, reason = "partial", result.reason or "unknown"
        else:
            outcome, reason = "failed", f"{result.reason}: nothing captured"
        if result.detail and outcome != "written":
            reason = f"{reason} ({result.detail})"
        # Only now, with the hash computed (or known to be missing: null), is the metadata written.
        doc.update(size=result.size, disk_size=disk_size, digest=result.digest or None,
                   truncated=not result.complete, truncated_reason=result.reason)
        metadata_path = None
        json_name = None
        if final:
            try:  # into the space reserved before the core streamed (created with the process's creds)
                json_name = meta_out.commit(final + constants.METADATA_SUFFIX, doc, meta.dumps, uid=target.uid,
                                            gid=target.gid)
                metadata_path = posixpath.join(view_dir, json_name)
            except OSError as exc:
                log.warning("could not write the metadata", extra={"path": path, "error": str(exc)})
        if job is not None:
            if json_name:
                job.json_name = json_name
            else:
                job.close()
                job = None
        outcome_obj = CrashOutcome(
            outcome, reason, path=path, metadata_path=metadata_path, size=result.size, disk_size=disk_size,
            destination=target.destination, host_path=host_path, digest=result.digest or None,
            compression=target.compression, truncated=not result.complete, file_id=file_id,
            **self._who_fields(who))
        return outcome_obj, doc, job

    def _chain(self, request: CrashRequest, core: int | BinaryIO, proc: ProcessInfo | None, ident: Identity,
               who: _Who, start: float) -> CrashOutcome:
        assert self.previous_pattern
        fd = core if isinstance(core, int) else core.fileno()
        remaining = max(1.0, start + self.settings.dump_timeout_seconds - time.monotonic())
        try:
            result = chain_mod.run_previous(self.previous_pattern, request.crash_info(proc.exe if proc else ""), fd,
                                            timeout=remaining, global_pid=request.global_pid)
        except chain_mod.ChainError as exc:
            return CrashOutcome("failed", f"{ident.reason}; chain: {exc}", destination="chain",
                                **self._who_fields(who))
        if result.returncode is None:
            return CrashOutcome("failed", f"{ident.reason}; previous helper {result.argv[0]} timed out",
                                destination="chain", **self._who_fields(who))
        return CrashOutcome("chained", f"{ident.reason}; previous helper {result.argv[0]} exited "
                                       f"{result.returncode}", destination="chain", **self._who_fields(who))

    # --- visibility -----------------------------------------------------------------------------
    def _report(self, outcome: CrashOutcome, doc: dict | None, job: Any) -> None:
        short_reason = outcome.reason.split(" ")[0].split(";")[0].rstrip(":")
        dest = outcome.destination or ""
        self.metrics.cores.labels(outcome.outcome, short_reason, dest).inc()
        self.metrics.duration.labels(outcome.outcome).observe(outcome.duration)
        if outcome.size:
            self.metrics.bytes.labels(dest).inc(outcome.size)
        if doc:
            self.metrics.stored_bytes.labels(dest).inc(doc.get("stored_size", 0))
        line = {
            "outcome": outcome.outcome, "reason": outcome.reason, "namespace": outcome.namespace,
            "pod": outcome.pod, "container": outcome.container, "pid": outcome.pid,
            "global_pid": outcome.global_pid, "signal": outcome.signal, "comm": outcome.comm,
            "path": outcome.path, "size": outcome.size, "disk_size": outcome.disk_size,
            "duration": round(outcome.duration, 4), "destination": outcome.destination,
        }
        if outcome.outcome == "rate_limited":
            line["dropped"] = outcome.dropped
        level = logging.WARNING if outcome.outcome in ("failed", "partial") else logging.INFO
        log.log(level, "crash", extra=line)
        summary = outcome.as_dict()
        summary.update(doc or {})
        summary["path"] = outcome.path
        try:
            self.pod_dirs.remember(summary)
        except Exception:  # noqa: BLE001 - retention's memory, never the crash's business
            log.exception("could not remember the core's directory")
        if job is not None and outcome.outcome in ("written", "partial", "failed"):
            job.summary = summary  # the Event waits for the signature (bounded): see analysis.py
            self.signatures.submit(job)
            return
        if job is not None:
            job.close()
        if outcome.outcome in ("written", "partial", "failed"):
            self.publish(summary)

    def submit(self, summary: dict) -> bool:
        """A sink for the signature worker: :meth:`publish`."""
        self.publish(summary)
        return True

    def publish(self, summary: dict) -> None:
        """The Event, the notification and the CoreDump, only under names the pod watch verified; a crash of
        a pod the watch did not know waits in ``pending`` until it does (or goes unannounced)."""
        sinks = (self.events, self.notifier, self.index)
        if summary.get("pod_uid") and summary.get("identity") != VERIFIED:
            if self.pending is not None:  # the watch will know the pod: announce it then
                try:
                    self.pending.add(summary)
                except Exception:  # noqa: BLE001
                    log.exception("could not keep an unverified crash for later")
                return
            sinks = (self.notifier,)  # no pod watch at all: by pod UID only (an Event needs names)
        for sink in sinks:
            if sink is not None:
                try:
                    sink.submit(summary)
                except Exception:  # noqa: BLE001
                    log.exception("could not queue a crash notification")

    # --- saved binaries, signatures (webhook/agent/analysis.py) -------------------------------
    def _make_signatures(self, given: Any) -> Any:
        if given is not None:
            return given or None
        if not self.settings.signatures:
            return None
        if shutil.which("gdb") is None:
            log.info("gdb not found: crash signatures are off (install gdb in the agent image)")
            return None
        from webhook.agent.analysis import SignatureWorker

        s = self.settings
        return SignatureWorker(lambda: [self],  # publish(): Events only under verified names
                               timeout=s.signature_timeout_seconds, event_wait=s.signature_event_wait_seconds,
                               maxsize=s.signature_queue_size,
                               no_sysroot=os.path.join(s.host_dir, "staging", ".no-sysroot"),
                               memory_bytes=s.signature_memory_bytes,
                               retention=(s.retention_keep_first, s.retention_keep_latest),
                               max_age=s.pod_retention_max_age_seconds,
                               on_pruned=self.index.mark_pruned if self.index is not None else None)

    def _keep_binaries(self, request: CrashRequest, proc: ProcessInfo | None, dirfd: int, final: str | None,
                       doc: dict, target: _Target) -> tuple[list, dict]:
        """Still pinned: keep the binaries by build-id (and ``--save-binaries`` copies); returns
        the mapped files, still open, for the signature worker, and the root's links."""
        s = self.settings
        if not final or proc is None:
            return [], {}
        from webhook.agent.binaries import KeepOptions, keep_binaries, root_links

        opts = KeepOptions(symbols=s.symbols, symbols_budget=s.symbols_budget_bytes, save_binaries=s.save_binaries,
                           save_binaries_budget=s.save_binaries_budget_bytes, uid=target.uid, gid=target.gid,
                           creds=target.creds, keep_free=s.keep_free_bytes)
        want_files = self.signatures is not None and target.compression != "zstd"
        try:
            store_fd, store_rel = self._store_location(target, dirfd)
        except OSError as exc:  # the namespace's directory in the node location: the core's then
            log.warning("build-id store location unusable", extra={"pid": request.global_pid, "error": str(exc)})
            store_fd, store_rel = dirfd, ".symbols"
        try:
            keys, files = keep_binaries(request.global_pid, proc.exe, dirfd, final, store_fd, store_rel, opts,
                                        want_files=want_files, proc=self.proc)
        except Exception as exc:  # noqa: BLE001 - the core is written; binaries are a bonus
            log.warning("could not keep the binaries", extra={"pid": request.global_pid, "error": repr(exc)})
            return [], {}
        finally:
            if store_fd != dirfd:
                os.close(store_fd)
        base = posixpath.dirname(doc.get("path") or "")
        for key in ("binaries_dir", "sysroot"):
            if keys.get(key) and base:
                keys[key] = posixpath.join(base, keys[key])
        if keys.get("symbols_store") and base:
            keys["symbols_store"] = posixpath.normpath(posixpath.join(base, keys["symbols_store"]))
        doc.update(keys)
        return files, (root_links(request.global_pid, self.proc) if files else {})

    def _store_location(self, target: _Target, dirfd: int) -> tuple[int, str]:
        """The build-id store's parent directory (fd) and its path from the core's directory:
        the core's directory in a pod volume, the namespace's directory in the node location."""
        from webhook.agent.symbols import STORE_DIR

        parts = [p for p in target.directory.split("/") if p]
        if target.pod or len(parts) < 2:
            return dirfd, STORE_DIR
        with SafeRoot.open(target.root_path) as root:
            fd = root.open_dir(parts[0])
        return fd, "/".join([".."] * (len(parts) - 1) + [STORE_DIR])

    def _signature_job(self, proc: ProcessInfo | None, dirfd: int, final: str | None, json_name: str | None,
                       doc: dict, target: _Target, files: list, links: dict) -> Any:
        """Still pinned: what the signature worker needs later (None: no signature for this core)."""
        if not final or not json_name or self.signatures is None or target.compression == "zstd":
            from webhook.agent.mappings import close_all

            close_all(files)
            return None
        from webhook.agent.analysis import prepare_job

        # A spooled or vanished process: its PID may be another process's now, so no exe fd.
        return prepare_job(proc.global_pid if proc is not None else 0, dirfd, final, json_name, doc,
                           proc.exe if proc else "", files, links, uid=target.uid, gid=target.gid, proc=self.proc,
                           creds=target.creds)


class _NoPodTarget(Exception):
    """The pod's destination cannot take the core; nothing was read yet."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
