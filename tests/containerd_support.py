"""A containerd of the test's own, driven with ``ctr``, and a test node that runs pods with it.

The daemon gets its own root, state, gRPC/ttrpc sockets and config in a temp dir (the CRI
plugin is disabled: no CNI, no network), so it never meets a system containerd. Images are
built here (tests/runtime_support.py ``image_tar``) and ``ctr images import``ed into the
kubelet's namespace ``k8s.io``; each container's root is a snapshot of its image
(``ctr images mount``). The OCI config is the kubelet-shaped one of tests/runc_support.py,
handed to ``ctr run --config`` with the cgroup path (``--cgroup``): the container is created by
containerd and runs as a child of the real ``containerd-shim-runc-v2``.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.runc_support import Container, Node, remove_cgroup_dirs
from tests.runtime_support import HostLeftovers, image_tar, kill_stragglers, pids_with_cmdline, terminate, unmount_all
from tests.suite_support import which_or_fail

NAMESPACE = "k8s.io"
SHIM = "containerd-shim-runc-v2"


class Containerd:
    """One containerd daemon (start with :meth:`start`, always :meth:`stop`)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.socket = workdir / "c.sock"
        self.log = workdir / "containerd.log"
        self.ctr_bin = which_or_fail("ctr")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> None:
        binary = which_or_fail("containerd")
        which_or_fail(SHIM)
        config = self.workdir / "config.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{self.workdir}/root"\nstate = "{self.workdir}/state"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.socket}"\n[ttrpc]\n  address = "{self.socket}.ttrpc"\n'
            '[debug]\n  address = ""\n[metrics]\n  address = ""\n')
        with open(self.log, "wb") as f:
            self.proc = subprocess.Popen([binary, "--config", str(config)], stdin=subprocess.DEVNULL,
                                         stdout=f, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while self.ctr("version", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"containerd did not start: {self.log.read_text()[-3000:]}")
            time.sleep(0.05)

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run([self.ctr_bin, "-a", str(self.socket), "-n", NAMESPACE, *args],
                             capture_output=True, text=True, timeout=60)
        if check and res.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)}: {res.stderr}")
        return res

    def ctr_command(self, *args: str) -> list[str]:
        return [self.ctr_bin, "-a", str(self.socket), "-n", NAMESPACE, *args]

    def import_image(self, rootfs: Path, ref: str) -> None:
        tar = image_tar(rootfs, ref, self.workdir / f"image-{secrets.token_hex(4)}.tar")
        self.ctr("images", "import", str(tar))
        tar.unlink()

    def shims(self) -> list[int]:
        return [p for p in pids_with_cmdline(f"-address {self.socket}") if p != os.getpid()]

    def stop(self) -> list[str]:
        """SIGTERM the daemon, end its shims (by PID), unmount and remove everything."""
        problems = terminate(self.proc, 15, "containerd")
        problems += kill_stragglers(self.shims(), "shim {pid} still running")
        unmount_all(self.workdir)
        return problems


@pytest.fixture(scope="module")
def containerd() -> Iterator[Containerd]:
    """One daemon per test module (starting one takes a moment); stopped and cleaned up after."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    workdir = Path(tempfile.mkdtemp(prefix="ctd-"))  # short: socket paths have a length limit
    leftovers = HostLeftovers("/run/containerd")
    daemon = Containerd(workdir)
    try:
        daemon.start()
        yield daemon
    finally:
        problems = daemon.stop()
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
        leftovers.remove()
        assert problems == [], problems


class ContainerdNode(Node):
    """The test node with containerd as its runtime (runc_support.Node's pod handling)."""

    def __init__(self, workdir: Path, daemon: Containerd, images: dict[str, Callable[[Path], Path]], **kw: Any) -> None:
        self.daemon = daemon
        self.mounted: list[Path] = []
        super().__init__(workdir, which_or_fail("runc"), images, **kw)

    def image_rootfs(self, ref: str) -> Callable[[Path], Path]:
        """An image builder for Node: a fresh snapshot of the imported image ``ref``."""

        def mount(path: Path) -> Path:
            path.mkdir(parents=True, exist_ok=True)
            self.daemon.ctr("images", "mount", "--rw", ref, str(path))
            self.mounted.append(path)
            return path

        return mount

    def start(self, pod: dict[str, Any], name: str) -> Container:
        c = next(x for x in (pod["spec"].get("initContainers") or []) + pod["spec"]["containers"]
                 if x["name"] == name)
        container_id = secrets.token_hex(32)
        bundle, cfg = self._bundle(pod, c, container_id)
        cfg["root"]["path"] = str(bundle / "rootfs")  # the shim's bundle is elsewhere: absolute
        (bundle / "config.json").write_text(json.dumps(cfg, indent=1))
        if self.on_start is not None:  # the ID is ours (ctr run takes it): reported before it runs
            self.on_start(pod, name, container_id)
        out, err = bundle / "stdout.log", bundle / "stderr.log"
        cmd = self.daemon.ctr_command("run", "--config", str(bundle / "config.json"),
                                      "--cgroup", cfg["linux"]["cgroupsPath"], container_id)
        with open(out, "wb") as fo, open(err, "wb") as fe:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fo, stderr=fe)
        ctr = Container(name, container_id, bundle, cfg["linux"]["cgroupsPath"], proc, out, err, cfg)
        self.containers.append(ctr)
        return ctr

    def pid_of(self, ctr: Container) -> int | None:
        for line in self.daemon.ctr("tasks", "ls", check=False).stdout.splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == ctr.container_id and fields[2] == "RUNNING":
                return int(fields[1])
        return None

    def cleanup(self) -> list[str]:
        problems: list[str] = []
        for ctr in self.containers:
            self.daemon.ctr("tasks", "kill", "-s", "SIGKILL", ctr.container_id, check=False)
            try:
                ctr.proc.wait(10)
            except subprocess.TimeoutExpired:
                ctr.proc.kill()
                ctr.proc.wait()
                problems.append(f"ctr run for {ctr.name} had to be killed")
            self.daemon.ctr("tasks", "rm", "-f", ctr.container_id, check=False)
            self.daemon.ctr("containers", "rm", ctr.container_id, check=False)
        for path in self.mounted:
            self.daemon.ctr("images", "unmount", "--rm", str(path), check=False)
        self.mounted.clear()
        for ctr in self.containers:
            left = remove_cgroup_dirs(ctr.cgroups_path)
            if left:
                problems.append(f"cgroup dirs left: {left}")
        listed = self.daemon.ctr("containers", "ls", "-q", check=False).stdout.split()
        mine = {c.container_id for c in self.containers} & set(listed)
        if mine:
            problems.append(f"containerd still lists {sorted(mine)}")
        self.containers.clear()
        return problems
