"""The crash-signature unwinder runs under limits of its own (webhook/rlimited.py).

The real unwinder over a real core (written by gdb's generate-core-file, so no kernel setting is
touched): under the default cap a 320 MiB core still gets its backtrace (the core is mapped, not
read); under a cap too small the unwinder fails alone, with an error that says so, and the
caller lives.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.crash_support import build_programs, gdb_core
from tests.signature_support import libraries
from webhook.agent.settings import AgentSettings
from webhook.diagnose.signature import SignatureError, analyze

BIG = r"""
#include <signal.h>
#include <stdlib.h>
#include <string.h>
static void crash_here(char *p) { p[0] = 2; raise(SIGSEGV); }
int main(int argc, char **argv) {
    size_t n = (size_t)atol(argv[1]) << 20;
    char *p = malloc(n);
    memset(p, 1, n);  /* resident: the core holds it all */
    crash_here(p);
    return 0;
}
"""


@pytest.fixture(scope="module")
def big_core(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("bigcore")
    exe = build_programs(out, {"big": BIG})["big"]
    core = gdb_core(exe, out / "core.big", "320")
    assert core.stat().st_size > 320 << 20
    return exe, core


def test_the_default_cap_still_gives_a_large_core_its_signature(big_core: tuple[Path, Path]) -> None:
    exe, core = big_core
    cap = AgentSettings().signature_memory_bytes
    assert 0 < cap < core.stat().st_size  # the core is larger than the unwinder may map
    result = analyze(str(exe), str(core), libraries(exe), memory_bytes=cap, timeout=60)
    functions = [f.function for f in result.frames]
    assert functions.index("crash_here") < functions.index("main"), functions


def test_a_cap_too_small_fails_the_unwinder_alone_and_says_why(big_core: tuple[Path, Path]) -> None:
    exe, core = big_core
    with pytest.raises(SignatureError, match="address space capped at 16 MiB"):
        analyze(str(exe), str(core), libraries(exe), memory_bytes=16 << 20, timeout=60)
    # without the cap the same unwinder succeeds: the cap is what failed it
    assert "main" in [f.function for f in analyze(str(exe), str(core), libraries(exe), timeout=60).frames]


def test_the_limits_hold_in_the_child_only() -> None:
    script = "ulimit -v; ulimit -t; ulimit -c; cat /proc/self/oom_score_adj"
    child = ("import os, sys; from webhook.rlimited import apply; apply(100 << 20, 7); "
             f"os.execvp('sh', ['sh', '-c', {script!r}])")
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True,
                         timeout=30).stdout.split()
    assert out == [str(100 << 10), "7", "0", "1000"]
    mine = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert mine[0] == "unlimited" and mine[3] != "1000"  # the caller keeps its own limits


def test_the_agent_passes_its_cap_to_the_signature_worker(tmp_path: Path) -> None:
    from webhook.agent.crash import CrashProcessor

    settings = AgentSettings(host_dir=str(tmp_path), events=False, watch_pods=False, signature_memory_bytes=300 << 20)
    processor = CrashProcessor(settings)
    try:
        assert processor.signatures.memory_bytes == 300 << 20
    finally:
        stop = getattr(processor.signatures, "stop", None)
        if stop is not None:
            stop()
