"""The node agent's settings: one object, filled from CLI flags and env vars, passed down."""

from __future__ import annotations

import os
from dataclasses import dataclass

from webhook import constants
from webhook.settings_fields import setting


def _env(name: str) -> str:
    return "COREDUMP_AGENT_" + name.upper()


@dataclass(frozen=True)
class AgentSettings:
    """Everything the node agent and its crash path may be configured with."""

    host_dir: str = setting(
        constants.DEFAULT_HOST_DIR, env=_env("host_dir"),
        help="Host directory of the agent (a hostPath mounted at the same path in the DaemonSet): holds the "
        "helper binary, the socket, the sysctl backup, the spool and the node cores.")
    host_dir_on_host: str | None = setting(
        None, env=_env("host_dir_on_host"),
        help="The same directory as the kernel (the host) sees it, when it is mounted elsewhere in the agent's"
        ' container; None means "the same path" (the recommended DaemonSet layout).')
    node_name: str = setting(
        "", env=_env("node_name"),
        help="This node's name (downward API spec.nodeName), recorded in metadata and events.")
    core_pipe_limit: int = setting(
        0, env=_env("core_pipe_limit"),
        help="kernel.core_pipe_limit the agent sets (>= 16; 0 = from the node's CPUs and memory, 32 to 128): "
        "crashes piped at once, each pinned with its memory until read; the kernel drops the rest.")
    unregistered: str = setting(
        "auto", env=_env("unregistered"),
        help='What to do with cores of processes that carry no registration: "skip", "node", "chain" or "auto"'
        " (chain when the previous core_pattern was a pipe, else node).")
    append_pid: bool = setting(
        True, env=_env("append_pid"),
        help='Append ".PID" when the pattern has no %p (the ECI behaviour; kernel.core_uses_pid).')
    max_core_bytes: int = setting(
        16 * 1024**3, env=_env("max_core_bytes"),
        help="Largest core written for a pod (bytes); a pod annotation may ask for less, never more.")
    keep_free_bytes: int = setting(
        1 * 1024**3, env=_env("keep_free_bytes"),
        help="Free space (bytes) to leave on the target filesystem; a core that would eat into it is cut and "
        "kept as .partial.")
    rate_limit_count: int = setting(
        1, env=_env("rate_limit_count"),
        help="At most this many cores per container per rate_limit_seconds; the rest are counted.")
    rate_limit_seconds: float = setting(
        300.0, env=_env("rate_limit_seconds"),
        help="Window of the per-container rate limit (the blog seed's 5-minute lock).")
    dump_timeout_seconds: float = setting(
        600.0, env=_env("dump_timeout_seconds"),
        help="A single dump may take this long before it is cut (.partial) and the process released.")
    helper_timeout_seconds: float = setting(
        30.0, env=_env("helper_timeout_seconds"),
        help="How long the static helper waits for the agent's answer before it gives up.")
    max_concurrent_dumps: int = setting(
        8, env=_env("max_concurrent_dumps"),
        help="Cores handled at once; further crashes wait (the kernel keeps them pinned).")
    compression: str = setting(
        "none", env=_env("compression"),
        help='Default compression for pods that don\'t choose: "none" or "zstd".')
    zstd_level: int = setting(
        3, env=_env("zstd_level"),
        help="zstd level when compressing (3: libzstd's default, the level systemd-coredump uses).")
    digest: str = setting(
        "xxh128", env=_env("digest"), choices=("xxh128", "sha256"),
        help='Digest of each core\'s original bytes, computed after the process is released and recorded as '
        '"digest": "<algorithm>:<hex>" in its metadata (`coredump get` checks downloads with it): "xxh128" '
        "(fast; guards against a damaged or incomplete copy; check with xxh128sum) or \"sha256\" (sha256sum; "
        "about 0.5 s of CPU per GiB where xxh128 takes 0.03 s).")
    retention_max_age_seconds: float = setting(
        7 * 24 * 3600.0, env=_env("retention_max_age_seconds"),
        help="Node fallback location retention: delete cores older than this many seconds (0 = keep).")
    retention_max_total_bytes: int = setting(
        20 * 1024**3, env=_env("retention_max_total_bytes"),
        help="Node fallback location retention: keep the total under this many bytes (0 = no cap).")
    notify_url: str = setting(
        "", env=_env("notify_url"),
        help='Optional notification webhook URL and its message shape: "json", "slack", "feishu", "dingtalk".')
    notify_format: str = setting(
        "json", env=_env("notify_format"),
        help="")
    events: bool = setting(
        True, env=_env("events"),
        help="Post a Kubernetes Event on the pod when the API is reachable.")
    kernel_log: bool = setting(
        True, env=_env("kernel_log"),
        help="Read the kernel log (/dev/kmsg, from start on) for cores the kernel dropped before any helper "
        "ran (over core_pipe_limit, ...): counted, logged, and an Event on the pod when known.")
    metrics_bind: str = setting(
        "0.0.0.0:9402", env=_env("metrics_bind"),
        help='Address of the agent\'s metrics endpoint ("" disables it).')
    log_level: str = setting(
        "INFO", env=_env("log_level"),
        help="Log level name.")
    helper_binary: str = setting(
        constants.IMAGE_HELPER_PATH, env=_env("helper_binary"),
        help="The static helper binary the agent copies into host_dir at install (the image's copy).")
    sysctl_root: str = setting(
        "/proc/sys", env=_env("sysctl_root"),
        help="Root of the sysctl tree the agent reads and writes (tests point it at a temp dir).")
    spool_max_bytes: int = setting(
        4 * 1024**3, env=_env("spool_max_bytes"),
        help="The helper spools at most this many bytes in total while the agent is unreachable.")
    spool_keep_free_bytes: int = setting(
        1 * 1024**3, env=_env("spool_keep_free_bytes"),
        help="The helper leaves this much free space on the spool's filesystem (cores are cut).")
    spool_timeout_seconds: float = setting(
        300.0, env=_env("spool_timeout_seconds"),
        help="The helper stops spooling one core after this long (kept, marked truncated).")
    spool_drain_interval_seconds: float = setting(
        30.0, env=_env("spool_drain_interval_seconds"),
        help="How often the agent retries delivering spooled cores (also done at start).")
    helper_log_max_bytes: int = setting(
        1024**2, env=_env("helper_log_max_bytes"),
        help="helper.log is rotated to helper.log.1 past this size.")
    suid_dumpable: int = setting(
        -1, env=_env("suid_dumpable"),
        help="fs.suid_dumpable to set while the agent runs (0, 1 or 2); -1 leaves it as found. 2 lets "
        "processes that changed credentials dump too (safe: the pipe helper runs as root).")
    zstd_threads: int = setting(
        0, env=_env("zstd_threads"),
        help="zstd worker threads when compressing (0 = compress in the calling thread: measured on a busy "
        "2-core node, as fast as 2 workers with less CPU and ~100 MiB less memory).")
    node_core_name: str = setting(
        "core.%e.%P.%t", env=_env("node_core_name"),
        help="File name of cores in the node location (core(5) specifiers; no %p appended).")
    watch_pods: bool = setting(
        True, env=_env("watch_pods"),
        help="Watch this node's pods through the API (in-cluster config or kubeconfig) to add image, labels "
        "and owner to the metadata and to take gcore requests; never used on the crash path.")
    save_binaries: bool = setting(
        False, env=_env("save_binaries"),
        help="While the crashing process is pinned, copy its executable and libraries next to the core "
        "(<core>.d/, sysroot layout) so it stays debuggable after the image is gone.")
    save_binaries_budget_bytes: int = setting(
        256 * 1024**2, env=_env("save_binaries_budget_bytes"),
        help="Most bytes of executable and libraries saved per core (larger files are skipped).")
    symbols: bool = setting(
        True, env=_env("symbols"),
        help="While the crashing process is pinned, keep its executable and libraries once per ELF build-id in"
        " the core's storage (``.symbols/buildid/<id>/executable``, debuginfod layout) with "
        "``<core>.sysroot/`` linking to them, so gdb finds them after the image is gone.")
    symbols_budget_bytes: int = setting(
        1024**3, env=_env("symbols_budget_bytes"),
        help="Most bytes one build-id store (one core directory; per namespace in the node location) holds.")
    index: bool = setting(
        True, env=_env("index"),
        help="Write the crash index: one CoreDump (coredump-webhook.io) per core in the pod's namespace, off "
        "the crash path (queued, batched, rate limited, retried); needs the CRD installed.")
    index_keep_per_signature: int = setting(
        5, env=_env("index_keep_per_signature"),
        help="CoreDumps per signature and workload (per node) while retention is off (0 and 0); then the last "
        "of them is rolled forward to the newest crash and counts the rest. With retention on, the "
        "records follow its rule: the first N and the latest M, the rest counted.")
    index_writes_per_second: float = setting(
        5.0, env=_env("index_writes_per_second"),
        help="Most CoreDump writes per second from this node (a crash storm cannot flood the API server).")
    index_queue_size: int = setting(
        1024, env=_env("index_queue_size"),
        help="Crashes waiting for their CoreDump at most; beyond, one is dropped (logged, counted).")
    retention_keep_first: int = setting(
        3, env=_env("retention_keep_first"),
        help="Retention per signature in a core directory (pod volumes too): once a core has its signature, "
        "keep the first N and the latest M cores of that signature there and delete the others with their"
        " metadata and sysroot (the index keeps counting). 0 and 0 keep everything.")
    retention_keep_latest: int = setting(
        5, env=_env("retention_keep_latest"),
        help="")
    pod_retention_max_age_seconds: float = setting(
        0.0, env=_env("pod_retention_max_age_seconds"),
        help="Cores in a pod's own directory older than this are deleted too, whatever their signature, when "
        "the next core there gets its signature (0 = keep; the node location has its own).")
    signatures: bool = setting(
        True, env=_env("signatures"),
        help="Unwind each core off the crash path (drgn, in a confined child) and add backtrace and signature to "
        "its metadata (turned off, with a log line, when drgn is not installed).")
    signature_timeout_seconds: float = setting(
        120.0, env=_env("signature_timeout_seconds"),
        help="The unwinder gets this long per core (wall clock, and as its CPU-time limit).")
    signature_memory_bytes: int = setting(
        256 * 1024**2, env=_env("signature_memory_bytes"),
        help="The unwinder's own address-space cap (RLIMIT_AS, bytes; 0 = none): it runs in the agent's container, so "
        "a core it cannot read within this fails its signature, not the agent.")
    signature_event_wait_seconds: float = setting(
        30.0, env=_env("signature_event_wait_seconds"),
        help="The pod Event / notification wait this long for the signature (then go without it).")
    signature_queue_size: int = setting(
        16, env=_env("signature_queue_size"),
        help="Cores waiting for their signature at most; beyond, a core gets none (logged).")
    gcore_requests: bool = setting(
        True, env=_env("gcore_requests"),
        help="Act on `coredump gcore` requests (the pod annotation) for this node's registered pods.")
    gcore_request_max_age_seconds: float = setting(
        600.0, env=_env("gcore_request_max_age_seconds"),
        help="A gcore request older than this (its requestedAt) is ignored (e.g. seen again at restart).")
    gcore_timeout_seconds: float = setting(
        300.0, env=_env("gcore_timeout_seconds"),
        help="gcore gets this long per snapshot (the process is stopped while it dumps).")

    restore_on_stop: str = setting(
        "always", env=_env("restore_on_stop"),
        help='What a stopping agent does with the node\'s kernel settings: "always" restores them (an agent run'
        ' by hand), "removed" only when its DaemonSet (the daemonset setting) is gone or being deleted, '
        "so a rollout, drain or eviction keeps the helper as the kernel's target (it spools until the "
        'next agent), "never" keeps them (`coredump agent uninstall` restores).')
    daemonset: str = setting(
        "", env=_env("daemonset"),
        help='The agent\'s own DaemonSet as NAMESPACE/NAME, read at stop when restore_on_stop is "removed".')
    stop_timeout_seconds: float = setting(
        40.0, env=_env("stop_timeout_seconds"),
        help="How long a stopping agent lets the dumps in flight finish; cores still waiting for a slot go to "
        "the spool at once, and a dump still running after this is cut and marked partial. The pod's "
        "terminationGracePeriodSeconds must be longer (the chart enforces it).")

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
