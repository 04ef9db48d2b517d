"""The signature unwinder's child (webhook/diagnose/unwind.py) and its C++ names (cxxnames.py).

The server and its child per core read a core a container made, with files the container
mapped: before they parse a byte they must be unprivileged and must never open a path (a
module's name in the core is the container's text). Both are observed here for real, with strace
over the server.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from tests.crash_support import build_programs, gdb_core
from tests.signature_support import libraries
from tests.suite_support import which_or_fail
from webhook.diagnose.cxxnames import load_demangler, short_name
from webhook.diagnose.unwind import NOBODY, FileRef
from webhook.diagnose.unwind_client import SERVER, Unwinder, UnwindError

PROGRAM = r"""
#include <signal.h>
static void crash_here(void) { raise(SIGSEGV); }
int main(void) { crash_here(); return 0; }
"""


@pytest.fixture(scope="module")
def small_core(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("unwind")
    exe = build_programs(out, {"small": PROGRAM})["small"]
    return exe, gdb_core(exe, out / "core.small")


def _open(exe: Path, core: Path) -> list[int]:
    return [os.open(p, os.O_RDONLY | os.O_CLOEXEC) for p in (core, exe, *libraries(exe))]


def _functions(unwinder: Unwinder, fds: list[int]) -> list[str]:
    files = [FileRef(fd) for fd in fds[2:]]
    return [f["function"] for f in unwinder.frames(fds[0], fds[1], files, timeout=60)]


def test_the_child_unwinds_unprivileged_and_opens_no_path(small_core: tuple[Path, Path], tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the drop to nobody is what root does")  # CI runs as root
    exe, core = small_core
    trace = tmp_path / "trace"
    strace = [which_or_fail("strace"), "-f", "-o", str(trace), "-e",
              "trace=open,openat,openat2,setresuid,setresgid,prctl,connect,fork,clone,clone3"]
    unwinder = Unwinder(command=[*strace, *SERVER])
    fds = _open(exe, core)
    try:
        functions = _functions(unwinder, fds)
    finally:
        unwinder.close()
        for fd in fds:
            os.close(fd)
    assert functions.index("crash_here") < functions.index("main"), functions
    lines = trace.read_text().splitlines()
    drop = next(i for i, ln in enumerate(lines) if re.search(rf"setresuid\({NOBODY}, {NOBODY}, {NOBODY}\)\s+= 0", ln))
    assert any(re.search(r"prctl\(PR_SET_NO_NEW_PRIVS, 1", ln) for ln in lines[drop:]), lines[drop:]
    assert any(re.search(r"\b(clone3?|fork)\(", ln) for ln in lines[drop:])  # a child for the core
    after = [ln for ln in lines[drop:] if re.search(r"\bopen(at2?)?\(", ln)]
    assert after == [], after  # everything it read was an fd it was given


def test_one_server_outlives_a_bad_core_and_its_own_death(small_core: tuple[Path, Path], tmp_path: Path) -> None:
    """A core the unwinder cannot read fails alone; the next core gets the same server; a server
    that is gone is started afresh."""
    exe, core = small_core
    junk = tmp_path / "core"
    junk.write_bytes(b"\x7fELF" + b"\0" * 60)
    unwinder = Unwinder(memory_bytes=256 << 20)
    fds = _open(exe, core)
    bad = os.open(junk, os.O_RDONLY)
    try:
        with pytest.raises(UnwindError):
            unwinder.frames(bad, -1, [], timeout=60)
        assert unwinder._proc is not None
        first = unwinder._proc.pid
        assert "crash_here" in _functions(unwinder, fds)
        assert unwinder._proc.pid == first  # the same server
        os.kill(first, signal.SIGKILL)
        unwinder._proc.wait(10)
        assert "crash_here" in _functions(unwinder, fds)
        assert unwinder._proc.pid != first
    finally:
        unwinder.close()
        os.close(bad)
        for fd in fds:
            os.close(fd)


def test_a_hung_unwinder_is_killed_with_its_child(tmp_path: Path) -> None:
    hang = tmp_path / "hang"
    hang.write_text("#!/bin/sh\nsleep 60 &\necho $! > " + str(tmp_path / "child") + "\nwait\n")
    hang.chmod(0o755)
    unwinder = Unwinder(command=[str(hang)])
    fd = os.open(hang, os.O_RDONLY)
    try:
        with pytest.raises(UnwindError, match="took more than 1s"):
            unwinder.frames(fd, -1, [], timeout=1)
    finally:
        os.close(fd)
        unwinder.close()
    child = int((tmp_path / "child").read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and os.path.exists(f"/proc/{child}") and \
            open(f"/proc/{child}/stat").read().split(") ")[1][0] != "Z":
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{child}") or open(f"/proc/{child}/stat").read().split(") ")[1][0] == "Z"


@pytest.mark.parametrize(("demangled", "short"), [
    ("ns::Obj::operator()(int*) const", "ns::Obj::operator()"),
    ("int ns::apply<ns::Obj>(ns::Obj const&, int*)", "ns::apply<ns::Obj>"),
    ("ns::X::operator bool()", "ns::X::operator bool"),
    ("operator new(unsigned long)", "operator new"),
    ("operator delete[](void*)", "operator delete[]"),
    ("A::operator<(A const&)", "A::operator<"),
    ("bool operator< <Foo>(Foo const&, Foo const&)", "operator< <Foo>"),
    ("A::operator<<(int)", "A::operator<<"),
    ("A::operator->()", "A::operator->"),
    ("main::{lambda(int)#1}::operator()(int) const", "main::{lambda(int)#1}::operator()"),
    ("std::vector<int, std::allocator<int> >::push_back(int const&)",
     "std::vector<int, std::allocator<int> >::push_back"),
    ("void (*ns::handler(int))(int)", "ns::handler"),
])
def test_short_names_drop_return_type_and_parameters(demangled: str, short: str) -> None:
    assert short_name(demangled) == short


def test_the_demangler_is_libstdcxx() -> None:
    demangle = load_demangler()
    assert demangle is not None
    assert demangle("_ZNK2ns3ObjclEPi") == "ns::Obj::operator()(int*) const"
    assert demangle("main") is None and demangle("_Zbogus") is None


def test_a_server_that_cannot_confine_itself_parses_nothing_and_says_why(small_core: tuple[Path, Path]) -> None:
    """Without the privilege to drop (no CAP_SETUID/SETGID), the core is not parsed as root:
    every answer is the reason, and the core's metadata will say it."""
    if os.geteuid() != 0:
        pytest.skip("dropping capabilities needs root")  # CI runs as root
    exe, core = small_core
    setpriv = which_or_fail("setpriv")
    unwinder = Unwinder(command=[setpriv, "--inh-caps=-setuid,-setgid", "--bounding-set=-setuid,-setgid", *SERVER])
    fds = _open(exe, core)
    try:
        with pytest.raises(UnwindError, match="cannot start: PermissionError"):
            unwinder.frames(fds[0], fds[1], [], timeout=60)
    finally:
        unwinder.close()
        for fd in fds:
            os.close(fd)
