"""Node side of ``coredump gcore``: a core of a *running* process, without killing it.

The agent on the pod's node (hostPID) runs :func:`snapshot` with the process's host PID. gdb's
``gcore`` attaches with ptrace, which stops every thread for the time of the dump only, writes
an ELF core (honouring ``/proc/<pid>/coredump_filter`` like the kernel), and detaches: the
process continues as if nothing happened. The file is written to a private work directory on
the agent's side, never into the container; the agent then hands it to the same safe writer as
a crash (pattern expansion inside the container's root, O_EXCL, metadata), see
:func:`deliver`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Literal

from webhook.diagnose.procstatus import parse_status

#: ELF e_type of a core file.
ET_CORE = 4


class GcoreError(RuntimeError):
    """The snapshot could not be taken (no such process, ptrace refused, gcore missing)."""


@dataclass(frozen=True)
class Snapshot:
    """A core file of a live process, owned by the caller (delete it when delivered)."""

    pid: int
    path: str
    size: int
    #: Wall time of the gcore run (the process is stopped for at most this long).
    seconds: float
    #: Epoch seconds when the snapshot started (the metadata's ``time``).
    time: float


def elf_type(path: str) -> int | None:
    """e_type of an ELF file (4 = core), None when not ELF."""
    with open(path, "rb") as f:
        head = f.read(18)
    if len(head) < 18 or head[:4] != b"\x7fELF":
        return None
    order: Literal["little", "big"] = "little" if head[5] == 1 else "big"  # EI_DATA: 1 = LSB
    return int.from_bytes(head[16:18], order)


def snapshot(
    pid: int,
    workdir: str,
    *,
    gcore: str = "gcore",
    timeout: float = 600.0,
) -> Snapshot:
    """Take a core of ``pid`` into a new file under ``workdir``; raise :class:`GcoreError`."""
    if not os.path.exists(f"/proc/{pid}"):
        raise GcoreError(f"no process {pid}")
    if shutil.which(gcore) is None and not os.access(gcore, os.X_OK):
        raise GcoreError(f"{gcore} not found: the agent image needs gdb for gcore")
    tmp = tempfile.mkdtemp(prefix=f"gcore-{pid}-", dir=workdir)
    prefix = os.path.join(tmp, "core")
    started = time.time()
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            [gcore, "-o", prefix, str(pid)],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise GcoreError(f"gcore of {pid} took more than {timeout:.0f}s") from exc
    seconds = time.monotonic() - t0
    path = f"{prefix}.{pid}"
    if proc.returncode != 0 or not os.path.exists(path) or elf_type(path) != ET_CORE:
        shutil.rmtree(tmp, ignore_errors=True)
        detail = (proc.stderr or proc.stdout).strip()[-400:]
        raise GcoreError(f"gcore of {pid} failed (exit {proc.returncode}): {detail}")
    return Snapshot(pid, path, os.path.getsize(path), seconds, started)


def process_facts(pid: int, proc: str = "/proc") -> dict:
    """The metadata a snapshot shares with a crash, read while the process is alive."""
    base = os.path.join(proc, str(pid))
    facts: dict = {"global_pid": pid, "signal": 0, "signal_name": "", "kind": "gcore"}
    try:
        facts["exe"] = os.readlink(os.path.join(base, "exe"))
    except OSError:
        facts["exe"] = ""
    try:
        with open(os.path.join(base, "comm")) as f:
            facts["comm"] = f.read().strip()
        with open(os.path.join(base, "status")) as f:
            status = parse_status(f.read())
    except OSError:
        return facts
    if status.uid is not None:
        facts["uid"] = status.uid
    if status.gid is not None:
        facts["gid"] = status.gid
    if status.nspid:
        facts["pid"] = status.nspid[-1]
    return facts


def deliver(snap: Snapshot, write: Callable[[BinaryIO, dict], str], extra: dict | None = None) -> str:
    """Stream a snapshot into ``write(stream, facts)`` and remove the work file.

    ``write`` is the agent's safe writer entry (the one crashes go through: pattern expansion
    in the container's root, O_EXCL, digest, metadata); it returns the final path. The work
    file is removed whatever happens, so a failed delivery never leaves a copy on the node.
    """
    facts = {**process_facts(snap.pid), "time": snap.time, **(extra or {})}
    try:
        with open(snap.path, "rb") as stream:
            return write(stream, facts)
    finally:
        shutil.rmtree(os.path.dirname(snap.path), ignore_errors=True)
