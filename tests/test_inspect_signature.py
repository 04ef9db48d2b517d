"""Crash signatures from real kernel core dumps of two small programs compiled here."""

from __future__ import annotations

import hashlib
import resource
import subprocess
import time
from pathlib import Path

import pytest

from tests.crash_support import build_programs
from tests.signature_support import gdb_frames, libraries
from tests.suite_support import which_or_fail
from webhook.diagnose import signature as sig

SEGV_C = r"""
#include <stdio.h>
__attribute__((noinline)) int f(int *p) { return *p + 1; }
__attribute__((noinline)) int h(int *p) { return f(p) * 2; }
int main(int argc, char **argv) {
    int *p = argc > 5 ? &argc : NULL;
    getchar();                      /* wait until the test says "crash now" */
    printf("%d\n", h(p));
    return 0;
}
"""

CXX = r"""
#include <cstdio>
namespace ns {
struct Obj { int k; __attribute__((noinline)) int operator()(int *p) const { return *p + k; } };
template <class T> __attribute__((noinline)) int apply(const T &f, int *p) { return f(p) * 2; }
}
int main(int argc, char **) {
    getchar();
    ns::Obj o{argc};
    int *p = argc > 5 ? &argc : nullptr;
    return ns::apply(o, p);
}
"""

ABRT_C = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((noinline)) void g(int n) { if (n < 100) abort(); printf("%d\n", n); }
int main(int argc, char **argv) { g(argc); return 0; }
"""


@pytest.fixture(scope="module")
def programs(tmp_path_factory) -> dict[str, Path]:
    return build_programs(tmp_path_factory.mktemp("progs"), {"segv": SEGV_C, "abrt": ABRT_C})


def _unlimited_core() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))


def _crash(program: Path, core_dir: Path, *, before_crash=None) -> tuple[int, Path]:
    """Run a program until it dumps core through the file pattern; return (pid, core path)."""
    proc = subprocess.Popen([str(program)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            preexec_fn=_unlimited_core)
    if before_crash is not None:
        # wait until it blocks in getchar(): the loader has mapped every library by then
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with open(f"/proc/{proc.pid}/stat") as f:
                if f.read().rsplit(") ", 1)[1][0] == "S" and "libc" in open(f"/proc/{proc.pid}/maps").read():
                    break
            time.sleep(0.01)
        before_crash(proc.pid)
    proc.communicate(b"\n", timeout=30)
    assert proc.returncode < 0, f"{program} did not crash ({proc.returncode})"
    core = core_dir / f"core.{proc.pid}"
    deadline = time.monotonic() + 10
    while not core.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert core.exists(), f"no core at {core}"
    return proc.pid, core


@pytest.fixture
def core_dir(kernel, tmp_path) -> Path:
    d = tmp_path / "cores"
    d.mkdir()
    Path("/proc/sys/kernel/core_uses_pid").write_text("0\n")
    Path("/proc/sys/kernel/core_pattern").write_text(f"{d}/core.%p\n")
    return d


def test_frame_keys_and_lines_leave_out_addresses_and_lines():
    frames = [sig.Frame(0, "f", "0x0000000000401136", "x.c:3"),
              sig.Frame(1, "??", "0x00007f00deadbeef", library="/lib/x86_64-linux-gnu/libfoo.so.1"),
              sig.Frame(2, "ns::Obj::operator()", None, "a.cc:9")]
    assert [f.key() for f in frames] == ["f", "??@libfoo.so.1", "ns::Obj::operator()"]
    assert [f.text() for f in frames] == ["#0 f at x.c:3", "#1 ?? from /lib/x86_64-linux-gnu/libfoo.so.1",
                                          "#2 ns::Obj::operator() at a.cc:9"]
    moved = [sig.Frame(0, "f", "0x00005555dead0136", "x.c:4"), frames[1], frames[2]]
    assert sig.signature_of(moved) == sig.signature_of(frames)


def test_noise_frames_are_dropped_from_the_top_only():
    frames = [sig.Frame(0, "__pthread_kill_implementation"), sig.Frame(1, "__GI_raise"),
              sig.Frame(2, "__GI_abort"), sig.Frame(3, "g"), sig.Frame(4, "abort"), sig.Frame(5, "main")]
    digest, picked = sig.signature_of(frames, top=5)
    assert picked == ["g", "abort", "main"]
    assert digest == hashlib.sha256(b"g\nabort\nmain").hexdigest()
    assert sig.signature_of(frames, top=1)[1] == ["g"]


def test_an_abort_signs_alike_with_and_without_the_c_librarys_symbols():
    """Without debug info the C library's internal frames are unnamed: they are noise all the same."""
    named = [sig.Frame(0, "__pthread_kill_implementation"), sig.Frame(1, "__pthread_kill_internal"),
             sig.Frame(2, "__GI_raise"), sig.Frame(3, "__GI_abort"), sig.Frame(4, "__assert_fail_base"),
             sig.Frame(5, "__GI___assert_fail"), sig.Frame(6, "h"), sig.Frame(7, "main")]
    libc = "/lib/x86_64-linux-gnu/libc.so.6"
    bare = [sig.Frame(0, "??", library=libc), sig.Frame(1, "raise", library=libc), sig.Frame(2, "abort", library=libc),
            sig.Frame(3, "??", library=libc), sig.Frame(4, "__assert_fail", library=libc), sig.Frame(5, "h"),
            sig.Frame(6, "main")]
    assert sig.signature_of(bare) == sig.signature_of(named)
    assert sig.signature_of(bare)[1] == ["h", "main"]
    # an unnamed frame with no noise below it is where the crash is: it stays
    crash = [sig.Frame(0, "??", library="/lib/libfoo.so.1"), sig.Frame(1, "f"), sig.Frame(2, "main")]
    assert sig.signature_of(crash)[1] == ["??@libfoo.so.1", "f", "main"]


@pytest.mark.kernel
def test_same_bug_twice_same_signature_other_bug_other_signature(programs, core_dir):
    pid1, core1 = _crash(programs["segv"], core_dir)
    pid2, core2 = _crash(programs["segv"], core_dir)
    _, core3 = _crash(programs["abrt"], core_dir)
    assert pid1 != pid2
    a1 = sig.analyze(str(programs["segv"]), str(core1), libraries(programs["segv"]))
    a2 = sig.analyze(str(programs["segv"]), str(core2), libraries(programs["segv"]))
    a3 = sig.analyze(str(programs["abrt"]), str(core3), libraries(programs["abrt"]))
    assert a1.signature_frames == ["f", "h", "main"]
    assert a1.signature == a2.signature
    # ASLR: the same frames sat at different addresses in the two crashes.
    assert [f.address for f in a1.frames] != [f.address for f in a2.frames]
    assert a3.signature_frames == ["g", "main"]  # the abort machinery is not part of it
    # The node's own separate debug files (libc6-dbg, installed by the test command) describe the
    # node's libc, not the crashed process's: frames are named only from what the process mapped.
    assert any(Path("/usr/lib/debug/.build-id").glob("*/*.debug"))
    assert not any("__GI_abort" in line or "__pthread_kill_implementation" in line for line in a3.backtrace), a3.backtrace
    assert a3.signature != a1.signature
    assert a3.backtrace[0].startswith("#0 ") and any(" g at " in line for line in a3.backtrace)
    meta = a3.metadata()
    assert set(meta) == {"signature", "backtrace", "signature_frames"}


@pytest.mark.kernel
def test_the_unwinder_signs_as_gdb_names_the_frames(programs, core_dir):
    """The keys are gdb's own names for the same core and files (only the backend changed)."""
    for name in ("segv", "abrt"):
        _, core = _crash(programs[name], core_dir)
        ours = sig.analyze(str(programs[name]), str(core), libraries(programs[name]))
        theirs = gdb_frames(programs[name], core)
        assert sig.signature_of(ours.frames) == sig.signature_of(theirs), (ours.backtrace, theirs)
        assert [f.key() for f in ours.frames][:len(theirs)] == [f.key() for f in theirs][:len(ours.frames)]


@pytest.mark.kernel
def test_without_the_c_library_the_trace_stops_where_it_is_lost(programs, core_dir):
    """No call-frame information for libc: the abort's frames end there, not in made-up frames."""
    _, core = _crash(programs["abrt"], core_dir)
    bare = sig.analyze(str(programs["abrt"]), str(core))
    assert 1 <= len(bare.frames) <= 3, bare.backtrace
    assert bare.frames[0].key() == "??@libc.so.6"


@pytest.mark.kernel
def test_cxx_frames_sign_by_qualified_name_with_or_without_debug_info(tmp_path, core_dir):
    """A C++ crash signs by ``ns::Obj::operator()``: the DWARF name alone is ``operator()``, the
    symbol is mangled; a build with ``-g`` and one without (its symbol table only) sign alike, as gdb
    names them."""
    gxx = which_or_fail("g++")
    (tmp_path / "c.cc").write_text(CXX)
    built = {}
    for name, flags in (("debug", ["-g"]), ("symbols_only", [])):
        built[name] = tmp_path / name
        subprocess.run([gxx, "-O1", *flags, "-o", str(built[name]), str(tmp_path / "c.cc")], check=True)
    signed, cores = {}, {}
    for name, exe in built.items():
        _, cores[name] = _crash(exe, core_dir)
        signed[name] = sig.analyze(str(exe), str(cores[name]), libraries(exe))
        assert signed[name].signature_frames == ["ns::Obj::operator()", "ns::apply<ns::Obj>", "main"]
    assert signed["debug"].signature == signed["symbols_only"].signature
    assert sig.signature_of(gdb_frames(built["debug"], cores["debug"])) == sig.signature_of(signed["debug"].frames)
    assert any(" at c.cc:" in line for line in signed["debug"].backtrace)


def test_frames_below_main_never_change_the_signature():
    from webhook.diagnose.signature import Frame, signature_of

    def frames(*names):
        return [Frame(i, n, hex(0x1000 + i), None, None) for i, n in enumerate(names)]

    named = frames("crash_here", "main", "__libc_start_call_main", "__libc_start_main_impl", "_start")
    unnamed = frames("crash_here", "main", "??", "??", "??")
    assert signature_of(named) == signature_of(unnamed)
    assert signature_of(named)[1] == ["crash_here", "main"]
    assert signature_of(frames("a", "b", "c", "d", "e", "f"))[1] == ["a", "b", "c", "d", "e"]
