"""The arm64 build of the static wrapper and helper, run for real under qemu-user-static.

``webhook/native/build.sh OUT --arch arm64`` cross-compiles with Debian's aarch64 toolchain;
the binaries then run under ``qemu-aarch64-static`` (see tests/arm64_support.py): the wrapper
execs the original argv of an arm64 program, raises what it may exactly as the x86_64 build
does, works in an empty chroot and serves its list/cat modes; the helper hands a core to the
real AgentServer over SCM_RIGHTS and spools when no agent listens. ``QEMU_LOG=unimp`` makes
qemu report any system call it does not implement: every test asserts there was none.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.arm64_support import EM_AARCH64, EM_X86_64, QEMU, binfmt_command, elf_machine
from tests.helper_support import ARGV, CORE, Recorder, log_lines, settings_for, spool_entries
from tests.native_support import PROBE_C, is_static_elf, parse_probe, read_frames
from tests.suite_support import REPO, which_or_fail
from webhook.agent import creds, syscalls
from webhook.constants import ENV_COREDUMP_FILTER, WRAPPER_CAT_FLAG, WRAPPER_INSTALL_FLAG, WRAPPER_LIST_FLAG
from webhook.inspect.listing import listing_entries

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

#: What qemu prints (with QEMU_LOG=unimp) for a system call it lacks.
UNIMPLEMENTED = re.compile(r"^.*(?:Unsupported syscall|Unsupported ioctl|unimplemented).*$", re.M)
#: The one system call qemu 7.2 lacks that these binaries make: rseq (aarch64 number 293).
#: glibc 2.36 registers it at start-up and carries on without it when it gets ENOSYS, so nothing
#: needs working around (GLIBC_TUNABLES=glibc.pthread.rseq=0 would skip the attempt).
TOLERATED = {"Unsupported syscall: 293"}


def unimplemented(stderr: bytes) -> list[str]:
    """qemu's reports of system calls it lacks, other than the tolerated rseq."""
    return [m for m in UNIMPLEMENTED.findall(stderr.decode(errors="replace")) if m.strip() not in TOLERATED]


@pytest.fixture(scope="module")
def qemu() -> str:
    return which_or_fail(QEMU)


@pytest.fixture(scope="module")
def arm_probe(tmp_path_factory) -> Path:
    """tests/test_wrapper.py's probe (argv, env, RLIMIT_CORE, filter, fds), built for arm64."""
    d = tmp_path_factory.mktemp("arm-probe")
    (d / "probe.c").write_text(PROBE_C)
    cc = which_or_fail("aarch64-linux-gnu-gcc")
    subprocess.run([cc, "-static", "-Os", "-o", str(d / "probe"), str(d / "probe.c")], check=True)
    assert elf_machine(d / "probe") == EM_AARCH64
    return d / "probe"


@pytest.fixture(scope="module")
def host_probe(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("host-probe")
    (d / "probe.c").write_text(PROBE_C)
    subprocess.run([which_or_fail("gcc"), "-static", "-Os", "-o", str(d / "probe"), str(d / "probe.c")], check=True)
    return d / "probe"


def run(argv, **kw) -> subprocess.CompletedProcess:
    env = kw.pop("env", {})
    res = subprocess.run([str(a) for a in argv], capture_output=True, timeout=60,
                         env={"QEMU_LOG": "unimp", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env}, **kw)
    assert unimplemented(res.stderr) == [], "qemu lacks a system call"
    res.stderr = UNIMPLEMENTED.sub("", res.stderr.decode(errors="replace")).strip("\n").encode()
    return res


# --- the build ---------------------------------------------------------------------------------
def test_build_script_makes_static_binaries_for_each_architecture(tmp_path, arm64_bin_dir, bin_dir):
    for name in ("coredump-wrapper", "coredump-helper"):
        assert elf_machine(arm64_bin_dir / name) == EM_AARCH64 and is_static_elf(arm64_bin_dir / name)
        assert elf_machine(bin_dir / name) == EM_X86_64 and is_static_elf(bin_dir / name)
    # the names Docker (TARGETARCH) and uname use both work; anything else is refused clearly
    for arch, machine in (("aarch64", EM_AARCH64), ("x86_64", EM_X86_64), ("amd64", EM_X86_64)):
        out = tmp_path / arch
        res = subprocess.run(["sh", str(REPO / "webhook/native/build.sh"), str(out), "--arch", arch],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        assert elf_machine(out / "coredump-helper") == machine
    res = subprocess.run(["sh", str(REPO / "webhook/native/build.sh"), str(tmp_path / "x"), "--arch", "mips"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "unsupported architecture 'mips'" in res.stderr
    # a compiler for the wrong machine is caught by the ELF check, not shipped
    res = subprocess.run(["sh", str(REPO / "webhook/native/build.sh"), str(tmp_path / "y"), "--arch", "arm64"],
                         capture_output=True, text=True, env={**os.environ, "CC": "gcc"})
    assert res.returncode == 1 and "not arm64" in res.stderr and not (tmp_path / "y" / "coredump-helper").exists()


# --- the wrapper ---------------------------------------------------------------------------------
def test_wrapper_execs_the_original_argv_of_an_arm64_program(qemu, arm64_bin_dir, arm_probe):
    args = ["a b", "", "ünïcödé ✓", "--coredump-install", "$(HOME)", "x\ty", "exit=9"]
    res = run(binfmt_command(qemu, ["prlimit", "--core=0:8192", str(arm64_bin_dir / "coredump-wrapper"),
                                    str(arm_probe), *args]),
              env={ENV_COREDUMP_FILTER: "0x3f", "ODD": "a=b"})
    assert res.returncode == 9, res.stderr
    got = parse_probe(res.stdout.decode())
    assert got["args"] == [str(arm_probe), *args]
    assert got["core"] == ("8192", "8192")  # soft raised to hard; hard stays (no CAP_SYS_RESOURCE in the userns)
    assert got["filter"] == 0x3F
    assert got["env"]["ODD"] == "a=b" and got["env"][ENV_COREDUMP_FILTER] == "0x3f"
    assert got["env"]["QEMU_LOG"] == "unimp"  # the environment passes through untouched
    res = run(binfmt_command(qemu, ["env", "PATH=/nonexistent", str(arm64_bin_dir / "coredump-wrapper"),
                                    "no-such-program"]))
    assert res.returncode == 127 and b"exec no-such-program: No such file or directory" in res.stderr


def test_wrapper_raises_the_limits_exactly_as_the_x86_64_build(qemu, arm64_bin_dir, bin_dir, host_probe):
    """As real root (CAP_SYS_RESOURCE where the machine grants it): the same limits either way."""
    prlimit = which_or_fail("prlimit")
    native = run([prlimit, "--core=0:4096", bin_dir / "coredump-wrapper", host_probe])
    emulated = run([prlimit, "--core=0:4096", qemu, arm64_bin_dir / "coredump-wrapper", host_probe])
    assert native.returncode == emulated.returncode == 0, emulated.stderr
    n, e = parse_probe(native.stdout.decode()), parse_probe(emulated.stdout.decode())
    assert e["core"] == n["core"] and e["core"][0] == e["core"][1]  # soft raised to (possibly unlimited) hard
    assert e["args"] == n["args"] == [str(host_probe)]


def test_wrapper_in_an_empty_chroot(qemu, arm64_bin_dir, arm_probe, tmp_path):
    root = tmp_path / "root"
    (root / "w").mkdir(parents=True)
    shutil.copy(arm64_bin_dir / "coredump-wrapper", root / "w" / "coredump-wrapper")
    shutil.copy(arm_probe, root / "probe")
    res = run(binfmt_command(qemu, ["prlimit", "--core=0:unlimited", "chroot", str(root),
                                    "/w/coredump-wrapper", "/probe", "a b", "", "exit=5"]))
    assert res.returncode == 5, res.stderr
    got = parse_probe(res.stdout.decode())
    assert got["args"] == ["/probe", "a b", "", "exit=5"] and got["core"] == ("unlimited", "unlimited")
    # the init container's job: copy itself (the arm64 binary, not qemu) where targets exec it
    res = run(binfmt_command(qemu, ["chroot", str(root), "/w/coredump-wrapper", WRAPPER_INSTALL_FLAG,
                                    "/shared/coredump-wrapper"]))
    assert res.returncode == 0, res.stderr
    installed = root / "shared" / "coredump-wrapper"
    assert installed.read_bytes() == (arm64_bin_dir / "coredump-wrapper").read_bytes()
    assert os.stat(installed).st_mode & 0o777 == 0o755
    assert sorted(p.name for p in root.iterdir()) == ["probe", "shared", "w"]


def test_wrapper_list_and_cat_modes(qemu, arm64_bin_dir, tmp_path):
    root = tmp_path / "root"
    (root / "w").mkdir(parents=True)
    shutil.copy(arm64_bin_dir / "coredump-wrapper", root / "w" / "coredump-wrapper")
    cores = root / "data" / "dump"
    (cores / "sub dir").mkdir(parents=True)
    data = os.urandom((2 << 20) + 777)
    (cores / "sub dir" / "core.9").write_bytes(data)
    meta = b'{"size": %d, "path": "/data/dump/sub dir/core.9", "pid": 9, "signal": 11}' % len(data)
    (cores / "sub dir" / "core.9.json").write_bytes(meta)
    (cores / "gone.json").write_bytes(b'{"size": 1}')
    (cores / "escape").symlink_to("/", target_is_directory=True)
    res = run(binfmt_command(qemu, ["chroot", str(root), "/w/coredump-wrapper", WRAPPER_LIST_FLAG, "/data/dump"]))
    assert res.returncode == 0, res.stderr
    assert sorted(read_frames(res.stdout)) == [("missing", b"/data/dump/gone.json", b'{"size": 1}'),
                                              ("present", b"/data/dump/sub dir/core.9.json", meta)]
    entries, problems = listing_entries(res.stdout)  # the CLI's own parser reads it too
    assert problems == [] and sorted(e[:2] for e in entries) == [("/data/dump/gone.json", "missing"),
                                                                ("/data/dump/sub dir/core.9.json", "present")]
    for offset in (None, 0, 4097, len(data), len(data) + 10):
        extra = [] if offset is None else [str(offset)]
        res = run(binfmt_command(qemu, ["chroot", str(root), "/w/coredump-wrapper", WRAPPER_CAT_FLAG,
                                        "/data/dump/sub dir/core.9", *extra]))
        assert (res.returncode, res.stdout) == (0, data[offset or 0:]), res.stderr
    res = run(binfmt_command(qemu, ["chroot", str(root), "/w/coredump-wrapper", WRAPPER_CAT_FLAG, "/data/dump/escape"]))
    assert res.returncode == 1 and b"a symbolic link: refused" in res.stderr


# --- the helper ----------------------------------------------------------------------------------
@pytest.fixture
def arm_host(arm64_bin_dir):
    d = Path(tempfile.mkdtemp(prefix="cda-"))  # short: the agent's socket path has a length limit
    shutil.copy2(arm64_bin_dir / "coredump-helper", d / "coredump-helper")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def run_arm_helper(qemu: str, host: Path, core: bytes, argv: list[str] = ARGV) -> subprocess.CompletedProcess:
    """As the kernel runs it: absolute argv[0], the arguments, the core on a pipe, cwd /."""
    proc = subprocess.Popen([qemu, str(host / "coredump-helper"), *argv], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/", env={"QEMU_LOG": "unimp"})
    out, err = proc.communicate(core, timeout=60)
    assert unimplemented(err) == [], "qemu lacks a system call"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_helper_spools_with_its_arguments_when_no_agent_listens(qemu, arm_host):
    res = run_arm_helper(qemu, arm_host, CORE)
    assert res.returncode == 0, res.stderr
    (entry,) = spool_entries(arm_host)  # HOSTDIR found from argv[0], as on the node
    assert entry.name.endswith("-4242")
    assert (entry / "args").read_bytes() == b"\0".join(a.encode() for a in ARGV) + b"\0"
    assert (entry / "core").read_bytes() == CORE
    assert "agent unreachable: connect: No such file or directory" in (entry / "reason").read_text()
    assert "result=spooled pid=4242" in log_lines(arm_host)[-1]


def test_helper_hands_the_core_to_the_agent(qemu, arm_host, serve):  # noqa: F811
    rec = Recorder()
    serve(settings_for(arm_host), rec)
    res = run_arm_helper(qemu, arm_host, CORE)
    assert res.returncode == 0, res.stderr
    deadline = time.monotonic() + 10
    while not rec.seen and time.monotonic() < deadline:
        time.sleep(0.05)
    ((req, data),) = rec.seen
    assert req.argv == ARGV and not req.spooled and data == CORE  # the fd passed with SCM_RIGHTS
    (line,) = log_lines(arm_host)
    assert "result=handed pid=4242" in line and 'comm="crash me"' in line
    assert spool_entries(arm_host) == []


# --- the agent's raw system calls ---------------------------------------------------------------
@pytest.mark.parametrize("machine,cc", [("x86_64", "gcc"), ("aarch64", "aarch64-linux-gnu-gcc")])
def test_agent_syscall_numbers_match_each_architectures_kernel_headers(machine, cc, tmp_path):
    """The numbers the agent passes to syscall(2) (openat2, setgroups, setfsuid, setfsgid) are
    the ones that architecture's <asm/unistd.h> defines, read by its own compiler."""
    names = sorted(syscalls.TABLE[machine])
    src = tmp_path / "nr.c"
    src.write_text("#include <sys/syscall.h>\n" + "".join(f"nr {n} SYS_{n}\n" for n in names))
    res = subprocess.run([which_or_fail(cc), "-E", "-P", str(src)], capture_output=True, text=True, check=True)
    from_headers = {ln.split()[1]: int(ln.split()[2]) for ln in res.stdout.splitlines() if ln.startswith("nr ")}
    assert from_headers == syscalls.TABLE[machine]
    alias = {v: k for k, v in syscalls.ALIASES.items()}[machine]
    assert {n: syscalls.number(n, alias) for n in names} == from_headers
    assert creds.SYSCALLS[machine] == (from_headers["setgroups"], from_headers["setfsuid"], from_headers["setfsgid"])
    with pytest.raises(syscalls.UnsupportedArchitecture, match="riscv64"):
        syscalls.number("openat2", "riscv64")
