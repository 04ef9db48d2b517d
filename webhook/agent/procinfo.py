"""Who is crashing: read a dumping process from ``/proc/<global pid>`` and identify its pod.

The parsers are pure (text in, values out) so every cgroup driver, runtime and cgroup version
is tested on samples; :func:`read_process` is the only part that touches ``/proc``. The kernel
keeps ``/proc/<pid>`` readable while the pipe helper runs (``core_pipe_limit`` > 0).
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass, field

from webhook import constants
from webhook.agent.creds import Credentials, parse_credentials
from webhook.diagnose.procstatus import Status, parse_status

#: A pod UID in a cgroup path: dashes (cgroupfs) or underscores (systemd slice names).
_POD_UID_RE = re.compile(
    r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})(?:\.slice)?$"
)
#: systemd scope / cgroupfs leaf naming of the runtimes: prefix -> runtime name.
_RUNTIME_PREFIXES = (
    ("cri-containerd-", "containerd"),
    ("crio-", "cri-o"),
    ("docker-", "docker"),
    ("containerd-", "containerd"),
    ("libpod-", "podman"),
)
_CONTAINER_ID_RE = re.compile(r"^[0-9a-f]{64}$")
#: Largest environ block read (a hostile process could have a huge one).
MAX_ENVIRON_BYTES = 1 << 20


class ProcessGone(Exception):
    """``/proc/<pid>`` vanished (or never existed): the process was reaped or spooled."""


@dataclass(frozen=True)
class CgroupIdentity:
    """What a process's cgroup says about it. ``pod_uid`` is None outside Kubernetes."""

    pod_uid: str | None = None
    container_id: str | None = None
    runtime: str | None = None  # "containerd", "cri-o", "docker", or None (cgroupfs, no prefix)
    qos: str | None = None  # "besteffort", "burstable", "guaranteed"
    path: str = ""  # the cgroup path it was read from

    @property
    def in_kubernetes(self) -> bool:
        return self.pod_uid is not None


def parse_cgroup_path(path: str) -> CgroupIdentity:
    """One cgroup path (v1 controller line or the v2 ``0::`` line, without the prefix).

    cgroupfs: ``/kubepods/burstable/pod<uid>/<id>``, ``/kubepods/pod<uid>/crio-<id>``;
    systemd: ``/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<u_i_d>.slice/
    cri-containerd-<id>.scope`` (or ``crio-``, ``docker-``). The path may be relative to the
    reader's cgroup namespace (``/../../kubepods...``): components are matched anywhere.
    """
    parts = [p for p in path.split("/") if p and p not in (".", "..")]
    found = _pod_component(parts)
    if found is None:
        return CgroupIdentity(path=path)
    pod_index, pod_uid = found
    qos = _qos(parts[:pod_index + 1])
    container_id = runtime = None
    if pod_index + 1 < len(parts):
        container_id, runtime = _container_leaf(parts[pod_index + 1])
    return CgroupIdentity(pod_uid=pod_uid, container_id=container_id, runtime=runtime, qos=qos, path=path)


def _pod_component(parts: list[str]) -> tuple[int, str] | None:
    """(index, pod UID) of the first component naming a pod, else None."""
    for i, part in enumerate(parts):
        m = _POD_UID_RE.search(part)
        if m and ("kubepods" in part or part.startswith("pod")):
            return i, m.group(1).replace("_", "-")
    return None


def _qos(parts: list[str]) -> str:
    """The QoS class named by the components down to the pod's (the last one named wins)."""
    qos = None
    for part in parts:
        for name in ("besteffort", "burstable"):
            if name in part and "kubepods" in part or part == name:
                qos = name
    return qos or "guaranteed"


def _container_leaf(leaf: str) -> tuple[str | None, str | None]:
    """(container ID, runtime) of the component under the pod's; (None, None) for conmon or
    anything not a container ID."""
    if leaf.endswith(".scope"):
        leaf = leaf[: -len(".scope")]
    if "conmon" in leaf:
        return None, None
    runtime = None
    for prefix, name in _RUNTIME_PREFIXES:
        if leaf.startswith(prefix):
            leaf, runtime = leaf[len(prefix):], name
            break
    if _CONTAINER_ID_RE.match(leaf):
        return leaf, runtime
    return None, None


def parse_cgroup(text: str) -> CgroupIdentity:
    """``/proc/<pid>/cgroup``: prefer the v2 ``0::`` line, else the first v1 line naming a pod.

    A line carrying a container ID beats one that only names the pod (e.g. a v1 controller
    left at the pod level by a partial hierarchy).
    """
    candidates: list[tuple[int, CgroupIdentity]] = []
    for line in text.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        hierarchy, _controllers, path = fields
        ident = parse_cgroup_path(path)
        if not ident.in_kubernetes:
            continue
        score = (2 if ident.container_id else 0) + (1 if hierarchy == "0" else 0)
        candidates.append((score, ident))
    if not candidates:
        return CgroupIdentity()
    candidates.sort(key=lambda c: -c[0])
    return candidates[0][1]


def parse_environ(raw: bytes) -> dict[str, str]:
    """NUL-separated ``KEY=VALUE`` block; undecodable bytes are replaced, never fatal."""
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        if not item or b"=" not in item:
            continue
        key, _, value = item.partition(b"=")
        env[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return env


@dataclass(frozen=True)
class Registration:
    """What the webhook put in a prepared container's environment (``COREDUMP_*``)."""

    pattern: str
    pod_name: str
    namespace: str
    pod_uid: str
    container: str
    node_name: str = ""
    max_size: str = ""
    compress: str = ""


def parse_registration(env: dict[str, str]) -> Registration | None:
    """The registration, or None when the pattern or the pod UID is missing."""
    pattern = env.get(constants.ENV_PATTERN, "")
    pod_uid = env.get(constants.ENV_POD_UID, "").strip().lower()
    if not pattern or not pod_uid:
        return None
    return Registration(
        pattern=pattern,
        pod_name=env.get(constants.ENV_POD_NAME, ""),
        namespace=env.get(constants.ENV_POD_NAMESPACE, ""),
        pod_uid=pod_uid,
        container=env.get(constants.ENV_CONTAINER_NAME, ""),
        node_name=env.get(constants.ENV_NODE_NAME, ""),
        max_size=env.get(constants.ENV_MAX_SIZE, ""),
        compress=env.get(constants.ENV_COMPRESS, ""),
    )


@dataclass(frozen=True)
class Identity:
    """The verdict: a registration the cgroup confirms, or None with the reason why not."""

    registration: Registration | None
    cgroup: CgroupIdentity
    reason: str  # "registered", or why the process counts as unregistered


def identify(env: dict[str, str], cgroup: CgroupIdentity) -> Identity:
    """Registration cross-checked with the cgroup: the environment alone is not trusted.

    A process can set any environment it likes (or inherit one from a pod it was copied
    from); the cgroup is set by the runtime. A registration counts only when the pod UID it
    names is the one of the pod whose cgroup the process lives in.
    """
    reg = parse_registration(env)
    if reg is None:
        has_any = any(k in env for k in constants.REGISTRATION_ENV)
        return Identity(None, cgroup, "incomplete_registration" if has_any else "no_registration")
    if not cgroup.in_kubernetes:
        return Identity(None, cgroup, "registration_without_pod_cgroup")
    if cgroup.pod_uid != reg.pod_uid:
        return Identity(None, cgroup, "pod_uid_mismatch")
    return Identity(reg, cgroup, "registered")


@dataclass(frozen=True)
class ProcessInfo:
    """A crashing process as read from ``/proc/<global_pid>`` (paths as its root sees them)."""

    global_pid: int
    environ: dict[str, str] = field(default_factory=dict)
    cgroup: CgroupIdentity = field(default_factory=CgroupIdentity)
    exe: str = ""  # inside the process's root
    cwd: str | None = None  # inside the process's root; None when not below it
    root: str = "/"  # the root as the agent sees it (readlink /proc/<pid>/root)
    status: Status = field(default_factory=Status)
    #: Its filesystem credentials (from the same read of ``status``); None when it names none.
    credentials: Credentials | None = None


def strip_root(path: str, root: str) -> str | None:
    """``path`` as seen from ``root`` (both as the agent's readlink shows them), or None."""
    if path.endswith(" (deleted)"):
        path = path[: -len(" (deleted)")]
    if root in ("", "/"):
        return path if path.startswith("/") else None
    if path == root:
        return "/"
    if path.startswith(root.rstrip("/") + "/"):
        return path[len(root.rstrip("/")):]
    return None


def _read(path: str, limit: int = 1 << 16) -> bytes:
    with open(path, "rb") as f:
        return f.read(limit)


def read_process(global_pid: int, proc: str = "/proc") -> ProcessInfo:
    """Read everything the crash path needs; raise :class:`ProcessGone` if it is not there."""
    base = f"{proc}/{global_pid}"
    try:
        status_text = _read(f"{base}/status").decode("utf-8", "replace")
    except FileNotFoundError as exc:
        raise ProcessGone(f"{base} does not exist") from exc
    except ProcessLookupError as exc:  # pragma: no cover - reaped between open and read
        raise ProcessGone(str(exc)) from exc

    def optional(reader, default):
        try:
            return reader()
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ESRCH) and not os.path.exists(base):
                raise ProcessGone(f"{base} vanished") from exc
            return default

    environ = optional(lambda: parse_environ(_read(f"{base}/environ", MAX_ENVIRON_BYTES)), {})
    cgroup = optional(lambda: parse_cgroup(_read(f"{base}/cgroup").decode("utf-8", "replace")), CgroupIdentity())
    root = optional(lambda: os.readlink(f"{base}/root"), "/")
    exe_raw = optional(lambda: os.readlink(f"{base}/exe"), "")
    cwd_raw = optional(lambda: os.readlink(f"{base}/cwd"), "")
    exe = (strip_root(exe_raw, root) or "") if exe_raw else ""
    cwd = strip_root(cwd_raw, root) if cwd_raw else None
    try:
        credentials: Credentials | None = parse_credentials(status_text)
    except ValueError:
        credentials = None
    return ProcessInfo(global_pid=global_pid, environ=environ, cgroup=cgroup, exe=exe, cwd=cwd, root=root,
                       status=parse_status(status_text), credentials=credentials)


def container_process(container_id: str, pod_uid: str, nspid: int | None = None, proc: str = "/proc") -> int:
    """The host PID of a live process of a container: its main one, or the one with ``nspid``.

    The container's processes are those whose cgroup names this container ID (and pod UID);
    the main one is the process whose parent is not in the container (the runtime's init of
    it). Raises LookupError saying what was not found.
    """
    members: dict[int, tuple[int, tuple[int, ...]]] = {}  # pid -> (ppid, NSpid)
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        base = os.path.join(proc, name)
        try:
            cg = parse_cgroup(_read(os.path.join(base, "cgroup")).decode("utf-8", "replace"))
            if cg.container_id != container_id or cg.pod_uid != pod_uid:
                continue
            text = _read(os.path.join(base, "status")).decode("utf-8", "replace")
        except OSError:
            continue  # exited meanwhile, or a kernel thread
        status = parse_status(text)
        ppid = next((int(line.split()[1]) for line in text.splitlines() if line.startswith("PPid:")), 0)
        members[int(name)] = (ppid, status.nspid or (int(name),))
    if not members:
        raise LookupError(f"no running process of container {container_id[:12]} on this node")
    if nspid is not None:
        found = [pid for pid, (_, ns) in members.items() if ns[-1] == nspid]
        if not found:
            raise LookupError(f"no process with PID {nspid} in the container")
        return found[0]
    mains = [pid for pid, (ppid, _) in members.items() if ppid not in members]
    return min(mains or members, key=lambda p: (members[p][1][-1], p))
