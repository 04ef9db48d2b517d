"""podman with crun for the end-to-end crash test, in a pure cgroup v2 mount namespace.

crun 1.8 refuses this host's hybrid cgroups, so every podman command runs (``nsenter``) in one
long-lived private mount namespace where /sys/fs/cgroup is the cgroup2 hierarchy alone (the
host's /sys/fs/cgroup/unified); podman's storage mounts live and die with that namespace.
podman uses its own root, runroot and tmpdir, the cgroupfs manager (it refuses slice parents
with it: the pod's cgroup is ``/kubepods/besteffort/pod<uid>``, the container's
``.../libpod-<id>``), no network, and explicit ulimits. crun is called through a small wrapper that
drops ``linux.resources`` from the bundle's config: on v2 crun enforces device rules with an eBPF
program and first raises RLIMIT_MEMLOCK, which needs CAP_SYS_RESOURCE, missing on these machines
(and the unified hierarchy has no controllers to apply limits with anyway).
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.docker_support import DockerNode
from tests.runc_support import remove_cgroup_dirs
from tests.runtime_support import HostLeftovers, image_tar
from tests.suite_support import which_or_fail

#: RLIMIT_NPROC given to podman's containers.
NPROC = 4096
CRUN_WRAPPER = """#!/bin/sh
# crun, with linux.resources dropped from the bundle it creates (see tests/podman_support.py)
prev=
for a in "$@"; do
    if [ "$prev" = "--bundle" ] || [ "$prev" = "-b" ]; then
        {python} -c 'import json, sys
p = sys.argv[1] + "/config.json"
c = json.load(open(p))
c.get("linux", {{}}).pop("resources", None)
json.dump(c, open(p, "w"))' "$a"
    fi
    prev=$a
done
exec {crun} "$@"
"""


class Podman:
    """podman + crun in a cgroup2-only mount namespace held open by a sleeping process."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.holder: subprocess.Popen | None = None
        self.podman = which_or_fail("podman")
        self.crun = workdir / "crun"

    def start(self) -> None:
        which_or_fail("conmon")
        self.crun.write_text(CRUN_WRAPPER.format(python=which_or_fail("python3"), crun=which_or_fail("crun")))
        self.crun.chmod(0o755)
        self.holder = subprocess.Popen(
            [which_or_fail("unshare"), "-m", "--propagation", "private", "sh", "-c",
             "mount -t cgroup2 cgroup2 /sys/fs/cgroup && echo ready && exec sleep 3600"],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert self.holder.stdout is not None and self.holder.stdout.readline() == b"ready\n", "no cgroup2 namespace"

    def command(self, *args: str) -> list[str]:
        assert self.holder is not None
        return [which_or_fail("nsenter"), "-t", str(self.holder.pid), "-m", self.podman,
                "--root", str(self.workdir / "root"), "--runroot", str(self.workdir / "run"),
                "--tmpdir", str(self.workdir / "tmp"), "--cgroup-manager=cgroupfs", f"--runtime={self.crun}",
                "--events-backend=file", "--storage-driver=overlay", *args]

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """A podman command (named like Dockerd's so the docker node drives it unchanged)."""
        if args[:2] == ("rm", "--force"):
            args = ("rm", "--force", "--time", "0", *args[2:])  # SIGKILL now, like docker rm -f
        res = subprocess.run(self.command(*args), capture_output=True, text=True, timeout=60,
                             env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.workdir),
                                  "CONTAINERS_CONF": os.devnull, "CONTAINERS_REGISTRIES_CONF": os.devnull})
        if check and res.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)}: {res.stderr}")
        return res

    def load_image(self, rootfs: Path, ref: str) -> None:
        tar = image_tar(rootfs, ref, self.workdir / "image.tar")
        self.docker("load", "--input", str(tar))
        tar.unlink()

    def stop(self) -> list[str]:
        problems = []
        if self.holder is not None:
            left = self.docker("ps", "--all", "--quiet", check=False).stdout.split()
            if left:
                problems.append(f"podman still lists {left}")
                self.docker("rm", "--force", "--all", check=False)
            self.docker("rmi", "--all", "--force", check=False)
            self.holder.send_signal(signal.SIGKILL)  # its namespace, and every mount in it, goes
            self.holder.wait(10)
        return problems


@pytest.fixture(scope="module")
def podman() -> Iterator[Podman]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    workdir = Path(tempfile.mkdtemp(prefix="pdm-"))
    leftovers = HostLeftovers("/var/lib/containers", "/run/containers", "/run/libpod")
    p = Podman(workdir)
    try:
        p.start()
        yield p
    finally:
        problems = p.stop()
        time.sleep(0.1)
        shutil.rmtree(workdir, ignore_errors=True)
        leftovers.remove()
        assert problems == [], problems


class PodmanNode(DockerNode):
    """The test node with podman + crun as its runtime (the docker node's flag translation)."""

    def pod_cgroup(self, pod: dict[str, Any]) -> str:
        if self.flavour != "cgroupfs":
            raise ValueError("podman's cgroupfs manager refuses systemd slice parents")
        return f"/kubepods/besteffort/pod{pod['metadata']['uid']}"

    def container_cgroup(self, pod: dict[str, Any], container_id: str) -> str:
        return f"{self.pod_cgroup(pod)}/libpod-{container_id}"

    def cleanup(self) -> list[str]:
        """The docker node's cleanup, then the ``conmon`` cgroup podman leaves in the pod's."""
        pods = {c.cgroups_path.rsplit("/", 1)[0] for c in self.containers}
        problems = super().cleanup()
        for pod in pods:
            left = remove_cgroup_dirs(f"{pod}/conmon")
            if left:
                problems.append(f"cgroup dirs left: {left}")
        return problems

    def docker_args(self, pod: dict[str, Any], c: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
        """podman's default RLIMIT_NPROC is above what crun may set here (no CAP_SYS_RESOURCE;
        even this process's own hard limit is refused under conmon): an explicit, lower one, as
        a node's containers.conf would set it."""
        _, hard = resource.getrlimit(resource.RLIMIT_NPROC)
        nproc = min(NPROC, hard)
        return ["--ulimit", f"nproc={nproc}:{nproc}", *super().docker_args(pod, c, cfg)]
