"""The safe writer: symlinks, '..' and magic links never make the agent write outside the root;
files appear only complete, never over an existing name. Checked on the host side each time."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests import runc_support
from tests.process_support import descendants
from webhook.agent.writer import TMP_PREFIX, OutputFile, SafeRoot, UnsafePath, write_small_file

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def fake_root(tmp_path):
    """A directory playing a container root, with every kind of escape prepared inside."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "data").mkdir(parents=True)
    (root / "etc").mkdir()
    outside.mkdir()
    os.symlink(str(outside), root / "data" / "abs")  # absolute: means <root>/<outside path> inside
    os.symlink("../../../../../../" + str(outside).lstrip("/"), root / "data" / "climb")
    os.symlink("/etc", root / "data" / "dump")  # the classic: dump -> /etc
    os.symlink("/proc/self/root" + str(outside), root / "data" / "magic")
    return root, outside


def _write(root_dir, directory, name=b"core", data=b"ELF"):
    with SafeRoot.open(str(root_dir)) as root:
        dirfd = root.open_dir(directory)
        try:
            return write_small_file(dirfd, name if isinstance(name, str) else name.decode(), data)
        finally:
            os.close(dirfd)


def _all_files(path):
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)


def test_absolute_symlink_stays_inside(fake_root):
    root, outside = fake_root
    _write(root, "/data/dump/sub")  # dump -> /etc: the container's /etc, not the host's
    assert (root / "etc" / "sub" / "core").read_bytes() == b"ELF"
    assert not os.path.exists("/etc/sub/core")
    with pytest.raises(FileNotFoundError):  # dangling inside the root: refused, not followed out
        _write(root, "/data/abs")
    assert _all_files(outside) == []
    (root / str(outside).lstrip("/")).mkdir(parents=True)
    _write(root, "/data/abs")
    assert _all_files(outside) == []
    assert (root / str(outside).lstrip("/") / "core").exists()


def test_dotdot_and_climbing_symlinks_are_clamped(fake_root):
    root, outside = fake_root
    (root / str(outside).lstrip("/")).mkdir(parents=True)
    _write(root, "/../../../../" + str(outside).lstrip("/"))
    _write(root, "/data/climb", name="core2")
    assert _all_files(outside) == []
    inside = root / str(outside).lstrip("/")
    assert (inside / "core").exists() and (inside / "core2").exists()


def test_magic_links_are_refused(fake_root, tmp_path):
    root, outside = fake_root
    # inside a root that has the agent's own /proc: /proc/self/root is a magic link
    with SafeRoot.open("/") as host_root:
        with pytest.raises(UnsafePath):
            host_root.open_dir(f"/proc/self/root{tmp_path}/x")
        with pytest.raises(UnsafePath):
            host_root.open_dir(f"/proc/{os.getpid()}/cwd")
    assert not (tmp_path / "x").exists()
    # a symlink to a magic link inside the fake root resolves in the root (no /proc there)
    with SafeRoot.open(str(root)) as fake, pytest.raises(FileNotFoundError):
        fake.open_dir("/data/magic/y", create=False)
    assert _all_files(outside) == []


def test_never_overwrites_and_suffixes(tmp_path):
    (tmp_path / "core").write_bytes(b"precious")
    names = [_write(tmp_path, "/", data=b"new%d" % i) for i in range(3)]
    assert names == ["core.1", "core.2", "core.3"]
    assert (tmp_path / "core").read_bytes() == b"precious"
    assert (tmp_path / "core.2").read_bytes() == b"new1"
    # a symlink squatting the final name is not followed, not replaced
    os.symlink("/etc/passwd", tmp_path / "core2")
    assert _write(tmp_path, "/", name="core2") == "core2.1"
    assert os.readlink(tmp_path / "core2") == "/etc/passwd"


def test_extension_stays_last_and_temp_names_vanish(tmp_path):
    with SafeRoot.open(str(tmp_path)) as root:
        dirfd = root.open_dir("/d")
        try:
            first = OutputFile(dirfd, "core")
            assert first.tmp_name.startswith(TMP_PREFIX)
            os.write(first.fd, b"a")
            assert first.commit(ext=".zst") == "core.zst"
            second = OutputFile(dirfd, "core")
            assert second.commit(ext=".zst") == "core.1.zst"
            third = OutputFile(dirfd, "core")
            third.discard()
        finally:
            os.close(dirfd)
    assert sorted(os.listdir(tmp_path / "d")) == ["core.1.zst", "core.zst"]


def test_created_directories_belong_to_the_process(tmp_path):
    with SafeRoot.open(str(tmp_path)) as root:
        os.close(root.open_dir("/a/b/c", uid=1234, gid=2345, mode=0o750))
    for sub in ("a", "a/b", "a/b/c"):
        st = os.stat(tmp_path / sub)
        assert (st.st_uid, st.st_gid) == (1234, 2345)


def test_file_in_the_way_of_a_directory(tmp_path):
    (tmp_path / "data").write_text("not a dir")
    with SafeRoot.open(str(tmp_path)) as root, pytest.raises(NotADirectoryError):
        root.open_dir("/data/dump")


# --- real mount namespaces ------------------------------------------------------------------------
def busybox_rootfs(path) -> str:
    """The busybox image with an empty /data to mount a private tmpfs on."""
    (runc_support.busybox_rootfs(path) / "data").mkdir(exist_ok=True)
    return str(path)


@pytest.mark.root
def test_escapes_from_a_real_namespace_never_reach_the_host(tmp_path):
    """A chrooted process in its own mount+pid namespace, with a private tmpfs at /data holding
    ``dump -> /etc``, ``up -> ../../..`` and ``magic -> /proc/self/root/etc``: writing through
    its /proc/<pid>/root lands inside its view or is refused; the host is untouched."""
    rootfs = busybox_rootfs(tmp_path / "rootfs")
    marker = f"coredump-escape-{os.getpid()}-{time.time_ns()}"
    script = (
        f"mount -t proc proc {rootfs}/proc && mount -t tmpfs tmpfs {rootfs}/data && "
        f"exec chroot {rootfs} /bin/sh -c 'ln -s /etc /data/dump; ln -s ../../.. /data/up; "
        "ln -s /proc/self/root/etc /data/magic; mkdir /data/real; echo ready > /data/real/ready; "
        "exec sleep 60'"
    )
    proc = subprocess.Popen(["unshare", "-mpf", "--kill-child", "--propagation", "private", "sh", "-c", script])
    try:
        pid = _wait_for_child_in(proc.pid, "/data/real/ready")
        with SafeRoot.open(f"/proc/{pid}/root") as root:
            for directory in ("/data/dump", "/data/up/etc", "/data/real/../../etc"):
                dirfd = root.open_dir(directory)
                try:
                    write_small_file(dirfd, marker, b"x")
                finally:
                    os.close(dirfd)
            with pytest.raises(OSError):  # its /proc/self is not the agent; magic links refused
                root.open_dir("/data/magic")
            dirfd = root.open_dir(f"/data/real/cores/{marker}")
            os.close(dirfd)
        # all three landed in the container's own /etc (the rootfs dir), none on the host
        assert not os.path.exists(f"/etc/{marker}")
        assert sorted(p for p in os.listdir(os.path.join(rootfs, "etc")) if p.startswith(marker)) == [
            marker, marker + ".1", marker + ".2"]
        # the private tmpfs is invisible from the host: the directory was created inside it
        assert not os.path.exists(os.path.join(rootfs, "data", "real"))
    finally:
        proc.kill()
        proc.wait()


def _wait_for_child_in(unshare_pid: int, path: str, timeout: float = 10.0) -> int:
    """The PID (host view) of the namespace's process that sees ``path`` in its root."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in descendants(unshare_pid):
            try:
                if os.path.exists(f"/proc/{pid}/root{path}") and os.readlink(f"/proc/{pid}/exe").endswith("busybox"):
                    return pid
            except OSError:
                continue
        time.sleep(0.02)
    raise AssertionError(f"no process of {unshare_pid} sees {path}")
