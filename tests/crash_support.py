"""Helpers for tests that crash real processes: programs to crash, SIGSEGV'd sleepers, and the
check that what came out is a complete ELF core."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import time
from pathlib import Path

from tests.process_support import wait_for
from tests.suite_support import which_or_fail
from webhook import constants
from webhook.agent.symbols import STORE_DIR, SYSROOT_SUFFIX

#: A core's directory of saved binaries (``--save-binaries``): it goes with its core, like the sysroot.
BINARIES_SUFFIX = ".d"


def core_files(directory: Path | str, *, recursive: bool = False, metadata: bool = False) -> list[Path]:
    """The files in ``directory`` (and under it with ``recursive``) that are cores or other files put
    there, sorted: never the build-id store (``.symbols/``), a core's sysroot (``<core>.sysroot/``)
    or its saved binaries (``<core>.d/``), and metadata (``.json``) only with ``metadata``. The
    agent keeps binaries by build-id by default, so every core directory holds those too."""
    found: list[Path] = []
    for dirpath, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if d != STORE_DIR and not d.endswith((SYSROOT_SUFFIX, BINARIES_SUFFIX))
                         ) if recursive else []
        found += [Path(dirpath, n) for n in files if metadata or not n.endswith(constants.METADATA_SUFFIX)]
    return sorted(found)


ET_CORE = 4
PT_LOAD = 1
PT_NOTE = 4


def check_elf_core(data: bytes) -> None:
    """A complete 64-bit ELF core: magic, e_type ET_CORE, a note, every segment inside."""
    assert data[:4] == b"\x7fELF", data[:16]
    assert data[4] == 2  # ELFCLASS64
    (e_type,) = struct.unpack_from("<H", data, 16)
    assert e_type == ET_CORE
    (e_phoff,) = struct.unpack_from("<Q", data, 32)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 54)
    types, end = [], 0
    for i in range(e_phnum):
        off = e_phoff + i * e_phentsize
        p_type, = struct.unpack_from("<I", data, off)
        p_offset, = struct.unpack_from("<Q", data, off + 8)
        p_filesz, = struct.unpack_from("<Q", data, off + 32)
        types.append(p_type)
        end = max(end, p_offset + p_filesz)
    assert PT_NOTE in types and PT_LOAD in types
    assert end == len(data), f"segments end at {end}, core has {len(data)} bytes: cut short"


def build_programs(out: Path, sources: dict[str, str]) -> dict[str, Path]:
    """Compile each C source (name -> text) with debug info and no optimisation into ``out``."""
    gcc = which_or_fail("gcc")
    built = {}
    for name, src in sources.items():
        (out / f"{name}.c").write_text(src)
        subprocess.run([gcc, "-g", "-O0", "-o", str(out / name), str(out / f"{name}.c")], check=True)
        built[name] = out / name
    return built


def gdb_core(exe: Path, core: Path, *args: str) -> Path:
    """Run ``exe ARGS`` under gdb until it faults and write its core with generate-core-file:
    a real core with no kernel setting touched."""
    gdb = which_or_fail("gdb")
    subprocess.run([gdb, "-batch", "-ex", "run", "-ex", f"generate-core-file {core}", "--args", str(exe), *args],
                   check=True, capture_output=True, timeout=120)
    return core


def start_sleepers(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen(["sleep", "60"]) for _ in range(n)]


def segv(procs: list[subprocess.Popen]) -> None:
    time.sleep(0.05)  # exec'd
    for p in procs:
        os.kill(p.pid, signal.SIGSEGV)


def reap(procs: list[subprocess.Popen], timeout: float = 60) -> None:
    for p in procs:
        assert p.wait(timeout) == -signal.SIGSEGV


def spooled_crash(host: Path) -> tuple[subprocess.Popen, Path]:
    """Crash one sleeper while no agent listens; returns it and the helper's one finished spool
    entry (the helper lets the process go as soon as the core is read, then fsyncs and renames)."""
    (proc,) = start_sleepers(1)
    segv([proc])
    reap([proc])
    wait_for(lambda: [p for p in (host / "spool").iterdir() if not p.name.endswith(".tmp")], 10)
    (entry,) = list((host / "spool").iterdir())
    return proc, entry


class RecordedEvents:
    """The agent's Kubernetes Events sink (``submit(info) -> accepted``), keeping what it was given
    in ``seen``: the crash and recovery tests read the summaries the agent would have posted."""

    def __init__(self) -> None:
        self.seen: list[dict] = []

    def submit(self, info: dict) -> bool:
        self.seen.append(info)
        return True
