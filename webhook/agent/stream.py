"""Stream a core from the kernel's pipe to a file in bounded memory, and say how it ended.

Two 1 MiB buffers are reused for the whole core, whatever its size. Zero 4 KiB blocks become
holes (cores carry their zero pages as real bytes), or the bytes go through a streaming zstd
compressor. The sha256 is of the original bytes. The copy stops, and says why, at the size
cap, at the free-space floor of the target filesystem, on ENOSPC, or at the deadline; the
caller decides what a cut core is called (never the final name).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import select
import stat
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Callable

#: Read size, and the size asked of the pipe (F_SETPIPE_SZ).
CHUNK = 1 << 20
#: Granularity of hole detection (a page; the smallest block of every filesystem we write to).
BLOCK = 4096
_ZERO = bytes(CHUNK)
_ZERO_VIEW = memoryview(_ZERO)
_ZERO_BLOCK = bytes(BLOCK)
#: Re-read the target filesystem's free space after this many bytes written.
STATVFS_EVERY = 64 << 20

# Why a copy stopped early (the "reason" of a cut core).
REASON_SIZE_LIMIT = "size_limit"
REASON_RLIMIT = "rlimit_core"
REASON_NO_SPACE = "no_space"
REASON_KEEP_FREE = "keep_free"
REASON_TIMEOUT = "timeout"
REASON_READ_ERROR = "read_error"
REASON_WRITE_ERROR = "write_error"


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
    zstd_level: int = 1
    zstd_threads: int = 0
    #: Seek over zero blocks instead of writing them (uncompressed output only).
    sparse: bool = True


@dataclass(frozen=True)
class StreamResult:
    size: int  # original bytes captured (what the sha256 covers)
    written: int  # bytes in the file (apparent size; the compressed size with zstd)
    sha256: str
    complete: bool  # the whole core, to EOF
    reason: str | None  # why not complete
    detail: str = ""  # e.g. the errno text


def enlarge_pipe(fd: int, size: int = CHUNK) -> int:
    """Ask for a bigger pipe buffer (the default 64 KiB halves the throughput); best effort."""
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return 0
        return fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
    except OSError:
        try:
            return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
        except OSError:
            return 0


class _Source:
    """Reads into a caller's buffer from an fd (with a deadline on pipes) or a file object."""

    def __init__(self, src: int | BinaryIO, deadline: float | None, clock: Callable[[], float]) -> None:
        self.deadline = deadline
        self.clock = clock
        self.fd: int | None = None
        self.file: BinaryIO | None = None
        if isinstance(src, int):
            self.fd = src
        else:
            try:
                self.fd = src.fileno()
            except (AttributeError, OSError, ValueError):
                self.file = src
        self.pollable = False
        if self.fd is not None:
            try:
                mode = os.fstat(self.fd).st_mode
                self.pollable = stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)
            except OSError:
                pass
            if self.pollable:
                enlarge_pipe(self.fd)
                self.poller = select.poll()
                self.poller.register(self.fd, select.POLLIN | select.POLLHUP | select.POLLERR)

    def fill(self, view: memoryview) -> tuple[int, bool, bool]:
        """Fill ``view`` as far as possible; return (bytes, eof, deadline reached)."""
        filled = 0
        while filled < len(view):
            if self.deadline is not None and self.clock() >= self.deadline:
                return filled, False, True
            if self.file is not None:
                n = self.file.readinto(view[filled:])
            else:
                if self.pollable and self.deadline is not None:
                    remaining = max(0.0, self.deadline - self.clock())
                    if not self.poller.poll(int(remaining * 1000) + 1):
                        continue  # loop re-checks the deadline
                try:
                    n = os.readv(self.fd, [view[filled:]])
                except InterruptedError:
                    continue
            if not n:
                return filled, True, False
            filled += n
        return filled, False, False


class _Sink:
    """Writes to the output fd: holes for zero blocks, or zstd; enforces the free-space floor."""

    def __init__(self, fd: int, limits: StreamLimits) -> None:
        self.fd = fd
        self.limits = limits
        self.pos = 0  # apparent size of the output so far
        self.since_statvfs = STATVFS_EVERY  # forces a statvfs before the first write
        self.budget = 0
        self.cobj = None
        if limits.compression == "zstd":
            import zstandard

            cctx = zstandard.ZstdCompressor(level=limits.zstd_level, threads=limits.zstd_threads,
                                            write_checksum=True)
            self.cobj = cctx.compressobj()

    def _refresh_budget(self) -> None:
        st = os.fstatvfs(self.fd)
        self.budget = st.f_bavail * st.f_frsize - self.limits.keep_free_bytes
        self.since_statvfs = 0

    def _write(self, view: memoryview) -> None:
        if self.limits.keep_free_bytes <= 0:  # no floor: the filesystem itself says ENOSPC
            self._write_all(view)
            return
        if self.since_statvfs >= STATVFS_EVERY or len(view) > self.budget:
            self._refresh_budget()
        if len(view) > self.budget:
            fit = max(0, self.budget)
            if fit:
                self._write_all(view[:fit])
            raise _Cut(REASON_KEEP_FREE, f"would leave less than {self.limits.keep_free_bytes} bytes free")
        self._write_all(view)

    def _write_all(self, view: memoryview) -> None:
        while view:
            try:
                n = os.pwrite(self.fd, view, self.pos)
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise _Cut(REASON_NO_SPACE, os.strerror(exc.errno)) from exc
                raise _Cut(REASON_WRITE_ERROR, f"{exc.strerror or exc}") from exc
            self.pos += n
            self.budget -= n
            self.since_statvfs += n
            view = view[n:]

    def put(self, view: memoryview) -> None:
        if self.cobj is not None:
            out = self.cobj.compress(view)
            if out:
                self._write(memoryview(out))
            return
        if not self.limits.sparse:
            self._write(view)
            return
        n = len(view)
        if view == _ZERO_VIEW[:n]:
            self.pos += n  # a hole
            return
        # bytes.find of a zero block is a fast C scan; only aligned blocks become holes.
        # ``view`` is always a prefix of copy_core's buffer, so offsets in the buffer match.
        buf = view.obj if isinstance(view.obj, (bytes, bytearray)) else bytes(view)
        base = 0
        data_start = 0
        pos = 0
        while pos < n:
            z = buf.find(_ZERO_BLOCK, base + pos, base + n)
            if z < 0:
                break
            z -= base
            a = -(-z // BLOCK) * BLOCK  # the first aligned block start at or after z
            e = a
            while e + BLOCK <= n and view[e:e + BLOCK] == _ZERO_BLOCK:
                e += BLOCK
            if e == a:  # no aligned zero block here; the next one starts at a + BLOCK or later
                pos = a + BLOCK
                continue
            if data_start < a:
                self._write(view[data_start:a])
            self.pos += e - a
            data_start = pos = e
        if data_start < n:
            self._write(view[data_start:n])

    def finish(self) -> None:
        if self.cobj is not None:
            import zstandard

            out = self.cobj.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)
            self.cobj = None
            if out:
                self._write(memoryview(out))
        try:
            os.ftruncate(self.fd, self.pos)  # the trailing hole, if any
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise _Cut(REASON_NO_SPACE, os.strerror(exc.errno)) from exc
            raise _Cut(REASON_WRITE_ERROR, f"{exc.strerror or exc}") from exc


class _Cut(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def copy_core(src: int | BinaryIO, dst_fd: int, limits: StreamLimits, *,
              clock: Callable[[], float] = time.monotonic) -> StreamResult:
    """Copy ``src`` to ``dst_fd`` within ``limits``; never raises for I/O trouble, reports it.

    Two 1 MiB buffers: the sha256 of one runs in a helper thread (hashlib releases the GIL)
    while the other is read and written, so hashing costs no wall time on two cores.
    """
    bufs = (bytearray(CHUNK), bytearray(CHUNK))
    digest = hashlib.sha256()
    source = _Source(src, limits.deadline, clock)
    sink = _Sink(dst_fd, limits)
    hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="core-sha256")
    pending: Future | None = None
    size = 0
    reason: str | None = None
    detail = ""
    complete = False
    turn = 0
    try:
        while True:
            view = memoryview(bufs[turn])
            turn ^= 1
            try:
                n, eof, timed_out = source.fill(view)
            except OSError as exc:  # e.g. EISDIR: the server cut the dump (its timeout)
                raise _Cut(REASON_READ_ERROR, f"{exc.strerror or exc}") from exc
            cap_hit = limits.max_bytes is not None and size + n > limits.max_bytes
            if cap_hit:
                n = max(0, limits.max_bytes - size)
            if n:
                if pending is not None:
                    pending.result()  # the other buffer is hashed: in order, and free to refill
                before = digest.copy()
                pending = hasher.submit(digest.update, view[:n])
                try:
                    sink.put(view[:n])
                except _Cut:
                    pending.result()
                    pending = None
                    digest = before
                    if sink.cobj is None:  # the file holds exactly the first sink.pos bytes
                        done = sink.pos - size
                        digest.update(view[:done])
                        size += done
                    raise
                size += n
            if cap_hit:
                raise _Cut(limits.max_reason, f"cut at {limits.max_bytes} bytes")
            if timed_out:
                raise _Cut(REASON_TIMEOUT, "the dump took longer than the timeout")
            if eof:
                complete = True
                break
    except _Cut as cut:
        reason, detail = cut.reason, cut.detail
    finally:
        if pending is not None:
            pending.result()
        hasher.shutdown(wait=True)
    try:
        sink.finish()
    except _Cut as cut:
        if reason is None:
            complete, reason, detail = False, cut.reason, cut.detail
    return StreamResult(size=size, written=sink.pos, sha256=digest.hexdigest(), complete=complete,
                        reason=reason, detail=detail)


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
