"""The static ulimit wrapper, built by webhook/native/build.sh and run for real.

The exec'd program is a tiny static C probe compiled here: it reports its exact argv, environment,
RLIMIT_CORE, coredump_filter, open fds and signal state, so nothing is inferred from a shell.
Root tests run the wrapper in an empty chroot (no shell, no libc) and inside a real runc container.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.native_support import PROBE_C, parse_probe, read_frames
from tests.runc_support import busybox_rootfs, remove_cgroup_dirs
from tests.suite_support import which_or_fail
from webhook.constants import (
    ENV_COREDUMP_FILTER,
    ENV_WRAPPER_DEBUG,
    WRAPPER_CAT_FLAG,
    WRAPPER_INSTALL_FLAG,
    WRAPPER_LIST_FLAG,
)

UNLIMITED = "unlimited"


@pytest.fixture(scope="session")
def wrapper(bin_dir) -> Path:
    path = bin_dir / "coredump-wrapper"
    assert os.access(path, os.X_OK), "build.sh must produce coredump-wrapper"
    return path


@pytest.fixture(scope="session")
def probe(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("probe")
    (d / "probe.c").write_text(PROBE_C)
    subprocess.run([which_or_fail("gcc"), "-static", "-Os", "-o", str(d / "probe"), str(d / "probe.c")], check=True)
    return d / "probe"


def run(args, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], env=env if env is not None else os.environ.copy(),
                          capture_output=True, text=True, timeout=30, **kw)


def has_cap_sys_resource() -> bool:
    status = Path("/proc/self/status").read_text()
    eff = int(re.search(r"^CapEff:\s*([0-9a-f]+)", status, re.M).group(1), 16)
    return bool(eff & (1 << 24))


# --- argv, environment, exit codes -------------------------------------------------------------
def test_execs_the_original_argv_exactly(wrapper, probe):
    args = ["a b", "", "ünïcödé ✓", "--coredump-install", "$(HOME)", "*", "-", "x\ty"]
    res = run([wrapper, probe, *args])
    assert res.returncode == 0, res.stderr
    assert parse_probe(res.stdout)["args"] == [str(probe), *args]
    assert res.stderr == ""


def test_environment_and_process_state_are_untouched(wrapper, probe):
    env = {"PATH": "/usr/bin:/bin", "ODD": "a=b=c", "EMPTY": "", "UNI": "ü", ENV_COREDUMP_FILTER: "0x33"}
    direct = parse_probe(run([probe], env=env).stdout)
    wrapped = parse_probe(run([wrapper, probe], env=env).stdout)
    assert wrapped["env"] == env == direct["env"]
    assert wrapped["fds"] == direct["fds"] == [0, 1, 2]
    assert (wrapped["SigBlk"], wrapped["SigIgn"]) == (direct["SigBlk"], direct["SigIgn"])


def test_inherited_signal_state_and_fds_pass_through(wrapper, probe):
    """What the runtime gave the container (an ignored signal, an extra fd) reaches the program."""
    r, w = os.pipe()
    try:
        def pre():
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        res = run([wrapper, probe], preexec_fn=pre, pass_fds=(w,))
    finally:
        os.close(r)
        os.close(w)
    got = parse_probe(res.stdout)
    assert w in got["fds"] and len(got["fds"]) == 4
    assert int(got["SigIgn"], 16) & (1 << (signal.SIGHUP - 1))


def test_exit_code_is_the_programs(wrapper, probe):
    assert run([wrapper, probe, "exit=42"]).returncode == 42
    assert run([wrapper, probe, "exit=0"]).returncode == 0
    res = run([wrapper, "sh", "-c", "kill -TERM $$"])
    assert res.returncode == -signal.SIGTERM  # the wrapper is gone: the signal hits the program itself


def test_path_search(wrapper, probe, tmp_path):
    bad, good = tmp_path / "bad", tmp_path / "good"
    bad.mkdir()
    good.mkdir()
    (bad / "tool").write_text("not executable")
    shutil.copy(probe, good / "tool")
    (bad / "dir-tool").mkdir()
    env = {"PATH": f"/nonexistent:{bad}:{good}"}
    res = run([wrapper, "tool", "x"], env=env)
    assert res.returncode == 0, res.stderr
    assert parse_probe(res.stdout)["args"] == ["tool", "x"]  # argv[0] as given, like execvp and runc
    # an empty PATH element is the current directory (runc's and Go's rule)
    res = run([wrapper, "tool"], env={"PATH": "/nonexistent::"}, cwd=good)
    assert res.returncode == 0 and parse_probe(res.stdout)["args"] == ["tool"]
    # PATH unset: the OCI default, so /usr/bin/true is found and our probe is not
    assert run([wrapper, "true"], env={}).returncode == 0
    res = run([wrapper, "tool"], env={}, cwd=good)
    assert res.returncode == 127


def test_exec_failures_exit_like_a_shell(wrapper, tmp_path):
    res = run([wrapper, "no-such-program-here", "arg"])
    assert (res.returncode, res.stdout) == (127, "")
    assert res.stderr == "coredump-wrapper: exec no-such-program-here: No such file or directory\n"
    res = run([wrapper, tmp_path / "missing"])
    assert res.returncode == 127 and "No such file or directory" in res.stderr
    plain = tmp_path / "plain"
    plain.write_text("data")
    plain.chmod(0o644)
    res = run([wrapper, plain])
    assert res.returncode == 126
    assert res.stderr == f"coredump-wrapper: exec {plain}: Permission denied\n"
    res = run([wrapper, "plain"], env={"PATH": str(tmp_path)})  # found in PATH but not executable
    assert res.returncode == 126 and "Permission denied" in res.stderr
    assert run([wrapper, tmp_path]).returncode == 126  # a directory
    res = run([wrapper, ""])
    assert res.returncode == 127 and res.stderr == "coredump-wrapper: exec : No such file or directory\n"


def test_c_names_match_the_python_contract():
    from webhook import constants as C

    source = (Path(__file__).parent.parent / "webhook/native/coredump-wrapper.c").read_text()
    for name in ("WRAPPER_INSTALL_FLAG", "WRAPPER_LIST_FLAG", "WRAPPER_CAT_FLAG", "WRAPPER_LIST_MAGIC",
                 "ENV_COREDUMP_FILTER", "ENV_WRAPPER_DEBUG"):
        assert f'#define {name} "{getattr(C, name)}"' in source


def test_no_arguments_prints_usage(wrapper):
    res = run([wrapper])
    assert res.returncode == 2
    assert "usage: coredump-wrapper PROGRAM [ARGS...]" in res.stderr and WRAPPER_INSTALL_FLAG in res.stderr
    assert WRAPPER_LIST_FLAG in res.stderr and WRAPPER_CAT_FLAG in res.stderr
    assert run([wrapper, WRAPPER_INSTALL_FLAG]).returncode == 2
    assert run([wrapper, WRAPPER_LIST_FLAG]).returncode == 2
    assert run([wrapper, WRAPPER_CAT_FLAG]).returncode == 2
    assert run([wrapper, WRAPPER_CAT_FLAG, "f", "0", "extra"]).returncode == 2


# --- RLIMIT_CORE and coredump_filter -----------------------------------------------------------
@pytest.fixture
def world_readable_dir():
    """pytest's tmp dirs are private to root; the unprivileged user needs to reach the binaries."""
    d = Path(tempfile.mkdtemp(prefix="coredump-wrapper-test-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d)


def test_raises_soft_limit_to_hard_as_an_unprivileged_user(wrapper, probe, world_readable_dir):
    prlimit = which_or_fail("prlimit")
    p, w = world_readable_dir / "probe", world_readable_dir / "w"
    shutil.copy(probe, p)
    shutil.copy(wrapper, w)
    cmd = [prlimit, "--core=0:1048576", w, p]
    if os.geteuid() == 0:
        cmd = [which_or_fail("setpriv"), "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    res = run(cmd, env={"PATH": "/usr/bin:/bin", ENV_WRAPPER_DEBUG: "1"})
    assert res.returncode == 0, res.stderr
    assert parse_probe(res.stdout)["core"] == ("1048576", "1048576")
    assert "hard limit stays 1048576: no CAP_SYS_RESOURCE" in res.stderr
    # quiet without the debug variable
    res = run(cmd, env={"PATH": "/usr/bin:/bin"})
    assert res.stderr == "" and parse_probe(res.stdout)["core"] == ("1048576", "1048576")


def test_unlimited_hard_limit_gives_unlimited_soft(wrapper, probe):
    res = run([which_or_fail("prlimit"), "--core=0:unlimited", wrapper, probe])
    assert parse_probe(res.stdout)["core"] == (UNLIMITED, UNLIMITED)


@pytest.mark.root
def test_as_root_raises_both_limits_where_permitted(wrapper, probe):
    """With CAP_SYS_RESOURCE both limits become unlimited; without it (this VM's root lacks it)
    the hard limit stays and only the soft one rises: either way the wrapper never fails."""
    res = run([which_or_fail("prlimit"), "--core=0:4096", wrapper, probe], env={ENV_WRAPPER_DEBUG: "1"})
    assert res.returncode == 0
    core = parse_probe(res.stdout)["core"]
    if has_cap_sys_resource():
        assert core == (UNLIMITED, UNLIMITED)
        assert "no CAP_SYS_RESOURCE" not in res.stderr
    else:
        assert core == ("4096", "4096")
        assert "no CAP_SYS_RESOURCE" in res.stderr


@pytest.mark.parametrize("value,expected", [("0x3f", 0x3F), ("0X7F", 0x7F), ("51", 0x33), (" 0x1ff\n", 0x1FF), ("0", 0)])
def test_writes_coredump_filter(wrapper, probe, value, expected):
    res = run([wrapper, probe], env={ENV_COREDUMP_FILTER: value})
    assert res.returncode == 0 and res.stderr == ""
    got = parse_probe(res.stdout)
    assert got["filter"] == expected
    assert got["env"][ENV_COREDUMP_FILTER] == value  # the variable itself is left as it was


@pytest.mark.parametrize("value", ["zz", "0x", "-1", "0x100000000", "4294967296", "1.5", "0x3f,0x1"])
def test_bad_coredump_filter_warns_and_runs_anyway(wrapper, probe, value):
    before = int(Path("/proc/self/coredump_filter").read_text(), 16)
    res = run([wrapper, probe, "exit=3"], env={ENV_COREDUMP_FILTER: value})
    assert res.returncode == 3
    assert f'coredump-wrapper: warning: ignoring {ENV_COREDUMP_FILTER}="{value}"' in res.stderr
    assert parse_probe(res.stdout)["filter"] == before


# --- install mode ------------------------------------------------------------------------------
def test_install_copies_itself_atomically(wrapper, probe, tmp_path):
    dest = tmp_path / "shared" / "nested" / "coredump-wrapper"
    res = run([wrapper, WRAPPER_INSTALL_FLAG, dest])
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "")
    assert dest.read_bytes() == wrapper.read_bytes()
    assert dest.stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in dest.parent.iterdir()) == ["coredump-wrapper"]  # no .tmp left
    # the copy is a working wrapper, and installing over an existing file replaces it
    assert parse_probe(run([dest, probe, "ok"]).stdout)["args"] == [str(probe), "ok"]
    dest.write_text("old")
    assert run([wrapper, WRAPPER_INSTALL_FLAG, dest]).returncode == 0
    assert dest.read_bytes() == wrapper.read_bytes()


def test_install_errors(wrapper, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    res = run([wrapper, WRAPPER_INSTALL_FLAG, blocker / "sub" / "w"])
    assert res.returncode == 1 and "install: creating the directory" in res.stderr
    res = run([wrapper, WRAPPER_INSTALL_FLAG, ""])
    assert res.returncode == 1 and "bad destination" in res.stderr
    res = run([wrapper, WRAPPER_INSTALL_FLAG, tmp_path])  # a directory cannot be replaced by a file
    assert res.returncode == 1 and "rename" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# --- read-only service modes: --coredump-list and --coredump-cat -------------------------------


def list_dirs(wrapper, *dirs) -> dict[bytes, tuple[str, bytes]]:
    res = subprocess.run([str(wrapper), WRAPPER_LIST_FLAG, *map(str, dirs)], capture_output=True, timeout=30)
    assert (res.returncode, res.stderr) == (0, b""), res.stderr
    frames = read_frames(res.stdout)
    by_path = {p: (k, b) for k, p, b in frames}
    assert len(by_path) == len(frames)
    return by_path


@pytest.fixture
def cores_tree(tmp_path):
    """A core directory with everything a listing must get right or refuse."""
    d = tmp_path / "cores"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.json").write_text('{"secret": 1}')
    (outside / "core.x").write_bytes(b"outside core")
    nested = d / "a" / "b c" / "line\nbreak"
    nested.mkdir(parents=True)
    files = {
        d / "core.1.json": b'{"sha256": "1", "size": 4}',
        nested / "core two\nlines.json": b'{"n": "deep"}',
        d / "no-core.json": b'{"n": "metadata whose core was deleted"}',
        d / "core.1": b"core",
        nested / "core two\nlines": b"core 2",
        d / "notes.txt": b"not metadata",
        d / "empty.json": b"",
    }
    for path, data in files.items():
        path.write_bytes(data)
    (d / "linked-core.json").write_text('{"n": "its core is a symlink"}')
    (d / "linked-core").symlink_to(outside / "core.x")
    (d / "to-outside").symlink_to(outside, target_is_directory=True)
    (d / "secret.json").symlink_to(outside / "secret.json")
    os.mkfifo(d / "fifo.json")
    (d / "big.json").write_bytes(b"{" + b" " * (1 << 20) + b"}")
    (d / "dir.json").mkdir()
    (d / "dir.json" / "inner.json").write_text("{}")
    deep = d.joinpath(*[f"l{i}" for i in range(1, 9)])  # files at depth 8 are listed, at 9 not
    deep.mkdir(parents=True)
    (deep.parent / "depth8.json").write_text("{}")
    (deep / "depth9.json").write_text("{}")
    return d, outside


def test_list_mode_walks_without_following_links(wrapper, cores_tree):
    d, outside = cores_tree
    got = list_dirs(wrapper, d)
    p = lambda rel: (str(d) + "/" + rel).encode()  # noqa: E731
    deep8 = "/".join(f"l{i}" for i in range(1, 8)) + "/depth8.json"
    assert got == {
        p("core.1.json"): ("present", b'{"sha256": "1", "size": 4}'),
        p("a/b c/line\nbreak/core two\nlines.json"): ("present", b'{"n": "deep"}'),
        p("no-core.json"): ("missing", b'{"n": "metadata whose core was deleted"}'),
        p("empty.json"): ("missing", b""),
        p("linked-core.json"): ("missing", b'{"n": "its core is a symlink"}'),
        p("dir.json/inner.json"): ("missing", b"{}"),
        p(deep8): ("missing", b"{}"),
        p("big.json"): ("error", b"larger than 1048576 bytes: not metadata, skipped"),
    }
    assert not any(b"secret" in body or b"outside" in path or b"fifo" in path for path, (_, body) in got.items())
    # several directories, a trailing slash, a missing one (no cores yet) and one that is a link
    (outside.parent / "link-to-cores").symlink_to(d)
    again = list_dirs(wrapper, str(d / "a") + "/", outside.parent / "nope", outside.parent / "link-to-cores")
    assert again == {
        p("a/b c/line\nbreak/core two\nlines.json"): ("present", b'{"n": "deep"}'),
        str(outside.parent / "link-to-cores").encode(): ("error", b"a symbolic link: not followed"),
    }
    assert list_dirs(wrapper, outside.parent / "nope") == {}


def test_list_mode_output_parses_in_listing_py(wrapper, cores_tree):
    from webhook.inspect.listing import listing_entries

    d, _ = cores_tree
    out = subprocess.run([str(wrapper), WRAPPER_LIST_FLAG, str(d)], capture_output=True, check=True).stdout
    entries, problems = listing_entries(out)
    assert problems == [] and len(entries) == 8
    assert (str(d) + "/a/b c/line\nbreak/core two\nlines.json", "present", '{"n": "deep"}') in entries


def test_list_mode_reports_what_it_cannot_read(wrapper, world_readable_dir):
    """Unreadable files and directories become error records; the rest is still listed."""
    d = world_readable_dir / "cores"
    (d / "locked").mkdir(parents=True)
    (d / "locked" / "hidden.json").write_text("{}")
    (d / "ok.json").write_text('{"ok": 1}')
    (d / "closed.json").write_text("{}")
    for path, mode in ((d, 0o755), (d / "ok.json", 0o644), (d / "closed.json", 0o000), (d / "locked", 0o000)):
        path.chmod(mode)
    w = world_readable_dir / "w"
    shutil.copy(wrapper, w)
    cmd = [str(w), WRAPPER_LIST_FLAG, str(d)]
    if os.geteuid() == 0:
        cmd = [which_or_fail("setpriv"), "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    res = subprocess.run(cmd, capture_output=True, timeout=30)
    assert (res.returncode, res.stderr) == (0, b"")
    got = {p: (k, b) for k, p, b in read_frames(res.stdout)}
    assert got == {
        f"{d}/ok.json".encode(): ("missing", b'{"ok": 1}'),
        f"{d}/closed.json".encode(): ("error", b"open: Permission denied"),
        f"{d}/locked".encode(): ("error", b"open directory: Permission denied"),
    }
    (d / "locked").chmod(0o755)  # let the fixture clean up


@pytest.fixture
def blob(tmp_path) -> tuple[Path, bytes]:
    data = os.urandom(3 << 20) + bytes(12345)
    path = tmp_path / "core.blob"
    path.write_bytes(data)
    return path, data


@pytest.mark.parametrize("offset", [None, 0, 1, 1 << 20, (3 << 20) + 12344, (3 << 20) + 12345, 10**12])
def test_cat_mode_from_offsets(wrapper, blob, offset):
    path, data = blob
    args = [str(wrapper), WRAPPER_CAT_FLAG, str(path)] + ([] if offset is None else [str(offset)])
    res = subprocess.run(args, capture_output=True, timeout=30)  # stdout is a pipe
    assert (res.returncode, res.stderr) == (0, b"")
    assert res.stdout == data[offset or 0:]


def test_cat_mode_into_files_including_append_mode(wrapper, blob, tmp_path):
    """sendfile to a regular file, and the read/write fallback where sendfile refuses (O_APPEND)."""
    path, data = blob
    plain = tmp_path / "plain"
    with open(plain, "wb") as f:
        assert subprocess.run([str(wrapper), WRAPPER_CAT_FLAG, str(path), "100"], stdout=f, timeout=30).returncode == 0
    assert plain.read_bytes() == data[100:]
    appended = tmp_path / "appended"
    appended.write_bytes(b"head:")
    with open(appended, "ab") as f:
        res = subprocess.run([str(wrapper), WRAPPER_CAT_FLAG, str(path), "7"], stdout=f, stderr=subprocess.PIPE, timeout=30)
    assert (res.returncode, res.stderr) == (0, b"")
    assert appended.read_bytes() == b"head:" + data[7:]


def test_cat_mode_refuses_links_and_special_files(wrapper, blob, tmp_path):
    path, _ = blob
    link = tmp_path / "core.link"
    link.symlink_to(path)
    fifo = tmp_path / "core.fifo"
    os.mkfifo(fifo)
    cases = {
        link: f"coredump-wrapper: cat {link}: a symbolic link: refused\n",
        fifo: f"coredump-wrapper: cat {fifo}: not a regular file: refused\n",  # and no hang on open
        tmp_path: f"coredump-wrapper: cat {tmp_path}: not a regular file: refused\n",
        tmp_path / "gone": f"coredump-wrapper: cat {tmp_path / 'gone'}: No such file or directory\n",
    }
    for target, message in cases.items():
        res = run([wrapper, WRAPPER_CAT_FLAG, target, "0"])
        assert (res.returncode, res.stdout, res.stderr) == (1, "", message)
    # a link in a parent directory is the container's own business (only the last component counts)
    via_dir = tmp_path / "dirlink"
    via_dir.symlink_to(tmp_path, target_is_directory=True)
    assert subprocess.run([str(wrapper), WRAPPER_CAT_FLAG, str(via_dir / path.name), "3145728"],
                          capture_output=True).stdout == bytes(12345)
    for bad in ("-1", "x", "", "1e3", "99999999999999999999", " 5"):
        res = run([wrapper, WRAPPER_CAT_FLAG, path, bad])
        assert res.returncode == 2 and "bad offset" in res.stderr and res.stdout == ""


# --- no shell, no libc: chroot -----------------------------------------------------------------
def _empty_root(tmp_path: Path, wrapper: Path) -> Path:
    root = tmp_path / "root"
    (root / "w").mkdir(parents=True)
    shutil.copy(wrapper, root / "w" / "coredump-wrapper")
    return root


@pytest.mark.root
def test_chroot_with_only_busybox(wrapper, tmp_path):
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        busybox = Path(which_or_fail("busybox"))
    root = _empty_root(tmp_path, wrapper)
    (root / "bin").mkdir()
    shutil.copy(busybox, root / "bin" / "busybox")
    assert not (root / "bin" / "sh").exists() and not (root / "lib").exists()
    chroot = which_or_fail("chroot")
    res = run([chroot, root, "/w/coredump-wrapper", "/bin/busybox", "true"], env={})
    assert (res.returncode, res.stderr) == (0, "")
    res = run([which_or_fail("prlimit"), "--core=0:unlimited", chroot, root, "/w/coredump-wrapper",
               "busybox", "sh", "-c", "ulimit -c; exit 7"], env={"PATH": "/bin"})
    assert (res.returncode, res.stdout) == (7, "unlimited\n"), res.stderr
    res = run([chroot, root, "/w/coredump-wrapper", "sh", "-c", "true"], env={"PATH": "/bin"})
    assert res.returncode == 127 and "exec sh: No such file or directory" in res.stderr


@pytest.mark.root
def test_chroot_without_any_shell_or_proc(wrapper, probe, tmp_path):
    root = _empty_root(tmp_path, wrapper)
    shutil.copy(probe, root / "probe")
    assert sorted(p.name for p in root.iterdir()) == ["probe", "w"]
    res = run([which_or_fail("prlimit"), "--core=0:8192", which_or_fail("chroot"), root,
               "/w/coredump-wrapper", "/probe", "a b", "", "exit=5"], env={ENV_COREDUMP_FILTER: "0x3f"})
    assert res.returncode == 5
    got = parse_probe(res.stdout)
    assert got["args"] == ["/probe", "a b", "", "exit=5"]
    assert got["core"][0] == got["core"][1]
    # no /proc in this root: the filter cannot be written, which is a warning and not a failure
    assert "warning: open /proc/self/coredump_filter: No such file or directory" in res.stderr
    # install mode falls back to the path it was run from when /proc/self/exe is unavailable
    res = run([which_or_fail("chroot"), root, "/w/coredump-wrapper", WRAPPER_INSTALL_FLAG, "/shared/coredump-wrapper"])
    assert res.returncode == 0, res.stderr
    assert (root / "shared" / "coredump-wrapper").read_bytes() == wrapper.read_bytes()


@pytest.mark.root
def test_chroot_list_and_cat_without_any_shell(wrapper, tmp_path):
    """The service modes need nothing but the kernel: an empty root with the wrapper and cores."""
    root = _empty_root(tmp_path, wrapper)
    cores = root / "data" / "dump"
    (cores / "sub dir").mkdir(parents=True)
    data = os.urandom(70000)
    (cores / "sub dir" / "core.9").write_bytes(data)
    (cores / "sub dir" / "core.9.json").write_text('{"size": 70000}')
    (cores / "escape").symlink_to("/", target_is_directory=True)  # "/" is the chroot: still not followed
    assert sorted(p.name for p in root.iterdir()) == ["data", "w"]
    chroot = which_or_fail("chroot")
    res = subprocess.run([chroot, str(root), "/w/coredump-wrapper", WRAPPER_LIST_FLAG, "/data/dump"],
                         capture_output=True, env={}, timeout=30)
    assert (res.returncode, res.stderr) == (0, b"")
    assert read_frames(res.stdout) == [("present", b"/data/dump/sub dir/core.9.json", b'{"size": 70000}')]
    res = subprocess.run([chroot, str(root), "/w/coredump-wrapper", WRAPPER_CAT_FLAG, "/data/dump/sub dir/core.9", "1000"],
                         capture_output=True, env={}, timeout=30)
    assert (res.returncode, res.stdout) == (0, data[1000:]), res.stderr
    res = run([chroot, root, "/w/coredump-wrapper", WRAPPER_CAT_FLAG, "/data/dump/escape"], env={})
    assert res.returncode == 1 and "a symbolic link: refused" in res.stderr


# --- a real OCI container ----------------------------------------------------------------------
@pytest.mark.root
def test_runc_container_sees_the_raised_limit(wrapper, tmp_path):
    runc = which_or_fail("runc")
    bundle = tmp_path / "bundle"
    busybox_rootfs(bundle / "rootfs")
    subprocess.run([runc, "spec"], cwd=bundle, check=True)
    spec = json.loads((bundle / "config.json").read_text())
    container_id = "cdw-wrapper-" + uuid.uuid4().hex[:12]
    cgroup = f"/coredump-webhook-tests/{container_id}"
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["/.coredump-webhook/coredump-wrapper", "sh", "-c",
                               "grep 'Max core' /proc/self/limits; cat /proc/self/coredump_filter; exit 3"]
    spec["process"]["env"] = ["PATH=/bin", f"{ENV_COREDUMP_FILTER}=0x3f"]
    spec["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024},
                                  {"type": "RLIMIT_CORE", "hard": 18446744073709551615, "soft": 0}]
    spec["root"]["readonly"] = True
    spec["mounts"].append({"destination": "/.coredump-webhook", "type": "bind", "source": str(wrapper.parent),
                           "options": ["rbind", "ro"]})
    spec["linux"]["cgroupsPath"] = cgroup
    (bundle / "config.json").write_text(json.dumps(spec))
    try:
        res = run([runc, "run", "-b", bundle, container_id])
    finally:
        subprocess.run([runc, "delete", "-f", container_id], capture_output=True)
        remove_cgroup_dirs(cgroup)  # runc leaves the empty cgroup directories behind
    assert res.returncode == 3, res.stderr
    lines = res.stdout.splitlines()
    assert re.match(r"Max core file size\s+unlimited\s+unlimited\s+bytes", lines[0]), res.stdout
    assert lines[1] == "0000003f"
    assert not any(Path(r, cgroup.strip("/")).exists() for r in Path("/sys/fs/cgroup").iterdir())
