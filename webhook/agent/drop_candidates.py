"""Which process the kernel dropped a core of: candidates found by the kernel's own marks.

A kernel drop line names the crashing thread group's PID *in its own PID namespace* and its
comm. A candidate is a process whose name is that comm, whose innermost namespace PID is that
PID, and that the kernel flagged as dumping (``PF_DUMPCORE`` in ``/proc/<p>/stat``, set before
the pipe limit is checked; a zombie keeps it) or a zombie killed by a core signal. Processes the
agent received from the helper (:class:`RecentPids`) are excluded; :func:`choose` takes the one
left, if exactly one is.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from webhook.agent.procinfo import CgroupIdentity, parse_cgroup

#: task->flags bit the kernel sets on the task that starts a core dump (include/linux/sched.h).
PF_DUMPCORE = 0x00000200
#: Signals whose default action dumps core (signal(7)): a zombie killed by one, with no
#: PF_DUMPCORE on its leader, had the dump started by another thread (gone since).
CORE_SIGNALS = frozenset({3, 4, 5, 6, 7, 8, 11, 24, 25, 31})
#: Index of exit_code (field 52 of /proc/<p>/stat) among the fields after the comm.
_EXIT_CODE_INDEX = 49


@dataclass(frozen=True)
class Candidate:
    """A process that may be the one the kernel dropped."""

    global_pid: int
    zombie: bool
    cgroup: CgroupIdentity


def _stat_fields(text: str) -> tuple[str, list[str]] | None:
    """``/proc/<p>/stat`` -> (comm, fields after it); comm may hold spaces and parentheses."""
    left, right = text.find("("), text.rfind(")")
    if left < 0 or right < left:
        return None
    return text[left + 1:right], text[right + 2:].split()


def _innermost_nspid(status: str) -> int | None:
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            values = line.split()[1:]
            return int(values[-1]) if values else None
    return None


def _read(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()


def _dumping(proc: str, pid: str, leader_flags: int) -> bool:
    if leader_flags & PF_DUMPCORE:
        return True
    try:  # a multi-threaded process: the thread that took the signal is the one flagged
        tids = os.listdir(f"{proc}/{pid}/task")
    except OSError:
        return False
    for tid in tids:
        try:
            parsed = _stat_fields(_read(f"{proc}/{pid}/task/{tid}/stat"))
        except OSError:
            continue
        if parsed and len(parsed[1]) > 6 and int(parsed[1][6]) & PF_DUMPCORE:
            return True
    return False


def find_candidates(pid: int, comm: str, proc: str = "/proc") -> list[Candidate]:
    """Processes named ``comm`` whose innermost PID is ``pid`` and that the kernel marked as
    dumping core (alive and pinned, or a zombie that has not been reaped yet)."""
    found: list[Candidate] = []
    try:
        names = os.listdir(proc)
    except OSError:
        return found
    for name in names:
        if not name.isdigit():
            continue
        try:
            parsed = _stat_fields(_read(f"{proc}/{name}/stat"))
            if parsed is None or parsed[0] != comm or len(parsed[1]) < 7:
                continue
            state, flags = parsed[1][0], int(parsed[1][6])
            if _innermost_nspid(_read(f"{proc}/{name}/status")) != pid:
                continue
            fields = parsed[1]
            killed_by = int(fields[_EXIT_CODE_INDEX]) & 0x7F if len(fields) > _EXIT_CODE_INDEX else 0
            if not _dumping(proc, name, flags) and not (state == "Z" and killed_by in CORE_SIGNALS):
                continue
            cgroup = parse_cgroup(_read(f"{proc}/{name}/cgroup"))
        except (OSError, ValueError):
            continue
        found.append(Candidate(int(name), state == "Z", cgroup))
    return found


class RecentPids:
    """Global PIDs the helper handed to the agent lately (bounded, thread-safe)."""

    def __init__(self, max_age: float = 600.0, max_size: int = 4096, clock: Callable[[], float] = time.monotonic):
        self.max_age = max_age
        self.max_size = max_size
        self.clock = clock
        self._pids: OrderedDict[int, float] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, pid: int) -> None:
        with self._lock:
            self._pids[pid] = self.clock()
            self._pids.move_to_end(pid)
            while len(self._pids) > self.max_size:
                self._pids.popitem(last=False)

    def __contains__(self, pid: object) -> bool:
        with self._lock:
            seen = self._pids.get(pid)  # type: ignore[call-overload]
            return seen is not None and self.clock() - seen <= self.max_age


def choose(candidates: list[Candidate], handled: Callable[[int], bool]) -> Candidate | None:
    """The one candidate not handled by the agent (a zombie preferred), or None if ambiguous."""
    left = [c for c in candidates if not handled(c.global_pid)]
    if len(left) > 1:
        left = [c for c in left if c.zombie] or left
    return left[0] if len(left) == 1 else None

