"""Benchmark: what keeping binaries by build-id costs a pinned process, first crash vs the next ones.

A live process (a Python interpreter that imported a few extension modules: ~30 mapped files)
stands in for the crashing one. ``keep_binaries`` (webhook/agent/binaries.py) runs as on the
crash path: open every mapped file through map_files, read build-ids, store what is missing, make
``<core>.sysroot``. The first run stores everything; later runs find everything present (a crash
loop). Printed: files, bytes stored, milliseconds (median of --repeat) for first and later runs,
next to the time of just opening the mapped files (the floor), and with the build-id cache cold
(a new agent process) and warm.

    .venv/bin/python benchmarks/bench_symbols.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from webhook.agent import symbols  # noqa: E402
from webhook.agent.binaries import KeepOptions, keep_binaries  # noqa: E402
from webhook.agent.mappings import close_all, open_mapped_files  # noqa: E402

CHILD = "import ssl, sqlite3, decimal, json, hashlib, ctypes, zlib, lzma, bz2, sys; sys.stdin.read()"


def once(pid: int, exe: str, core_dir: Path, name: str) -> tuple[float, dict]:
    fd = os.open(core_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        opts = KeepOptions(symbols=True, symbols_budget=4 << 30, save_binaries=False, save_binaries_budget=0)
        start = time.perf_counter()
        keys, files = keep_binaries(pid, exe, fd, name, fd, symbols.STORE_DIR, opts, want_files=False)
        return time.perf_counter() - start, keys
    finally:
        os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE)
    time.sleep(1.0)
    exe = os.readlink(f"/proc/{child.pid}/exe")
    work = Path(tempfile.mkdtemp(prefix="bench-symbols-"))
    try:
        opens = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            files = open_mapped_files(child.pid, exe)
            opens.append(time.perf_counter() - start)
            close_all(files)
        firsts, laters, colds = [], [], []
        stored = 0
        nfiles = 0
        for i in range(args.repeat):
            d = work / f"run{i}"
            d.mkdir()
            symbols._cache.clear()
            t, keys = once(child.pid, exe, d, "core.1")  # empty store, cold cache: everything stored
            firsts.append(t)
            stored = keys["symbols_stored_bytes"]
            nfiles = len(keys["build_ids"])
            symbols._cache.clear()
            t, keys = once(child.pid, exe, d, "core.2")  # all present, cold cache (a new agent)
            colds.append(t)
            assert keys["symbols_stored_bytes"] == 0
            t, keys = once(child.pid, exe, d, "core.3")  # all present, warm cache (a crash loop)
            laters.append(t)
            shutil.rmtree(d)
        ms = lambda xs: statistics.median(xs) * 1000  # noqa: E731
        print(f"{nfiles} mapped files, {stored / 1e6:.1f} MB stored by the first crash; median of {args.repeat}")
        print(f"{'case':<44}{'ms':>8}")
        print(f"{'open the mapped files only (floor)':<44}{ms(opens):>8.2f}")
        print(f"{'first crash: store everything':<44}{ms(firsts):>8.2f}")
        print(f"{'next crash, new agent (build-ids re-read)':<44}{ms(colds):>8.2f}")
        print(f"{'next crash, same agent (crash loop)':<44}{ms(laters):>8.2f}")
    finally:
        child.kill()
        child.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
