"""One way to rewrite a small state file of the agent (the sysctl backup, the helper's config,
the index state, the pod directories, the taken gcore requests): after a crash, or to a reader at
any moment, it is the old file or the new one, never half of one."""

from __future__ import annotations

import os


def write_atomically(path: str, data: bytes, mode: int = 0o600, *, sync_dir: bool = False) -> None:
    """``path.tmp`` (never through a link) + fsync + rename over ``path``; with ``sync_dir`` the
    directory is fsynced too, so the rename itself survives a power cut. Raises OSError."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if sync_dir:
        dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
