"""Real container runtimes for the end-to-end crash tests (tests/test_runtime_*.py).

The pod-to-container translation is tests/runc_support.py's (the OCI config a kubelet + runtime
would produce); what changes per runtime is who creates the container from it, and so who its
parent process is and how its cgroup is named:
- pure cgroup v2: runc in a private mount namespace where /sys/fs/cgroup is the cgroup2
  hierarchy alone (:func:`cgroup2_runc`);
- containerd: a daemon of the test's own (temp root/state/socket), driven with ``ctr``, the
  container a child of the real ``containerd-shim-runc-v2``;
- docker: a dockerd of the test's own (no iptables, no bridge), an image loaded from a tar
  built here, ``--cgroup-parent`` shaped like the kubelet's.
Nothing is pulled: images are built from busybox-static and the static wrapper.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
from pathlib import Path

from tests.suite_support import which_or_fail


def cgroup2_runc(workdir: Path) -> str:
    """A ``runc`` that runs in its own mount namespace with cgroup2 mounted at /sys/fs/cgroup:
    on this hybrid host, the same unified hierarchy (/sys/fs/cgroup/unified) seen as a pure v2
    one, so runc's cgroupfs driver places containers with v2 paths only. Every invocation (run,
    state, kill, delete) sees the same hierarchy; the host and the agent see the paths under
    /sys/fs/cgroup/unified and in the ``0::`` line of /proc/<pid>/cgroup."""
    runc = which_or_fail("runc")
    unshare = which_or_fail("unshare")
    script = workdir / "runc-cgroup2"
    script.write_text(
        "#!/bin/sh\n"
        f"exec {unshare} -m --propagation private sh -c "
        "'mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec \"$0\" \"$@\"' "
        f"{runc} \"$@\"\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def cgroup_lines(pid: int) -> dict[str, str]:
    """/proc/<pid>/cgroup as {hierarchy-id:controllers: path}."""
    out = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        hid, controllers, path = line.split(":", 2)
        out[f"{hid}:{controllers}"] = path
    return out


def parent_pid(pid: int) -> int:
    """``pid``'s parent process (field 4 of /proc/<pid>/stat, after the command's parenthesis)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def parent_exe(pid: int) -> str:
    """The executable of ``pid``'s parent process."""
    return os.readlink(f"/proc/{parent_pid(pid)}/exe")


def pod_image_rootfs(bin_dir: Path, base: Path, wrapper_ref: str, busybox_refs: tuple[str, ...]) -> dict[str, Path]:
    """The root filesystems of a mutated pod's images, by reference: the static wrapper's image
    (``wrapper_ref``) and busybox-static for every one of ``busybox_refs`` (built once)."""
    from tests.runc_support import busybox_rootfs, single_binary_rootfs
    from webhook import constants as C

    images = {wrapper_ref: single_binary_rootfs(bin_dir / "coredump-wrapper", C.IMAGE_WRAPPER_PATH)(base / "w")}
    bb = busybox_rootfs(base / "bb")
    images.update((ref, bb) for ref in busybox_refs)
    return images


def docker_loaded(daemon, bin_dir: Path, base: Path, wrapper_ref: str, busybox_refs: tuple[str, ...]):
    """``daemon`` (a dockerd or podman, driven by the docker CLI's verbs) with the pod's images
    loaded (:func:`pod_image_rootfs`) and listed by ``images``."""
    for ref, rootfs in pod_image_rootfs(bin_dir, base, wrapper_ref, busybox_refs).items():
        daemon.load_image(rootfs, ref)
    listed = daemon.docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    assert {wrapper_ref, *busybox_refs} <= set(listed), listed
    return daemon


# --- images, built here -------------------------------------------------------------------------
def image_tar(rootfs: Path, ref: str, out: Path, *, cmd: list[str] | None = None) -> Path:
    """A one-layer image of ``rootfs`` as ``docker save`` writes it (the docker.v1.2 tar that
    ``docker load`` and ``ctr images import`` both read), tagged ``ref``."""
    import hashlib
    import io
    import json
    import tarfile

    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for p in sorted(rootfs.rglob("*")):
            tf.add(p, arcname=str(p.relative_to(rootfs)), recursive=False)
    layer_bytes = layer.getvalue()
    diff_id = hashlib.sha256(layer_bytes).hexdigest()
    config = {
        "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine),
        "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Cmd": cmd or ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        "history": [{"created_by": "tests/runtime_support.py image_tar"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_id = hashlib.sha256(config_bytes).hexdigest()
    manifest = [{"Config": f"{config_id}.json", "RepoTags": [ref], "Layers": [f"{diff_id}/layer.tar"]}]
    with tarfile.open(out, "w") as tf:
        for name, data in ((f"{diff_id}/layer.tar", layer_bytes), (f"{config_id}.json", config_bytes),
                           ("manifest.json", json.dumps(manifest).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tf.addfile(info, io.BytesIO(data))
    return out


# --- process and mount housekeeping -------------------------------------------------------------
def pids_with_cmdline(needle: str) -> list[int]:
    """PIDs whose command line contains ``needle`` (a socket path unique to this test)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline:
            found.append(int(entry))
    return found


def mounts_under(prefix: Path) -> list[str]:
    """Mount points at or below ``prefix`` in this mount namespace, deepest first."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == str(prefix) or point.startswith(str(prefix).rstrip("/") + "/"):
            out.append(point)
    return sorted(out, key=len, reverse=True)


def terminate(proc: subprocess.Popen | None, seconds: float, name: str) -> list[str]:
    """SIGTERM a daemon and wait ``seconds``, then SIGKILL it; the problems to report."""

    if proc is None or proc.poll() is not None:
        return []
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        return [f"{name} had to be killed"]
    return []


def kill_stragglers(pids: list[int], describe: str) -> list[str]:
    """SIGKILL processes a daemon left behind; ``describe`` (``{pid}`` in it) names each problem."""
    import signal

    problems = []
    for pid in pids:
        problems.append(describe.format(pid=pid))
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return problems


def unmount_all(prefix: Path) -> list[str]:
    """Unmount (lazily) whatever is mounted below ``prefix``; returns what was."""
    import subprocess

    left = mounts_under(prefix)
    for point in left:
        subprocess.run(["umount", "-l", point], capture_output=True)
    return left


class HostLeftovers:
    """Host paths a runtime creates outside the roots it was given (fixed in its code: ctr's
    fifo and shim socket dirs under /run/containerd, dockerd's /etc/docker/key.json and
    /run/docker/plugins, podman's /var/lib/containers/cache): the ones that did not exist before
    are removed afterwards."""

    def __init__(self, *paths: str) -> None:
        self.absent = [Path(p) for p in paths if not os.path.lexists(p)]

    def remove(self) -> None:
        import shutil

        for p in self.absent:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            elif os.path.lexists(p):
                p.unlink()
