"""What the helper asks for and what the agent answers: one crash's request and outcome.

``CrashRequest`` is the kernel's view of a crash as the static helper passes it (its argv, in
the order of :data:`HELPER_ARGS`, from which the agent's core_pattern is built);
``CrashOutcome`` is what became of it, and the answer the server gives the helper.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from webhook.agent.identity import Resolved
from webhook.pattern import CrashInfo

#: The helper's argv after argv[0], in this order (the agent's core_pattern is built from it).
HELPER_ARGS = ("%P", "%p", "%I", "%i", "%s", "%t", "%c", "%d", "%C", "%u", "%g", "%h", "%e")

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
        named = dict(zip([f.name for f in fields(cls)], values, strict=False))  # the first 11, in order
        return cls(**named, hostname=argv[11], comm=argv[12])

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
Handled = tuple[CrashOutcome, dict | None, Any]


def who_fields(who: Resolved) -> dict[str, Any]:
    """The outcome's names: from the cgroup and the pod watch only (webhook/agent/identity.py)."""
    return {"namespace": who.namespace, "pod": who.pod, "pod_uid": who.pod_uid,
            "container": who.container, "container_id": who.container_id, "identity": who.state}
