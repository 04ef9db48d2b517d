"""A tiny "kubelet + containerd" for tests: run an admitted pod's containers as real runc containers.

What the real node does with a pod, done for real where it matters to core dumps:
- the API server names a ``generateName`` pod and gives it a UID, the scheduler a node;
- every volume gets a host directory (emptyDir 0777 under ``pods/<uid>/volumes/...``, network
  volumes such as NFS or a PVC are directories the test hands in as the "remote" export), bind
  mounted (``rbind``, ``rprivate``, ``ro`` when readOnly) at each mountPath (with subPath);
- the environment is the image's, then the container's, with downward-API ``fieldRef``s resolved;
- ``command``/``args`` become ``process.args`` (Kubernetes semantics, ``$(VAR)`` expanded);
- ``securityContext`` gives the uid/gid, capabilities (drop/add), noNewPrivileges and a read-only
  root; RLIMIT_CORE is soft 0 / hard unlimited, like a default container;
- the runc container ID is a 64-hex ID and ``linux.cgroupsPath`` is shaped like kubelet's
  (cgroupfs ``/kubepods/besteffort/pod<uid>/<id>`` or the systemd driver's slice names);
- init containers run to completion, in order, before the regular ones.

Images are rootfs builders the test maps by image reference (busybox-static, or the project's
image: an empty tree holding only the static wrapper). Everything is torn down by
:meth:`Node.cleanup`: containers killed and ``runc delete -f``'d, cgroup dirs removed deepest first.
"""

from __future__ import annotations

import copy
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CGROUP_ROOT = Path("/sys/fs/cgroup")
#: The characters the API server draws generateName suffixes from (k8s.io/apiserver names.go).
NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
#: RLIM_INFINITY as config.json spells it.
UNLIMITED = 2**64 - 1
#: Kubernetes' default PATH for images that set none (the busybox image sets this one).
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def cgroups_path(flavour: str, pod_uid: str, container_id: str, qos: str = "besteffort") -> str:
    """``linux.cgroupsPath`` as kubelet + containerd produce it for each cgroup driver.

    systemd: the slice layout the systemd driver creates, placed with runc's cgroupfs driver
    (this VM has no systemd-managed cgroups to hand it to); the process's /proc/<pid>/cgroup
    reads exactly as on a systemd node.
    """
    if flavour == "cgroupfs":
        return f"/kubepods/{qos}/pod{pod_uid}/{container_id}"
    if flavour == "systemd":
        u = pod_uid.replace("-", "_")
        return (f"/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{u}.slice/"
                f"cri-containerd-{container_id}.scope")
    raise ValueError(f"unknown cgroup flavour {flavour!r}")


CGROUP_FLAVOURS = ("cgroupfs", "systemd")


def remove_cgroup_dirs(rel: str) -> list[str]:
    """Remove ``rel`` and its then-empty parents in every hierarchy, deepest first.

    Stops at the first parent still in use (another test's pod). Returns what is left of
    ``rel`` itself (should be nothing).
    """
    parts = [p for p in rel.strip("/").split("/") if p]
    left = []
    for hierarchy in sorted(CGROUP_ROOT.iterdir()):
        if hierarchy.is_symlink() or not hierarchy.is_dir():
            continue  # cpu -> cpu,cpuacct: visited under its real name
        for depth in range(len(parts), 0, -1):
            d = hierarchy.joinpath(*parts[:depth])
            if not d.is_dir():
                continue
            try:
                d.rmdir()
            except OSError:
                break
        if hierarchy.joinpath(*parts).is_dir():
            left.append(str(hierarchy.joinpath(*parts)))
    return left


def busybox_rootfs(path: Path) -> Path:
    """The busybox image: busybox-static and its applet links (what ``busybox:1.36`` holds).

    A tree built already is reused as it is (its busybox may be running: never copied over)."""
    if (path / "bin" / "busybox").exists():
        return path
    bb = shutil.which("busybox")
    if bb is None:
        raise RuntimeError("busybox missing: scripts/test.sh installs busybox-static")
    for d in ("bin", "proc", "sys", "dev", "etc", "tmp", "root"):
        (path / d).mkdir(parents=True, exist_ok=True)
    (path / "tmp").chmod(0o1777)
    shutil.copy(bb, path / "bin" / "busybox")
    subprocess.run(["chroot", str(path), "/bin/busybox", "--install", "-s", "/bin"], check=True)
    (path / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")
    (path / "etc" / "group").write_text("root:x:0:\nnobody:x:65534:\n")
    return path


def single_binary_rootfs(binary: Path, at: str) -> Callable[[Path], Path]:
    """An image that holds one static binary at ``at`` and nothing else (no shell, no libc)."""

    def build(path: Path) -> Path:
        for d in ("proc", "sys", "dev"):
            (path / d).mkdir(parents=True, exist_ok=True)
        dest = path / at.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(binary, dest)
        dest.chmod(0o755)
        return path

    return build


def generated_name(generate_name: str) -> str:
    """What the API server makes of ``generateName`` (5 random characters appended)."""
    return generate_name + "".join(secrets.choice(NAME_ALPHABET) for _ in range(5))


def expand_vars(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion in command/args: ``$$`` escapes, unknown names stay."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        m = re.match(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", text[i:])
        if m:
            out.append(env.get(m.group(1), m.group(0)))
            i += m.end()
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


def field_ref(pod: dict[str, Any], path: str) -> str:
    """A downward-API fieldPath the way the kubelet resolves it."""
    meta, spec = pod["metadata"], pod["spec"]
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": "10.244.1.17",
        "status.hostIP": "192.168.0.11",
    }
    if path in simple:
        if simple[path] is None:
            raise ValueError(f"fieldRef {path} has no value in this pod")
        return str(simple[path])
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    raise ValueError(f"fieldRef {path} not supported by this test kubelet")


#: Capability numbers (linux/capability.h) of the names containerd may put in a spec.
CAP_NUMBERS = {"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_FOWNER": 3, "CAP_FSETID": 4, "CAP_KILL": 5,
               "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8, "CAP_NET_BIND_SERVICE": 10, "CAP_NET_RAW": 13,
               "CAP_SYS_CHROOT": 18, "CAP_SYS_PTRACE": 19, "CAP_SYS_ADMIN": 21, "CAP_SYS_RESOURCE": 24,
               "CAP_MKNOD": 27, "CAP_AUDIT_WRITE": 29, "CAP_SETFCAP": 31}


def host_bounding_set() -> set[str]:
    """The capabilities this process may hand to a container (some sandboxes lack a few)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            mask = int(line.split()[1], 16)
            return {name for name, bit in CAP_NUMBERS.items() if mask >> bit & 1}
    return set(CAP_NUMBERS)


def _caps(sc: dict[str, Any]) -> list[str]:
    """containerd's capability set: its default list, minus ``drop``, plus ``add``."""
    default = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
               "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
               "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]
    caps = sc.get("capabilities") or {}
    norm = lambda c: c if c.startswith("CAP_") else "CAP_" + c  # noqa: E731
    drop = {norm(c) for c in caps.get("drop") or []}
    out = [] if "CAP_ALL" in drop else [c for c in default if c not in drop]
    for c in caps.get("add") or []:
        if norm(c) not in out:
            out.append(norm(c))
    return out


@dataclass
class Container:
    """One container the test node ran (or is running)."""

    name: str
    container_id: str
    bundle: Path
    cgroups_path: str
    proc: subprocess.Popen
    stdout: Path
    stderr: Path
    config: dict[str, Any]
    #: Capabilities the pod asked for that this host could not grant.
    ungranted: list[str] = field(default_factory=list)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def output(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")


@dataclass
class Node:
    """A node that runs admitted pods with runc. Use as a context manager (or call cleanup)."""

    workdir: Path
    runc: str
    images: dict[str, Callable[[Path], Path]]
    node_name: str = "node-e2e-1"
    flavour: str = "cgroupfs"
    #: Directories standing in for network volumes (NFS exports, PVCs), by pod volume name.
    remote: dict[str, Path] = field(default_factory=dict)
    #: RLIMIT_CORE (soft, hard) the runtime gives containers: a default container's, or e.g.
    #: (0, 0) for a runtime configured with a hard limit of 0 that no wrapper can raise.
    core_limit: tuple[int, int] = (0, UNLIMITED)
    containers: list[Container] = field(default_factory=list)
    #: Called with (pod, container name, container ID) just before a container starts: what
    #: the kubelet reports in the pod's status (tests/pod_api.py feeds it to the agent's watch).
    on_start: Callable[[dict[str, Any], str, str], None] | None = None

    def __post_init__(self) -> None:
        self.state = self.workdir / "runc-state"
        self.state.mkdir(parents=True, exist_ok=True)
        self.volume_dirs: dict[str, Path] = {}

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cleanup()

    # --- the API server and the scheduler ---------------------------------------------------
    def admit(self, pod: dict[str, Any]) -> dict[str, Any]:
        """Name (generateName), UID and node, as creation and scheduling give them."""
        pod = copy.deepcopy(pod)
        meta = pod["metadata"]
        if not meta.get("name"):
            meta["name"] = generated_name(meta["generateName"])
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        pod["spec"]["nodeName"] = self.node_name
        return pod

    # --- volumes ----------------------------------------------------------------------------
    def prepare_volumes(self, pod: dict[str, Any]) -> dict[str, Path]:
        """One host directory per pod volume, as the kubelet's volume plugins set them up."""
        uid = pod["metadata"]["uid"]
        base = self.workdir / "pods" / uid / "volumes"
        for vol in pod["spec"].get("volumes") or []:
            name = vol["name"]
            if "emptyDir" in vol:
                d = base / "kubernetes.io~empty-dir" / name
                d.mkdir(parents=True)
                d.chmod(0o777)  # the kubelet makes emptyDirs world-writable
            elif "projected" in vol:
                d = base / "kubernetes.io~projected" / name
                d.mkdir(parents=True)
                (d / "token").write_text("eyJhbGciOiJSUzI1NiJ9.e30.c2ln")
                (d / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
                (d / "namespace").write_text(pod["metadata"]["namespace"])
            elif name in self.remote:
                d = self.remote[name]
            else:
                raise ValueError(f"volume {name}: no host directory for {sorted(set(vol) - {'name'})}")
            self.volume_dirs[name] = d
        return self.volume_dirs

    # --- containers -------------------------------------------------------------------------
    def environment(self, pod: dict[str, Any], c: dict[str, Any]) -> list[str]:
        env: dict[str, str] = {"PATH": IMAGE_PATH, "HOSTNAME": pod["metadata"]["name"]}
        for item in c.get("env") or []:
            if "value" in item:
                env[item["name"]] = expand_vars(item["value"], env)
            elif "valueFrom" in item and "fieldRef" in item["valueFrom"]:
                env[item["name"]] = field_ref(pod, item["valueFrom"]["fieldRef"]["fieldPath"])
            else:
                raise ValueError(f"env {item['name']}: source not supported by this test kubelet")
        # service links (enableServiceLinks defaults to true)
        env.update({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443",
                    "KUBERNETES_PORT": "tcp://10.96.0.1:443"})
        return [f"{k}={v}" for k, v in env.items()]

    def _bundle(self, pod: dict[str, Any], c: dict[str, Any], container_id: str) -> tuple[Path, dict[str, Any]]:
        bundle = self.workdir / "bundles" / container_id[:12]
        image = c["image"]
        if image not in self.images:
            raise ValueError(f"image {image} not known to this test node")
        rootfs = self.images[image](bundle / "rootfs")
        subprocess.run([self.runc, "spec", "-b", str(bundle)], check=True)
        cfg = json.loads((bundle / "config.json").read_text())
        env_list = self.environment(pod, c)
        env = dict(e.split("=", 1) for e in env_list)
        command = c.get("command") or []
        args = c.get("args") or []
        if not command:
            raise ValueError(f"container {c['name']}: no command (the image's ENTRYPOINT is not modelled)")
        psc = pod["spec"].get("securityContext") or {}
        sc = c.get("securityContext") or {}
        uid = int(sc.get("runAsUser", psc.get("runAsUser", 0)))
        gid = int(sc.get("runAsGroup", psc.get("runAsGroup", 0)))
        if (sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True) and uid == 0:
            raise ValueError(f"container {c['name']}: runAsNonRoot with uid 0 (the kubelet refuses it)")
        wanted = _caps(sc) if not sc.get("privileged") else []
        # a runtime cannot grant what its own bounding set lacks (runc fails "unable to apply caps")
        caps = [x for x in wanted if x in host_bounding_set()]
        cfg["process"].update(
            terminal=False,
            args=[expand_vars(a, env) for a in [*command, *args]],
            env=env_list,
            cwd=c.get("workingDir") or "/",
            user={"uid": uid, "gid": gid, "additionalGids": [int(g) for g in psc.get("supplementalGroups") or []]},
            noNewPrivileges=sc.get("allowPrivilegeEscalation") is False,
        )
        # Kubernetes sets no ambient capabilities: a non-root process loses them at execve
        cfg["process"]["capabilities"] = {k: list(caps) for k in ("bounding", "effective", "permitted")}
        cfg["process"]["rlimits"] = [
            {"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024},  # runc's default (only lowers)
            {"type": "RLIMIT_CORE", "hard": self.core_limit[1], "soft": self.core_limit[0]},
        ]
        cfg["root"] = {"path": "rootfs", "readonly": sc.get("readOnlyRootFilesystem") is True}
        cfg["hostname"] = pod["metadata"]["name"]
        for m in c.get("volumeMounts") or []:
            src = self.volume_dirs[m["name"]]
            if m.get("subPath"):
                src = src / m["subPath"]
                src.mkdir(parents=True, exist_ok=True)
            cfg["mounts"].append({"destination": m["mountPath"], "type": "bind", "source": str(src),
                                  "options": ["rbind", "rprivate", "ro" if m.get("readOnly") else "rw"]})
        cfg["linux"]["cgroupsPath"] = cgroups_path(self.flavour, pod["metadata"]["uid"], container_id)
        (bundle / "config.json").write_text(json.dumps(cfg, indent=1))
        assert rootfs.is_dir()
        return bundle, cfg

    def start(self, pod: dict[str, Any], name: str) -> Container:
        """Create and start one container (``runc run``, in the foreground of its Popen)."""
        c = next(x for x in (pod["spec"].get("initContainers") or []) + pod["spec"]["containers"]
                 if x["name"] == name)
        container_id = secrets.token_hex(32)
        bundle, cfg = self._bundle(pod, c, container_id)
        if self.on_start is not None:
            self.on_start(pod, name, container_id)
        out, err = bundle / "stdout.log", bundle / "stderr.log"
        with open(out, "wb") as fo, open(err, "wb") as fe:
            proc = subprocess.Popen([self.runc, "--root", str(self.state), "run", "-b", str(bundle), container_id],
                                    stdin=subprocess.DEVNULL, stdout=fo, stderr=fe)
        ctr = Container(name, container_id, bundle, cfg["linux"]["cgroupsPath"], proc, out, err, cfg,
                        ungranted=[x for x in _caps(c.get("securityContext") or {})
                                   if x not in cfg["process"]["capabilities"]["bounding"]])
        self.containers.append(ctr)
        return ctr

    def run_init_containers(self, pod: dict[str, Any], timeout: float = 20) -> list[Container]:
        """Each init container in order, to completion; raises when one fails."""
        done = []
        for c in pod["spec"].get("initContainers") or []:
            ctr = self.start(pod, c["name"])
            rc = ctr.wait(timeout)
            if rc != 0:
                raise AssertionError(f"init container {c['name']} exited {rc}: {ctr.output()}")
            done.append(ctr)
        return done

    def pid_of(self, ctr: Container) -> int | None:
        st = subprocess.run([self.runc, "--root", str(self.state), "state", ctr.container_id],
                            capture_output=True, text=True)
        if st.returncode != 0:
            return None
        return json.loads(st.stdout).get("pid") or None

    # --- teardown ---------------------------------------------------------------------------
    def cleanup(self) -> list[str]:
        """Kill, ``runc delete -f`` every container, remove the cgroup dirs; return problems."""
        problems: list[str] = []
        for ctr in self.containers:
            subprocess.run([self.runc, "--root", str(self.state), "kill", ctr.container_id, "KILL"],
                           capture_output=True)
            try:
                ctr.proc.wait(10)
            except subprocess.TimeoutExpired:
                ctr.proc.kill()
                ctr.proc.wait()
                problems.append(f"runc run for {ctr.name} had to be killed")
            subprocess.run([self.runc, "--root", str(self.state), "delete", "-f", ctr.container_id],
                           capture_output=True)
        for ctr in self.containers:
            left = remove_cgroup_dirs(ctr.cgroups_path)
            if left:
                problems.append(f"cgroup dirs left: {left}")
        listed = subprocess.run([self.runc, "--root", str(self.state), "list", "-q"], capture_output=True, text=True)
        if listed.stdout.strip():
            problems.append(f"runc still lists {listed.stdout.split()}")
        self.containers.clear()
        return problems


def processes_rooted_under(prefix: Path) -> list[int]:
    """PIDs whose root or cwd lies under ``prefix`` (stray container processes)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        for link in ("root", "cwd"):
            try:
                target = os.readlink(f"/proc/{entry}/{link}")
            except OSError:
                continue
            if target == str(prefix) or target.startswith(str(prefix).rstrip("/") + "/"):
                found.append(int(entry))
                break
    return found


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
