"""Let the kernel reap a crashed process as soon as its core is in the file.

The kernel keeps the crashing process (and so the pod's restart) until every reader of the
core pipe has closed it. The server owns that pipe fd and runs the crash handler in a thread;
it installs, for that thread, a function that drops the pipe. The handler calls
:func:`release_now` once the bytes are in the file and the pinned-only work is done (binaries,
the executable's fd); hashing, holes, fsync and metadata follow with the process gone. Without
a server (direct calls, tests) :func:`release_now` does nothing: the caller closes its fd.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

_local = threading.local()

#: Nice value of a handler thread once its process is released: work that can wait yields the
#: CPU to cores still being read (the other pinned processes) on a busy node.
AFTER_RELEASE_NICE = 10


@contextlib.contextmanager
def releasing(drop: Callable[[], bool]) -> Iterator[None]:
    """While the block runs in this thread, :func:`release_now` calls ``drop`` (once)."""
    _local.drop = drop
    try:
        yield
    finally:
        _local.drop = None


def release_now() -> bool:
    """Drop this thread's core pipe (once); True when the process was let go here."""
    drop = getattr(_local, "drop", None)
    if drop is None:
        return False
    _local.drop = None
    try:
        released = bool(drop())
    except Exception:  # noqa: BLE001 - the server's own close is the backstop
        log.exception("could not release the core pipe early")
        return False
    if released:
        _yield_cpu()
    return released


def _yield_cpu() -> None:
    """Lower this thread's priority (Linux: setpriority on a TID is per thread)."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), AFTER_RELEASE_NICE))
    except (OSError, AttributeError):
        pass
