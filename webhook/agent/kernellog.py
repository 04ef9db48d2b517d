"""Crashes the kernel dropped before any helper ran, read from the kernel log (``/dev/kmsg``).

``fs/coredump.c`` reports every core it gives up on through ``coredump_report_failure``:
``coredump: <pid>(<comm>): <why>`` at KERN_WARNING, rate limited per call site (10 lines per 5 s;
the rest become ``<function>: N callbacks suppressed``). Kernels before 6.10 print the older
forms (``Pid <pid>(<comm>) over core_pipe_limit``, ``Core dump to |<helper> pipe failed``, ...). The one that matters most here is
``over core_pipe_limit, skipping core dump``: a burst of crashes beyond ``kernel.core_pipe_limit``
never reaches the helper, so without this module nothing in the product would know.

The ``<pid>`` is the crashing thread group's PID *in its own PID namespace* (``task_tgid_vnr``),
and ``<comm>`` is escaped (``%pE``: octal ``\\ooo`` for unprintable bytes). Attribution therefore
looks for the kernel's own marks: a process whose name is ``<comm>``, whose innermost namespace
PID is ``<pid>``, and that the kernel flagged as dumping (``PF_DUMPCORE`` in ``/proc/<p>/stat``,
set before the pipe limit is checked; a zombie keeps it, and its cgroup v2 line). Processes the
agent received from the helper are excluded; when exactly one candidate is left, its cgroup
gives the pod UID and container ID and the pod watch the names. Otherwise the drop is still
counted and logged, unattributed.

Parsing is pure; the reader thread is the only I/O on the kernel log; attribution
(webhook/agent/drop_candidates.py) reads ``/proc``.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from webhook.agent.drop_candidates import RecentPids, choose, find_candidates
from webhook.agent.metadata import PodView

log = logging.getLogger(__name__)

KMSG = "/dev/kmsg"
#: How long after a drop line the candidates are looked at again when several match (the
#: dumps that did reach the helper are then known to the agent, the dropped one is a zombie).
SETTLE_SECONDS = 0.3

#: kernel message (after "coredump: <pid>(<comm>): ") -> reason label, first match wins.
_REASONS: tuple[tuple[str, str], ...] = (
    ("over core_pipe_limit", "over_core_pipe_limit"),
    ("RLIMIT_CORE is set to 1", "rlimit_core_one"),
    ("format_corename failed", "format_corename_failed"),
    ("failed to allocate memory", "no_memory"),
    ("pipe failed", "pipe_spawn_failed"),
    ("pipe spawn failed", "pipe_spawn_failed"),
    ("disabled", "helper_disabled"),
    ("fully qualified path", "suid_needs_absolute_path"),
    ("cannot preserve file owner", "file_owner_not_preserved"),
    ("cannot preserve file permissions", "file_mode_not_preserved"),
    ("Unsafe core_pattern", "unsafe_core_pattern"),
    ("not found", "helper_not_found"),
)
#: Reasons that are about a crash (the others describe a setting, not a lost core).
_CRASH_REASONS = frozenset(r for _, r in _REASONS) - {"unsafe_core_pattern"}

_FAILURE_RE = re.compile(r"^coredump: (\d+)\((.*)\): (.*)$", re.S)
_SUPPRESSED_RE = re.compile(r"^(\w*core\w*): (\d+) callbacks suppressed$")
#: Kernels before 6.10 (plain printk, comm not escaped; most nodes today): (regex, reason);
#: the groups are pid and comm when the line names the process.
_OLD_FORMS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^Pid (\d+)\((.*)\) over core_pipe_limit$", re.S), "over_core_pipe_limit"),
    (re.compile(r"^Process (\d+)\((.*)\) has RLIMIT_CORE set to 1$", re.S), "rlimit_core_one"),
    (re.compile(r"^Pid (\d+)\((.*)\) can only dump core to fully qualified path!$", re.S),
     "suid_needs_absolute_path"),
    (re.compile(r"^Core dump to \|?.* pipe failed$", re.S), "pipe_spawn_failed"),
    (re.compile(r"^format_corename failed$"), "format_corename_failed"),
    (re.compile(r"^\w*coredump failed to allocate memory$"), "no_memory"),
)


@dataclass(frozen=True)
class KernelDrop:
    """One coredump failure the kernel logged."""

    reason: str
    message: str  # the kernel's words after "<pid>(<comm>): "
    pid: int = 0  # in the crashing process's own PID namespace
    comm: str = ""
    #: For "suppressed": how many lines the kernel's rate limit swallowed.
    count: int = 1
    seq: int = -1
    timestamp_us: int = 0

    @property
    def is_crash(self) -> bool:
        return self.reason in _CRASH_REASONS or self.reason == "other"


def unescape_comm(text: str) -> str:
    """Undo ``%pE``'s octal escapes (``\\ooo``) and ``\\\\``."""
    return re.sub(r"\\([0-7]{3}|\\)", lambda m: "\\" if m.group(1) == "\\" else chr(int(m.group(1), 8)), text)


def classify(message: str) -> str:
    for needle, reason in _REASONS:
        if needle in message:
            return reason
    return "other"


def parse_record(record: bytes) -> tuple[int, int, int, str] | None:
    """One ``/dev/kmsg`` record -> (level, seq, timestamp_us, message); None when malformed.

    Format (Documentation/ABI/testing/dev-kmsg): ``prio,seq,usec,flags[,more];message`` then
    dictionary lines starting with a space; non-printable bytes come as ``\\xNN``.
    """
    text = record.decode("utf-8", "replace")
    head, sep, rest = text.partition(";")
    if not sep:
        return None
    fields = head.split(",")
    try:
        prio, seq, usec = int(fields[0]), int(fields[1]), int(fields[2])
    except (ValueError, IndexError):
        return None
    message = rest.split("\n", 1)[0]
    return prio & 7, seq, usec, message


def parse_drop(message: str, *, seq: int = -1, timestamp_us: int = 0) -> KernelDrop | None:
    """A kernel log message -> :class:`KernelDrop` when it reports a core dump failure."""
    m = _FAILURE_RE.match(message)
    if m:
        why = m.group(3).strip()
        return KernelDrop(reason=classify(why), message=why, pid=int(m.group(1)), comm=unescape_comm(m.group(2)),
                          seq=seq, timestamp_us=timestamp_us)
    for pattern, reason in _OLD_FORMS:
        m = pattern.match(message)
        if m:
            pid, comm = (int(m.group(1)), m.group(2)) if m.groups() else (0, "")
            return KernelDrop(reason=reason, message=message, pid=pid, comm=comm, seq=seq, timestamp_us=timestamp_us)
    m = _SUPPRESSED_RE.match(message)
    if m and "coredump" in m.group(1):
        return KernelDrop(reason="suppressed", message=message, count=int(m.group(2)), seq=seq,
                          timestamp_us=timestamp_us)
    return None


# --- the reader ----------------------------------------------------------------------------------
@dataclass
class DropReport:
    """A kernel drop with whatever could be found out about its process (log, Event, tests)."""

    drop: KernelDrop
    node: str = ""
    global_pid: int | None = None
    namespace: str | None = None
    pod: str | None = None
    pod_uid: str | None = None
    container: str | None = None
    container_id: str | None = None
    candidates: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def attributed(self) -> bool:
        return self.pod_uid is not None or self.global_pid is not None

    def summary(self) -> dict[str, Any]:
        """The crash summary shape events.py and notify.py take (outcome ``dropped``)."""
        d = self.drop
        return {
            "outcome": "dropped", "reason": f"kernel: {d.message}", "kernel_reason": d.reason,
            "namespace": self.namespace, "pod": self.pod, "pod_uid": self.pod_uid, "container": self.container,
            "container_id": self.container_id, "pid": d.pid, "global_pid": self.global_pid, "comm": d.comm,
            "node": self.node, "path": None, "size": 0,
        }


class DropMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.dropped = Counter("coredump_agent_kernel_dropped_cores",
                               "Core dumps the kernel reported as not done (kernel log), by reason",
                               ["reason", "attributed"], registry=registry)
        self.read_errors = Counter("coredump_agent_kernel_log_overruns",
                                   "Times the kernel log overwrote records before the agent read them",
                                   registry=registry)


class KernelLogWatcher:
    """Reads ``/dev/kmsg`` from the end (what is logged after the agent starts) in a thread."""

    def __init__(self, registry: CollectorRegistry, *, node: str = "", events: Any = None,
                 pod_lookup: Callable[[str], PodView | None] | None = None, handled: RecentPids | None = None,
                 path: str = KMSG, proc: str = "/proc", settle: float = SETTLE_SECONDS,
                 on_report: Callable[[DropReport], None] | None = None) -> None:
        self.metrics = DropMetrics(registry)
        self.node = node
        self.events = events
        self.pod_lookup = pod_lookup
        self.handled = handled if handled is not None else RecentPids()
        self.path = path
        self.proc = proc
        self.settle = settle
        self.on_report = on_report
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fd = -1

    def start(self) -> KernelLogWatcher:
        """Open the log and seek to its end now, so only what follows start is reported."""
        self._fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        os.lseek(self._fd, 0, os.SEEK_END)
        self._thread = threading.Thread(target=self._run, name="agent-kmsg", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        while not self._stop.is_set():
            try:
                if not poller.poll(200):
                    continue
                record = os.read(self._fd, 8192)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # overwritten before we read it: go on from the next
                    self.metrics.read_errors.inc()
                    log.warning("kernel log records were overwritten before the agent read them")
                    continue
                log.exception("kernel log unreadable; dropped cores are no longer reported")
                return
            try:
                self.feed(record)
            except Exception:  # noqa: BLE001 - one odd record never stops the reader
                log.exception("kernel log record not handled")

    def feed(self, record: bytes) -> DropReport | None:
        """Handle one raw ``/dev/kmsg`` record (the reader calls this; so can tests)."""
        parsed = parse_record(record)
        if parsed is None:
            return None
        _level, seq, usec, message = parsed
        drop = parse_drop(message, seq=seq, timestamp_us=usec)
        if drop is None:
            return None
        report = self.attribute(drop)
        self.report(report)
        return report

    def attribute(self, drop: KernelDrop) -> DropReport:
        report = DropReport(drop, node=self.node)
        if not drop.pid or not drop.is_crash:
            return report
        candidates = find_candidates(drop.pid, drop.comm, self.proc)
        chosen = choose(candidates, self.handled.__contains__)
        if chosen is None and len(candidates) > 1:
            time.sleep(self.settle)  # let the helpers of the dumps that did run reach the agent
            again = {c.global_pid: c for c in find_candidates(drop.pid, drop.comm, self.proc)}
            candidates = [again.get(c.global_pid, c) for c in candidates]
            chosen = choose(candidates, self.handled.__contains__)
        report.candidates = len(candidates)
        if chosen is None:
            return report
        report.global_pid = chosen.global_pid
        cg = chosen.cgroup
        report.pod_uid, report.container_id = cg.pod_uid, cg.container_id
        if cg.pod_uid and self.pod_lookup is not None:
            try:
                view = self.pod_lookup(cg.pod_uid)
            except Exception:  # noqa: BLE001 - a cache, never fatal
                view = None
            if view is not None:
                report.namespace, report.pod = view.namespace, view.name
                if cg.container_id:
                    report.container = view.container_ids.get(cg.container_id)
        return report

    def report(self, report: DropReport) -> None:
        d = report.drop
        self.metrics.dropped.labels(d.reason, "yes" if report.attributed else "no").inc(d.count)
        line = {"reason": d.reason, "kernel_message": d.message, "pid": d.pid, "comm": d.comm,
                "global_pid": report.global_pid, "namespace": report.namespace, "pod": report.pod,
                "pod_uid": report.pod_uid, "container": report.container, "container_id": report.container_id,
                "candidates": report.candidates, "count": d.count, "kernel_seq": d.seq}
        if d.reason == "suppressed":
            log.warning("the kernel suppressed coredump failure lines (rate limit): cores may have been dropped",
                        extra=line)
        elif d.is_crash:
            log.warning("core dropped by the kernel", extra=line)
        else:
            log.warning("kernel coredump warning", extra=line)
        if self.on_report is not None:
            self.on_report(report)
        if self.events is not None and d.is_crash and report.namespace and report.pod:
            try:
                self.events.submit(report.summary())
            except Exception:  # noqa: BLE001
                log.exception("could not queue the Event of a dropped core")

