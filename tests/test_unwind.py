"""The signature unwinder's child (webhook/diagnose/unwind.py) and its C++ names (cxxnames.py).

The child reads a core a container made, with files the container mapped: before it parses a
byte it must be unprivileged and must never open a path (a module's name in the core is the
container's text). Both are observed here for real, with strace over the child.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.crash_support import build_programs
from tests.signature_support import libraries
from tests.suite_support import which_or_fail
from webhook.diagnose.cxxnames import load_demangler, short_name
from webhook.diagnose.unwind import NOBODY, FileRef, child_env, request

PROGRAM = r"""
#include <signal.h>
static void crash_here(void) { raise(SIGSEGV); }
int main(void) { crash_here(); return 0; }
"""


@pytest.fixture(scope="module")
def small_core(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    gdb = which_or_fail("gdb")
    out = tmp_path_factory.mktemp("unwind")
    exe = build_programs(out, {"small": PROGRAM})["small"]
    core = out / "core.small"
    subprocess.run([gdb, "-batch", "-ex", "run", "-ex", f"generate-core-file {core}", str(exe)],
                   check=True, capture_output=True, timeout=120)
    return exe, core


def _child_under_strace(exe: Path, core: Path, trace: Path) -> dict:
    opened = [os.open(p, os.O_RDONLY | os.O_CLOEXEC) for p in (core, exe, *libraries(exe))]
    try:
        req = request(opened[0], opened[1], [FileRef(fd, 0, "/planted/../../etc/shadow") for fd in opened[2:]],
                      memory_bytes=0, cpu_seconds=30)
        proc = subprocess.run([which_or_fail("strace"), "-f", "-o", str(trace), "-e",
                               "trace=open,openat,openat2,setresuid,setresgid,prctl,connect",
                               sys.executable, "-m", "webhook.diagnose.unwind"],
                              input=json.dumps(req), capture_output=True, text=True, pass_fds=opened,
                              env=child_env(), timeout=120)
    finally:
        for fd in opened:
            os.close(fd)
    return json.loads(proc.stdout)


def test_the_child_unwinds_unprivileged_and_opens_no_path(small_core: tuple[Path, Path], tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the drop to nobody is what root does")  # CI runs as root
    exe, core = small_core
    out = _child_under_strace(exe, core, tmp_path / "trace")
    functions = [f["function"] for f in out["frames"]]
    assert functions.index("crash_here") < functions.index("main"), out
    lines = (tmp_path / "trace").read_text().splitlines()
    drop = next(i for i, ln in enumerate(lines) if re.search(rf"setresuid\({NOBODY}, {NOBODY}, {NOBODY}\)\s+= 0", ln))
    assert any(re.search(r"prctl\(PR_SET_NO_NEW_PRIVS, 1", ln) for ln in lines[drop:]), lines[drop:]
    after = [ln for ln in lines[drop:] if re.search(r"\bopen(at2?)?\(", ln)]
    assert after == [], after  # everything it read was an fd it was given


def test_the_child_reports_a_core_it_cannot_read(tmp_path: Path) -> None:
    junk = tmp_path / "core"
    junk.write_bytes(b"\x7fELF" + b"\0" * 60)
    fd = os.open(junk, os.O_RDONLY)
    try:
        proc = subprocess.run([sys.executable, "-m", "webhook.diagnose.unwind"], capture_output=True, text=True,
                              input=json.dumps(request(fd, -1, [], memory_bytes=0, cpu_seconds=30)),
                              pass_fds=[fd], env=child_env(), timeout=60)
    finally:
        os.close(fd)
    assert proc.returncode == 1 and "error" in json.loads(proc.stdout)


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
