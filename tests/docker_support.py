"""A dockerd of the test's own and a test node that runs pods with ``docker run``.

The daemon gets its own data-root, exec-root, pidfile, socket and (empty) config file, with no
iptables, no bridge and no IP masquerading: nothing on the host network changes, containers run
with ``--network none``. It starts its own managed containerd under the exec-root. Images are
``docker load``ed from tars built here. A pod's container is translated from the kubelet-shaped
OCI config of tests/runc_support.py into ``docker run`` flags the way dockershim did (user,
groups, capabilities, no-new-privileges, read-only root, rlimits, bind mounts, hostname) with the
pod's cgroup as ``--cgroup-parent`` (cgroupfs driver: ``/kubepods/besteffort/pod<uid>/<id>``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.runc_support import Container, Node, remove_cgroup_dirs
from tests.runtime_support import HostLeftovers, image_tar, kill_stragglers, pids_with_cmdline, terminate, unmount_all
from tests.suite_support import which_or_fail

#: Debian's docker.io CLI (another `docker` earlier on PATH may not be a Docker CLI at all).
DEBIAN_DOCKER = "/usr/bin/docker"


def docker_cli() -> str:
    return DEBIAN_DOCKER if os.access(DEBIAN_DOCKER, os.X_OK) else which_or_fail("docker")


class Dockerd:
    """One dockerd (start with :meth:`start`, always :meth:`stop`)."""

    def __init__(self, workdir: Path, cgroup_parent: str = "/kubepods") -> None:
        self.workdir = workdir
        self.socket = workdir / "d.sock"
        self.exec_root = workdir / "x"
        self.log = workdir / "dockerd.log"
        self.cgroup_parent = cgroup_parent
        self.cli = docker_cli()
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> None:
        binary = which_or_fail("dockerd")
        config = self.workdir / "daemon.json"
        config.write_text("{}\n")
        cmd = [binary, "--config-file", str(config), "--host", f"unix://{self.socket}",
               "--data-root", str(self.workdir / "data"), "--exec-root", str(self.exec_root),
               "--pidfile", str(self.workdir / "dockerd.pid"), "--iptables=false", "--ip6tables=false",
               "--ip-masq=false", "--ip-forward=false", "--bridge=none", "--userland-proxy=false",
               "--exec-opt", "native.cgroupdriver=cgroupfs", "--cgroup-parent", self.cgroup_parent,
               "--storage-driver", "overlay2", "--log-level", "warn"]
        with open(self.log, "wb") as f:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while self.docker("version", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"dockerd did not start: {self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def command(self, *args: str) -> list[str]:
        return [self.cli, "--host", f"unix://{self.socket}", *args]

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run(self.command(*args), capture_output=True, text=True, timeout=60,
                             env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.workdir)})
        if check and res.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: {res.stderr}")
        return res

    def load_image(self, rootfs: Path, ref: str) -> None:
        tar = image_tar(rootfs, ref, self.workdir / "image.tar")
        self.docker("load", "--input", str(tar))
        tar.unlink()

    def shims(self) -> list[int]:
        return [p for p in pids_with_cmdline(f"-address {self.exec_root}/") if p != os.getpid()]

    def stop(self) -> list[str]:
        problems = terminate(self.proc, 30, "dockerd")
        problems += kill_stragglers([p for p in pids_with_cmdline(f"{self.exec_root}/containerd/") if p != os.getpid()],
                                    "process {pid} of this dockerd still running")
        unmount_all(self.workdir)
        return problems


@pytest.fixture(scope="module")
def dockerd() -> Iterator[Dockerd]:
    """One daemon per test module; stopped, unmounted and removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    workdir = Path(tempfile.mkdtemp(prefix="dkr-"))  # short: the managed containerd's socket lives here
    leftovers = HostLeftovers("/etc/docker/key.json", "/run/docker", "/run/containerd")
    daemon = Dockerd(workdir)
    try:
        daemon.start()
        yield daemon
    finally:
        problems = daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        leftovers.remove()
        assert problems == [], problems


def _empty_rootfs(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


class DockerNode(Node):
    """The test node with docker as its runtime (runc_support.Node's pod handling)."""

    def __init__(self, workdir: Path, daemon: Dockerd, image_refs: list[str], **kw: Any) -> None:
        self.daemon = daemon
        # the rootfs comes from the loaded image: Node's per-container tree stays empty
        super().__init__(workdir, which_or_fail("runc"), {ref: _empty_rootfs for ref in image_refs}, **kw)

    def pod_cgroup(self, pod: dict[str, Any]) -> str:
        uid = pod["metadata"]["uid"]
        if self.flavour == "cgroupfs":
            return f"/kubepods/besteffort/pod{uid}"
        u = uid.replace("-", "_")
        return f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice"

    def container_cgroup(self, pod: dict[str, Any], container_id: str) -> str:
        """Where docker's cgroupfs driver puts a container: ``<cgroup parent>/<id>``."""
        return f"{self.pod_cgroup(pod)}/{container_id}"

    def docker_args(self, pod: dict[str, Any], c: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
        """``docker run`` flags for the container, from the OCI config Node built for it."""
        p = cfg["process"]
        user = p["user"]
        args = ["--network", "none", "--hostname", cfg["hostname"], "--workdir", p["cwd"],
                "--user", f"{user['uid']}:{user['gid']}", "--cgroup-parent", self.pod_cgroup(pod),
                "--cap-drop", "ALL", "--label", f"io.kubernetes.pod.uid={pod['metadata']['uid']}",
                "--label", f"io.kubernetes.container.name={c['name']}"]
        for g in user.get("additionalGids") or []:
            args += ["--group-add", str(g)]
        for cap in p["capabilities"]["bounding"]:
            args += ["--cap-add", cap]
        if p.get("noNewPrivileges"):
            args += ["--security-opt", "no-new-privileges"]
        if cfg["root"].get("readonly"):
            args.append("--read-only")
        for r in p["rlimits"]:
            name = r["type"].removeprefix("RLIMIT_").lower()
            lim = lambda v: "-1" if v >= 2**63 else str(v)  # noqa: E731
            args += ["--ulimit", f"{name}={lim(r['soft'])}:{lim(r['hard'])}"]
        for e in p["env"]:
            args += ["--env", e]
        for m in cfg["mounts"]:
            if m.get("type") == "bind" and m["source"] not in ("/dev", "/sys"):
                ro = ",readonly" if "ro" in m.get("options", []) else ""
                args += ["--mount", f"type=bind,source={m['source']},target={m['destination']}{ro}"]
        return [*args, "--entrypoint", p["args"][0], c["image"], *p["args"][1:]]

    def start(self, pod: dict[str, Any], name: str) -> Container:
        c = next(x for x in (pod["spec"].get("initContainers") or []) + pod["spec"]["containers"]
                 if x["name"] == name)
        bundle, cfg = self._bundle(pod, c, "pending-" + os.urandom(8).hex())
        out, err = bundle / "stdout.log", bundle / "stderr.log"
        # create, report the ID the runtime chose (what the kubelet puts in the pod's status),
        # then start: the agent's pod watch lists the container before its process runs
        created = self.daemon.docker("create", *self.docker_args(pod, c, cfg))
        container_id = created.stdout.strip().splitlines()[-1]
        if self.on_start is not None:
            self.on_start(pod, name, container_id)
        with open(out, "wb") as fo, open(err, "wb") as fe:
            proc = subprocess.Popen(self.daemon.command("start", "--attach", container_id),
                                    stdin=subprocess.DEVNULL, stdout=fo, stderr=fe)
        cgroups_path = self.container_cgroup(pod, container_id)
        cfg["linux"]["cgroupsPath"] = cgroups_path  # where the runtime put it
        ctr = Container(name, container_id, bundle, cgroups_path, proc, out, err, cfg)
        self.containers.append(ctr)
        return ctr

    def pid_of(self, ctr: Container) -> int | None:
        res = self.daemon.docker("inspect", "--format", "{{.State.Pid}}", ctr.container_id, check=False)
        pid = int(res.stdout.strip() or 0) if res.returncode == 0 else 0
        return pid or None

    def inspect(self, container_id: str) -> dict[str, Any]:
        return json.loads(self.daemon.docker("inspect", container_id).stdout)[0]

    def cleanup(self) -> list[str]:
        problems: list[str] = []
        ids = [c.container_id for c in self.containers]
        if ids:
            self.daemon.docker("rm", "--force", *ids, check=False)
        for ctr in self.containers:
            try:
                ctr.proc.wait(15)
            except subprocess.TimeoutExpired:
                ctr.proc.kill()
                ctr.proc.wait()
                problems.append(f"docker run for {ctr.name} had to be killed")
        for ctr in self.containers:
            left = remove_cgroup_dirs(ctr.cgroups_path)
            if left:
                problems.append(f"cgroup dirs left: {left}")
        listed = set(self.daemon.docker("ps", "--all", "--quiet", "--no-trunc", check=False).stdout.split())
        if listed & set(ids):
            problems.append(f"docker still lists {sorted(listed & set(ids))}")
        self.containers.clear()
        return problems
