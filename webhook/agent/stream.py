"""Stream a core from the kernel's pipe to a file in bounded memory, and say how it ended.

This is what runs while the crashing process is pinned, so it does only what is needed to get
the bytes into the file: uncompressed from a pipe onto a disk filesystem they go pipe -> page
cache with ``splice(2)`` (no copy through user space, no look at the data); otherwise (tmpfs,
zstd, files) through one reused 1 MiB buffer, zero 4 KiB blocks becoming holes or the bytes
going through a streaming zstd compressor. The digest of the original bytes, and the holes of a
spliced core, are made after the process is released, from the page cache
(``webhook/agent/finish.py``). The copy stops, and says why, at
the size cap, at the free-space floor of the target filesystem, on ENOSPC, or at the deadline;
the caller decides what a cut core is called (never the final name).
"""

from __future__ import annotations

import ctypes
import errno
import os
import time
from collections.abc import Callable
from typing import BinaryIO

from webhook.agent.core_sink import Sink, zero_runs
from webhook.agent.pipe_source import Source
from webhook.agent.stream_limits import (
    CHUNK,
    REASON_TIMEOUT,
    Cut,
    StreamLimits,
    StreamResult,
    cut_reason,
    write_cut,
)

#: What the crash path and its tests take from here (the parts live in ``stream_limits``,
#: ``pipe_source`` and ``core_sink``).
__all__ = ["CHUNK", "MEMORY_FS_MAGIC", "StreamLimits", "StreamResult", "copy_core", "parse_size", "stream_core",
           "zero_runs"]

#: Bytes asked of one splice(2) call (it moves at most what the pipe holds).
SPLICE_MAX = 16 << 20
#: Filesystems whose writes are memory copies (tmpfs, ramfs): there the buffered path, which
#: skips zero blocks, beats splice (see ``_Copy.can_splice``).
MEMORY_FS_MAGIC = (0x01021994, 0x858458F6)
#: os.splice (Python >= 3.10 on Linux); None: the buffered path only.
_splice = getattr(os, "splice", None)
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_MORE", 4)


class _Copy:
    """One core's copy: the bytes taken so far, through splice or through a buffer."""

    def __init__(self, source: Source, sink: Sink, limits: StreamLimits) -> None:
        self.source = source
        self.sink = sink
        self.limits = limits
        self.size = 0  # original bytes taken (in the file, or fed to the compressor)
        self.spliced = False

    def can_splice(self) -> bool:
        """Splice when it pays: an uncompressed core from a pipe onto a disk filesystem.

        Measured with 1 GiB cores through the kernel's pipe on a 2-core node: onto ext4,
        splice took 0.90 s and 0.48 s of CPU where reading and writing data runs took 1.7 s and
        1.4 s; onto tmpfs it is the other way round (0.67-0.84 s against 0.54-0.59 s, the
        same CPU): splice holds the pipe's lock while it copies, so the kernel's dump waits,
        and a tmpfs write is itself a memory copy that skipping the zero blocks saves.
        """
        return (_splice is not None and self.source.is_pipe and self.sink.cobj is None
                and self.source.file is None and _fs_magic(self.sink.fd) not in MEMORY_FS_MAGIC)

    def splice(self) -> bool:
        """Move the core from the pipe into the file inside the kernel (no copy through us).

        True at EOF; False when splice cannot go on here (an output without splice support,
        or a pipe the server cut: its number now names a directory): the buffered path takes
        over from the same offset. Raises :class:`Cut` at a limit.
        """
        fd_in = self.source.fd
        move = _splice
        assert move is not None  # can_splice() said so
        sink, limits = self.sink, self.limits
        while True:
            want = SPLICE_MAX
            if limits.max_bytes is not None:
                left = limits.max_bytes - self.size
                if left <= 0:
                    self._past_the_cap()
                    return True
                want = min(want, left)
            want = sink.room(want)
            self.source.gather()
            if not self.source.wait():
                raise Cut(REASON_TIMEOUT, "the dump took longer than the timeout")
            try:
                n = move(fd_in, sink.fd, want, offset_dst=sink.pos, flags=_SPLICE_FLAGS)
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF):
                    return False
                raise write_cut(exc) from exc
            if n == 0:
                return True
            sink.advance(n)
            self.size += n
            self.spliced = True

    def _past_the_cap(self) -> None:
        """At the size cap: a cut if the core goes on, complete if it ends exactly here."""
        if not self.source.wait():
            raise Cut(REASON_TIMEOUT, "the dump took longer than the timeout")
        try:
            more = os.read(self.source.fd, 1)
        except OSError as exc:
            raise Cut(cut_reason(self.source.fd), f"{exc.strerror or exc}") from exc
        if more:
            raise Cut(self.limits.max_reason, f"cut at {self.limits.max_bytes} bytes")

    def buffered(self) -> None:
        """Read into one reused buffer and write it (holes inline) or compress it; to EOF."""
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        limits = self.limits
        max_bytes = limits.max_bytes
        while True:
            try:
                n, eof, timed_out = self.source.fill(view)
            except OSError as exc:  # e.g. EISDIR: the server cut the dump (its timeout, its stop)
                raise Cut(cut_reason(self.source.fd), f"{exc.strerror or exc}") from exc
            cap_hit = False
            if max_bytes is not None and self.size + n > max_bytes:
                cap_hit = True
                n = max(0, max_bytes - self.size)
            if n:
                try:
                    self.sink.put(buf, n)
                except Cut:
                    if self.sink.cobj is None:  # the file holds exactly the first sink.pos bytes
                        self.size = self.sink.pos
                    raise
                self.size += n
            if cap_hit:
                raise Cut(limits.max_reason, f"cut at {limits.max_bytes} bytes")
            if timed_out:
                raise Cut(REASON_TIMEOUT, "the dump took longer than the timeout")
            if eof:
                return


class _StatFs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 112)]


_libc = ctypes.CDLL(None, use_errno=True)


def _fs_magic(fd: int) -> int:
    """``fstatfs(2)``'s f_type of ``fd``'s filesystem (0 when unknown)."""
    buf = _StatFs()
    try:
        if _libc.fstatfs(fd, ctypes.byref(buf)) != 0:
            return 0
    except (AttributeError, OSError):
        return 0
    return buf.f_type & 0xFFFFFFFF


def stream_core(src: int | BinaryIO, dst_fd: int, limits: StreamLimits, *,
                clock: Callable[[], float] = time.monotonic) -> StreamResult:
    """The crash path's part: take the core from ``src`` into ``dst_fd`` within ``limits``.

    Never raises for I/O trouble, reports it. Nothing that can wait is done here: the result's
    ``digest`` is empty and, for a spliced core, zero blocks are still data
    (``holes_pending``): :func:`webhook.agent.finish.finish_core` does both once the process
    is released. Uncompressed from a pipe, the bytes go pipe -> page cache by ``splice(2)``;
    otherwise through one reused buffer (holes inline, or zstd).
    """
    source = Source(src, limits.deadline, clock)
    sink = Sink(dst_fd, limits)
    copy = _Copy(source, sink, limits)
    reason: str | None = None
    detail = ""
    complete = False
    try:
        if not (copy.can_splice() and copy.splice()):
            copy.buffered()
        complete = True
    except Cut as cut:
        reason, detail = cut.reason, cut.detail
    try:
        sink.finish()
    except Cut as cut:
        if reason is None:
            complete, reason, detail = False, cut.reason, cut.detail
    return StreamResult(size=copy.size, written=sink.pos, digest="", complete=complete, reason=reason,
                        detail=detail, holes_pending=copy.spliced and limits.sparse)


def copy_core(src: int | BinaryIO, dst_fd: int, limits: StreamLimits, *,
              clock: Callable[[], float] = time.monotonic) -> StreamResult:
    """:func:`stream_core` then :func:`~webhook.agent.finish.finish_core`: the whole job at once,
    for callers with no process to release (tests, benchmarks)."""
    from webhook.agent.finish import finish_core

    return finish_core(dst_fd, stream_core(src, dst_fd, limits, clock=clock), limits)


def parse_size(text: str) -> int | None:
    """``512M``, ``2G``, ``1048576``, ``1.5Gi`` -> bytes; None when empty or unreadable."""
    text = (text or "").strip()
    if not text:
        return None
    units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    lowered = text.lower().rstrip("b").rstrip("i")
    suffix = lowered[-1:] if lowered[-1:] in "kmgt" else ""
    number = lowered[: len(lowered) - len(suffix)] if suffix else lowered
    try:
        value = float(number)
    except ValueError:
        return None
    if value < 0:
        return None
    return int(value * units[suffix])
