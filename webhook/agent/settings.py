"""The node agent's settings: one object, filled from CLI flags and env vars, passed down."""

from __future__ import annotations

import os
from dataclasses import dataclass

from webhook import constants


@dataclass(frozen=True)
class AgentSettings:
    """Everything the node agent and its crash path may be configured with."""

    #: Host directory of the agent (a hostPath mounted at the same path in the DaemonSet):
    #: holds the helper binary, the socket, the sysctl backup, the spool and the node cores.
    host_dir: str = constants.DEFAULT_HOST_DIR
    #: The same directory as the kernel (the host) sees it, when it is mounted elsewhere in the
    #: agent's container; None means "the same path" (the recommended DaemonSet layout).
    host_dir_on_host: str | None = None
    #: This node's name (downward API spec.nodeName), recorded in metadata and events.
    node_name: str = ""
    #: kernel.core_pipe_limit the agent sets (>= 16; 0 = from the node's CPUs and memory, 32 to 128):
    #: crashes piped at once, each pinned with its memory until read; the kernel drops the rest.
    core_pipe_limit: int = 0
    #: What to do with cores of processes that carry no registration: "skip", "node", "chain"
    #: or "auto" (chain when the previous core_pattern was a pipe, else node).
    unregistered: str = "auto"
    #: Append ".PID" when the pattern has no %p (the ECI behaviour; kernel.core_uses_pid).
    append_pid: bool = True
    #: Largest core written for a pod (bytes); a pod annotation may ask for less, never more.
    max_core_bytes: int = 16 * 1024**3
    #: Free space (bytes) to leave on the target filesystem; a core that would eat into it is
    #: cut and kept as .partial.
    keep_free_bytes: int = 1 * 1024**3
    #: At most this many cores per container per rate_limit_seconds; the rest are counted.
    rate_limit_count: int = 1
    #: Window of the per-container rate limit (the blog seed's 5-minute lock).
    rate_limit_seconds: float = 300.0
    #: A single dump may take this long before it is cut (.partial) and the process released.
    dump_timeout_seconds: float = 600.0
    #: How long the static helper waits for the agent's answer before it gives up.
    helper_timeout_seconds: float = 30.0
    #: Cores handled at once; further crashes wait (the kernel keeps them pinned).
    max_concurrent_dumps: int = 8
    #: Default compression for pods that don't choose: "none" or "zstd".
    compression: str = "none"
    #: zstd level when compressing (3: libzstd's default, the level systemd-coredump uses).
    zstd_level: int = 3
    #: Digest of each core's original bytes, computed after the process is released and recorded
    #: as "digest": "<algorithm>:<hex>" in its metadata (`coredump get` checks downloads with it):
    #: "xxh128" (fast; guards against a damaged or incomplete copy, check with xxh128sum) or
    #: "sha256" (sha256sum; about three times the CPU).
    digest: str = "xxh128"
    #: Node fallback location retention: delete cores older than this many seconds (0 = keep).
    retention_max_age_seconds: float = 7 * 24 * 3600.0
    #: Node fallback location retention: keep the total under this many bytes (0 = no cap).
    retention_max_total_bytes: int = 20 * 1024**3
    #: Optional notification webhook URL and its message shape: "json", "slack", "feishu", "dingtalk".
    notify_url: str = ""
    notify_format: str = "json"
    #: Post a Kubernetes Event on the pod when the API is reachable.
    events: bool = True
    #: Read the kernel log (/dev/kmsg, from start on) for cores the kernel dropped before any
    #: helper ran (over core_pipe_limit, ...): counted, logged, and an Event on the pod when known.
    kernel_log: bool = True
    #: Address of the agent's metrics endpoint ("" disables it).
    metrics_bind: str = "0.0.0.0:9402"
    #: Log level name.
    log_level: str = "INFO"
    #: (H4a) The static helper binary the agent copies into host_dir at install (the image's copy).
    helper_binary: str = constants.IMAGE_HELPER_PATH
    #: (H4a) Root of the sysctl tree the agent reads and writes (tests point it at a temp dir).
    sysctl_root: str = "/proc/sys"
    #: (H4a) The helper spools at most this many bytes in total while the agent is unreachable.
    spool_max_bytes: int = 4 * 1024**3
    #: (H4a) The helper leaves this much free space on the spool's filesystem (cores are cut).
    spool_keep_free_bytes: int = 1 * 1024**3
    #: (H4a) The helper stops spooling one core after this long (kept, marked truncated).
    spool_timeout_seconds: float = 300.0
    #: (H4a) How often the agent retries delivering spooled cores (also done at start).
    spool_drain_interval_seconds: float = 30.0
    #: (H4a) helper.log is rotated to helper.log.1 past this size.
    helper_log_max_bytes: int = 1024**2
    #: (H4a) fs.suid_dumpable to set while the agent runs (0, 1 or 2); -1 leaves it as found.
    #: 2 lets processes that changed credentials dump too (safe: the pipe helper runs as root).
    suid_dumpable: int = -1
    #: (H4b) zstd worker threads when compressing (0 = compress in the calling thread: measured
    #: on a busy 2-core node, as fast as 2 workers with less CPU and ~100 MiB less memory).
    zstd_threads: int = 0
    #: (H4b) File name of cores in the node location (core(5) specifiers; no %p appended).
    node_core_name: str = "core.%e.%P.%t"
    #: Watch this node's pods through the API (in-cluster config or kubeconfig) to add image,
    #: labels and owner to the metadata and to take gcore requests; never used on the crash path.
    watch_pods: bool = True
    #: While the crashing process is pinned, copy its executable and libraries next to the core
    #: (<core>.d/, sysroot layout) so it stays debuggable after the image is gone.
    save_binaries: bool = False
    #: Most bytes of executable and libraries saved per core (larger files are skipped).
    save_binaries_budget_bytes: int = 256 * 1024**2
    #: While the crashing process is pinned, keep its executable and libraries once per ELF
    #: build-id in the core's storage (``.symbols/buildid/<id>/executable``, debuginfod layout)
    #: with ``<core>.sysroot/`` linking to them, so gdb finds them after the image is gone.
    symbols: bool = True
    #: Most bytes one build-id store (one core directory; per namespace in the node location) holds.
    symbols_budget_bytes: int = 1024**3
    #: Write the crash index: one CoreDump (coredump-webhook.io) per core in the pod's namespace,
    #: off the crash path (queued, batched, rate limited, retried); needs the CRD installed.
    index: bool = True
    #: CoreDumps per signature and workload (per node) while retention is off (0 and 0); then the
    #: last of them is rolled forward to the newest crash and counts the rest. With retention on,
    #: the records follow its rule: the first N and the latest M, the rest counted.
    index_keep_per_signature: int = 5
    #: Most CoreDump writes per second from this node (a crash storm cannot flood the API server).
    index_writes_per_second: float = 5.0
    #: Crashes waiting for their CoreDump at most; beyond, one is dropped (logged, counted).
    index_queue_size: int = 1024
    #: Retention per signature in a core directory (pod volumes too): once a core has its
    #: signature, keep the first N and the latest M cores of that signature there and delete the
    #: others with their metadata and sysroot (the index keeps counting). 0 and 0 keep everything.
    retention_keep_first: int = 3
    retention_keep_latest: int = 5
    #: Cores in a pod's own directory older than this are deleted too, whatever their signature,
    #: when the next core there gets its signature (0 = keep; the node location has its own).
    pod_retention_max_age_seconds: float = 0.0
    #: Run gdb over each core off the crash path and add backtrace and signature to its metadata
    #: (turned off, with a log line, when gdb is not installed).
    signatures: bool = True
    #: gdb gets this long per core (wall clock, and as its CPU-time limit).
    signature_timeout_seconds: float = 120.0
    #: gdb's own address-space cap (RLIMIT_AS, bytes; 0 = none): gdb runs in the agent's
    #: container, so a core it cannot read within this fails its signature, not the agent.
    signature_memory_bytes: int = 256 * 1024**2
    #: The pod Event / notification wait this long for the signature (then go without it).
    signature_event_wait_seconds: float = 30.0
    #: Cores waiting for their signature at most; beyond, a core gets none (logged).
    signature_queue_size: int = 16
    #: Act on `coredump gcore` requests (the pod annotation) for this node's registered pods.
    gcore_requests: bool = True
    #: A gcore request older than this (its requestedAt) is ignored (e.g. seen again at restart).
    gcore_request_max_age_seconds: float = 600.0
    #: gcore gets this long per snapshot (the process is stopped while it dumps).
    gcore_timeout_seconds: float = 300.0

    #: What a stopping agent does with the node's kernel settings: "always" restores them (an
    #: agent run by hand), "removed" only when its DaemonSet (the daemonset setting) is gone or
    #: being deleted, so a rollout, drain or eviction keeps the helper as the kernel's target (it
    #: spools until the next agent), "never" keeps them (`coredump agent uninstall` restores).
    restore_on_stop: str = "always"
    #: The agent's own DaemonSet as NAMESPACE/NAME, read at stop when restore_on_stop is "removed".
    daemonset: str = ""
    #: How long a stopping agent lets the dumps in flight finish; cores still waiting for a slot
    #: go to the spool at once, and a dump still running after this is cut and marked partial.
    #: The pod's terminationGracePeriodSeconds must be longer (the chart enforces it).
    stop_timeout_seconds: float = 40.0

    @property
    def socket_path(self) -> str:
        """Unix socket the static helper connects to."""
        return os.path.join(self.host_dir, "agent.sock")

    @property
    def spool_dir(self) -> str:
        """Where the helper spools cores while the agent is unreachable."""
        return os.path.join(self.host_dir, "spool")

    @property
    def node_cores_dir(self) -> str:
        """Node fallback location: cores/<namespace>/<pod>/<container>/ and cores/host/."""
        return os.path.join(self.host_dir, "cores")

    @property
    def helper_path(self) -> str:
        """The helper binary as the agent sees it."""
        return os.path.join(self.host_dir, "coredump-helper")

    @property
    def helper_path_on_host(self) -> str:
        """The helper binary as the kernel sees it (what goes into core_pattern)."""
        return os.path.join(self.host_dir_on_host or self.host_dir, "coredump-helper")
