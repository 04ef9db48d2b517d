"""What a core's copy may do, why it stops early, and how it ended.

:class:`StreamLimits` bound one copy (size cap, free-space floor, deadline, compression);
:class:`Cut` stops it with one of the ``REASON_*`` values (the "reason" of a cut core);
:class:`StreamResult` says how it ended. Shared by the pipe side (``pipe_source``), the file
side (``core_sink``) and the copy itself (``stream``).
"""

from __future__ import annotations

import errno
import os
import threading
from dataclasses import dataclass

#: Read size of the buffered path (its one buffer).
CHUNK = 1 << 20

# Why a copy stopped early (the "reason" of a cut core).
REASON_SIZE_LIMIT = "size_limit"
REASON_RLIMIT = "rlimit_core"
REASON_NO_SPACE = "no_space"
REASON_KEEP_FREE = "keep_free"
REASON_TIMEOUT = "timeout"
REASON_READ_ERROR = "read_error"
REASON_WRITE_ERROR = "write_error"
#: The agent stopped while the dump was running, and its stop timeout ran out (a cut by the server).
REASON_AGENT_STOPPED = "agent_stopped"

# Why the server cut a pipe it received (webhook/agent/corefd.py): the handler's next read then
# fails with EISDIR, which says only *that* it was cut. The server notes why under the fd's
# number (unique while the fd is held: it is closed only after the handler let go of it).
_cuts: dict[int, str] = {}
_cuts_lock = threading.Lock()


def mark_cut(fd: int, reason: str) -> None:
    with _cuts_lock:
        _cuts[fd] = reason


def forget_cut(fd: int) -> None:
    with _cuts_lock:
        _cuts.pop(fd, None)


def cut_reason(fd: int) -> str:
    """Why a read of ``fd`` failed: the server's reason for cutting it, else a read error."""
    with _cuts_lock:
        return _cuts.get(fd, REASON_READ_ERROR)


@dataclass(frozen=True)
class StreamLimits:
    """How far a copy may go."""

    #: Original (uncompressed) bytes kept at most; None = no cap.
    max_bytes: int | None = None
    #: The reason recorded when ``max_bytes`` cuts the core (size cap or %c).
    max_reason: str = REASON_SIZE_LIMIT
    #: Free bytes to leave on the target filesystem.
    keep_free_bytes: int = 0
    #: time.monotonic() value after which the copy stops; None = none.
    deadline: float | None = None
    #: "none" or "zstd".
    compression: str = "none"
    zstd_level: int = 3
    zstd_threads: int = 0
    #: Seek over zero blocks instead of writing them (uncompressed output only).
    sparse: bool = True


@dataclass(frozen=True)
class StreamResult:
    size: int  # original bytes captured (what the digest covers)
    written: int  # bytes in the file (apparent size; the compressed size with zstd)
    digest: str  # "" until finish_core computed it ("xxh128:<hex>"; never shown before)
    complete: bool  # the whole core, to EOF
    reason: str | None  # why not complete
    detail: str = ""  # e.g. the errno text
    #: Spliced bytes whose zero blocks are still data: finish_core punches them out.
    holes_pending: bool = False


class Cut(Exception):
    """Stops a copy early: why (one of the ``REASON_*``) and the detail (e.g. the errno text)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def write_cut(exc: OSError) -> Cut:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return Cut(REASON_NO_SPACE, os.strerror(exc.errno))
    return Cut(REASON_WRITE_ERROR, f"{exc.strerror or exc}")

