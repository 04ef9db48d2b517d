"""Spool entries written by the agent itself: cores a stopping agent could not start.

The layout is the static helper's (webhook/native/coredump-helper.c, ``spool()``), so the next
agent's drain delivers them like any other spooled core: ``spool/NAME.tmp/`` with ``args`` (the
helper's arguments, each NUL-terminated), ``core`` and ``reason``, all fsynced, then renamed to
``spool/NAME`` (``<epoch>-<%P>[-n]``). Like the helper, it first records who the crashing process
is while it is still pinned (``cgroup``, ``environ``'s ``COREDUMP_*`` items, ``exe`` and ``root``
link targets: webhook/agent/spooled.py), so the next agent delivers the core to its pod. Writing
the rest of the pipe here releases the crashing process as fast as the host disk takes it, well
inside the pod's grace period.
"""

from __future__ import annotations

import os
import time

from webhook.agent.settings import AgentSettings
from webhook.agent.spooled import RECORD_CGROUP, RECORD_ENVIRON, RECORD_ENVIRON_PREFIX, RECORD_EXE, RECORD_ROOT

CHUNK = 1 << 20
#: How often (bytes written) the free space of the spool's filesystem is checked.
FREE_CHECK_BYTES = 64 << 20


def _free_bytes(fd: int) -> int:
    st = os.fstatvfs(fd)
    return st.f_bavail * st.f_frsize


def _write_file(dir_fd: int, name: str, data: bytes) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_proc(path: str, limit: int) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError:
        return None


def record_process(dir_fd: int, pid: str, proc: str = "/proc") -> None:
    """Copy who the pinned process ``pid`` (global) is into the entry, as the static helper does;
    what cannot be read is left out (the entry is then filed like an older helper's)."""
    if not pid.isdigit():
        return
    base = os.path.join(proc, pid)
    cgroup = _read_proc(os.path.join(base, "cgroup"), 64 << 10)
    if cgroup is not None:
        _write_file(dir_fd, RECORD_CGROUP, cgroup)
    environ = _read_proc(os.path.join(base, "environ"), CHUNK)
    if environ is not None:
        kept = [item for item in environ.split(b"\0") if item.startswith(RECORD_ENVIRON_PREFIX)]
        _write_file(dir_fd, RECORD_ENVIRON, b"".join(item + b"\0" for item in kept))
    for name, link in ((RECORD_EXE, "exe"), (RECORD_ROOT, "root")):
        try:
            target = os.readlink(os.path.join(base, link))
        except OSError:
            continue
        _write_file(dir_fd, name, target.encode("utf-8", "surrogateescape"))


def _entry_name(spool: str, pid: str) -> str:
    base = f"{int(time.time())}-{pid}"
    name, n = base, 0
    while os.path.exists(os.path.join(spool, name)) or os.path.exists(os.path.join(spool, name + ".tmp")):
        n += 1
        name = f"{base}-{n}"
    return name


def write_spool_entry(settings: AgentSettings, argv: list[str], core_fd: int, reason: str) -> str:
    """Copy the core pipe into a new complete spool entry; returns the entry's name.

    The core is cut (and the reason says so) when the spool's filesystem would keep less than
    ``spool_keep_free_bytes`` free; an error leaves a ``.tmp`` entry the drain adopts later.
    """
    spool = settings.spool_dir
    os.makedirs(spool, mode=0o700, exist_ok=True)
    pid = argv[0] if argv and argv[0].isdigit() else "0"
    name = _entry_name(spool, pid)
    tmp = os.path.join(spool, name + ".tmp")
    os.mkdir(tmp, 0o700)
    dir_fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _write_file(dir_fd, "args", b"".join(a.encode("utf-8", "surrogateescape") + b"\0" for a in argv))
        record_process(dir_fd, pid)  # %P: pinned until the pipe is read to its end
        out = os.open("core", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        cut = ""
        try:
            written, since_check = 0, 0
            while True:
                chunk = os.read(core_fd, CHUNK)
                if not chunk:
                    break
                if since_check >= FREE_CHECK_BYTES:
                    since_check = 0
                    if _free_bytes(out) < settings.spool_keep_free_bytes:
                        cut = f"; core truncated at {written} bytes: spool keep-free limit ({settings.spool_keep_free_bytes})"
                        break
                os.write(out, chunk)
                written += len(chunk)
                since_check += len(chunk)
            os.fsync(out)
        finally:
            os.close(out)
        _write_file(dir_fd, "reason", (reason + cut).encode())
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    os.rename(tmp, os.path.join(spool, name))
    return name
