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

import array
import ctypes
import errno
import fcntl
import os
import select
import stat
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

#: Read size of the buffered path (its one buffer).
CHUNK = 1 << 20
#: Bytes asked of one splice(2) call (it moves at most what the pipe holds).
SPLICE_MAX = 16 << 20
#: The pipe size asked for (F_SETPIPE_SZ): a few chunks, so the kernel keeps dumping while we
#: write. Root may exceed fs.pipe-max-size; if refused we fall back to that maximum, then CHUNK.
PIPE_SIZE = 4 << 20
#: Granularity of hole detection (a page; the smallest block of every filesystem we write to).
BLOCK = 4096
#: Hole detection first tries whole steps of this size (one compare per 64 KiB of zeros).
ZERO_STEP = 64 << 10
_ZERO_BLOCK = bytes(BLOCK)
_ZERO_STEP = bytes(ZERO_STEP)
#: Re-read the target filesystem's free space after this many bytes written.
STATVFS_EVERY = 64 << 20
PIPE_MAX_SIZE_PATH = "/proc/sys/fs/pipe-max-size"
#: Batching of pipe reads (``_Source.gather``): pipes smaller than 4 of these are read as is; the
#: nap is the time the kernel takes to write a quarter pipe at about GATHER_RATE bytes/s, at most
#: GATHER_NAP_MAX seconds.
GATHER_MIN = 64 << 10
GATHER_RATE = 4e9
GATHER_NAP_MAX = 0.00025
#: Filesystems whose writes are memory copies (tmpfs, ramfs): there the buffered path, which
#: skips zero blocks, beats splice (see ``_Copy.can_splice``).
MEMORY_FS_MAGIC = (0x01021994, 0x858458F6)
#: os.splice (Python >= 3.10 on Linux); None: the buffered path only.
_splice = getattr(os, "splice", None)
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_MORE", 4)

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


def _pipe_max_size() -> int:
    try:
        with open(PIPE_MAX_SIZE_PATH) as f:
            return int(f.read())
    except (OSError, ValueError):
        return CHUNK


def enlarge_pipe(fd: int, size: int = PIPE_SIZE) -> int:
    """Ask for a bigger pipe buffer (the default 64 KiB halves the throughput); best effort.

    Tries ``size``, then the unprivileged maximum, then one chunk; returns the size obtained.
    Never shrinks a pipe someone made bigger (the helper, run by the kernel with every
    capability, may have got more than we may ask for).
    """
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return 0
        current = fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
    except OSError:
        return 0
    if current >= size:
        return current
    tried: set[int] = set()
    for want in (size, None, CHUNK):
        if want is None:  # /proc read only once ``size`` was refused (root seldom is)
            want = min(size, _pipe_max_size())
        if want in tried or want <= current:
            continue
        tried.add(want)
        try:
            return fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, want)
        except OSError:
            continue
    try:
        return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
    except OSError:
        return 0


def zero_runs(buf: bytes | bytearray, n: int, offset: int = 0) -> list[tuple[int, int]]:
    """The runs of whole zero blocks in ``buf[:n]``, as ``(start, end)`` indexes into ``buf``.

    A block is BLOCK bytes aligned in the *file*: ``buf[0]`` sits at file offset ``offset``.
    Runs are maximal and never touch each other. Each test is one C ``memcmp`` against a zero
    bytes object (``startswith`` at an offset: no copy, stops at the first non-zero byte), first
    for a whole 64 KiB step, then block by block where that fails, so every byte is compared at
    most twice and an all-zero MiB costs 16 compares. (``bytes.find`` of a zero block looks
    cheaper, but it falls to ~250 MB/s on alternating zero and data pages.)
    """
    runs: list[tuple[int, int]] = []
    starts_with = buf.startswith
    off = (-offset) % BLOCK  # the first index that is block-aligned in the file
    step_at = off  # the next index where a whole ZERO_STEP is tried
    start = -1  # start of the current run, -1 when not in one
    while off + BLOCK <= n:
        if off == step_at:
            step_at += ZERO_STEP
            if step_at <= n and starts_with(_ZERO_STEP, off):
                if start < 0:
                    start = off
                off = step_at
                continue
        if starts_with(_ZERO_BLOCK, off):
            if start < 0:
                start = off
        elif start >= 0:
            runs.append((start, off))
            start = -1
        off += BLOCK
    if start >= 0:
        runs.append((start, off))
    return runs


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
        self.is_pipe = False
        if self.fd is not None:
            try:
                mode = os.fstat(self.fd).st_mode
                self.is_pipe = stat.S_ISFIFO(mode)
                self.pollable = self.is_pipe or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)
            except OSError:
                pass
            if self.pollable:
                pipe_size = enlarge_pipe(self.fd)
                self.poller = select.poll()
                self.poller.register(self.fd, select.POLLIN | select.POLLHUP | select.POLLERR)
                if self.is_pipe and pipe_size >= 4 * GATHER_MIN:
                    self.gather_low = pipe_size // 4
                    self.gather_nap = min(GATHER_NAP_MAX, pipe_size / GATHER_RATE)
        self._avail = array.array("i", [0])

    #: Take the pipe's bytes once it holds this many (0: whenever there are any).
    gather_low = 0
    gather_nap = 0.0

    def gather(self) -> None:
        """Let pages gather in the pipe before taking them.

        The kernel writes a core into the pipe a page at a time; a reader on another CPU that
        takes whatever is there wakes for every page or two (tens of thousands of syscall
        rounds per 256 MiB, measured: twice the CPU). When the pipe holds less than a quarter
        of its size and its writer is still there, nap for about the time the kernel needs to
        fill that quarter (well under the time to fill the pipe, so the dump never waits).
        """
        if not self.gather_low:
            return
        try:
            fcntl.ioctl(self.fd, termios.FIONREAD, self._avail)
        except OSError:
            return
        if self._avail[0] >= self.gather_low:
            return
        for _fd, events in self.poller.poll(0):
            if events & (select.POLLHUP | select.POLLERR):
                return  # the dump is over: take the rest at once
        time.sleep(self.gather_nap)

    def wait(self) -> bool:
        """Until the pipe has data or EOF; False when the deadline comes first."""
        if self.deadline is None:
            return True
        while True:
            remaining = self.deadline - self.clock()
            if remaining <= 0:
                return False
            if not self.pollable or self.poller.poll(int(remaining * 1000) + 1):
                return True

    def fill(self, view: memoryview) -> tuple[int, bool, bool]:
        """Fill ``view`` as far as possible; return (bytes, eof, deadline reached)."""
        filled = 0
        size = len(view)
        while filled < size:
            if self.deadline is not None and self.clock() >= self.deadline:
                return filled, False, True
            if self.file is not None:
                n = self.file.readinto(view[filled:])
            else:
                self.gather()
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

    def room(self, want: int) -> int:
        """How many of the next ``want`` bytes the free-space floor lets through (> 0), else cut."""
        if self.limits.keep_free_bytes <= 0:
            return want
        if self.since_statvfs >= STATVFS_EVERY or want > self.budget:
            self._refresh_budget()
        if self.budget <= 0:
            raise _Cut(REASON_KEEP_FREE, f"would leave less than {self.limits.keep_free_bytes} bytes free")
        return min(want, self.budget)

    def advance(self, n: int) -> None:
        """``n`` bytes were written at ``pos`` (by us or by splice)."""
        self.pos += n
        self.budget -= n
        self.since_statvfs += n

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
                raise _write_cut(exc) from exc
            self.advance(n)
            view = view[n:]

    def put(self, buf: bytearray, n: int) -> None:
        """Take ``buf[:n]``, the next bytes of the core."""
        view = memoryview(buf)[:n]
        if self.cobj is not None:
            out = self.cobj.compress(view)
            if out:
                self._write(memoryview(out))
            return
        if not self.limits.sparse:
            self._write(view)
            return
        data_start = 0
        for a, e in zero_runs(buf, n, self.pos):
            if data_start < a:
                self._write(view[data_start:a])
            self.pos += e - a  # a hole: the final ftruncate gives the file its size
            data_start = e
        if data_start < n:
            self._write(view[data_start:])

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
            raise _write_cut(exc) from exc


class _Cut(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def _write_cut(exc: OSError) -> _Cut:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return _Cut(REASON_NO_SPACE, os.strerror(exc.errno))
    return _Cut(REASON_WRITE_ERROR, f"{exc.strerror or exc}")


class _Copy:
    """One core's copy: the bytes taken so far, through splice or through a buffer."""

    def __init__(self, source: _Source, sink: _Sink, limits: StreamLimits) -> None:
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
                and self.source.fd is not None and _fs_magic(self.sink.fd) not in MEMORY_FS_MAGIC)

    def splice(self) -> bool:
        """Move the core from the pipe into the file inside the kernel (no copy through us).

        True at EOF; False when splice cannot go on here (an output without splice support,
        or a pipe the server cut: its number now names a directory): the buffered path takes
        over from the same offset. Raises :class:`_Cut` at a limit.
        """
        fd_in = self.source.fd
        assert fd_in is not None
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
                raise _Cut(REASON_TIMEOUT, "the dump took longer than the timeout")
            try:
                n = _splice(fd_in, sink.fd, want, offset_dst=sink.pos, flags=_SPLICE_FLAGS)
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF):
                    return False
                raise _write_cut(exc) from exc
            if n == 0:
                return True
            sink.advance(n)
            self.size += n
            self.spliced = True

    def _past_the_cap(self) -> None:
        """At the size cap: a cut if the core goes on, complete if it ends exactly here."""
        if not self.source.wait():
            raise _Cut(REASON_TIMEOUT, "the dump took longer than the timeout")
        try:
            more = os.read(self.source.fd, 1)
        except OSError as exc:
            raise _Cut(REASON_READ_ERROR, f"{exc.strerror or exc}") from exc
        if more:
            raise _Cut(self.limits.max_reason, f"cut at {self.limits.max_bytes} bytes")

    def buffered(self) -> None:
        """Read into one reused buffer and write it (holes inline) or compress it; to EOF."""
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        limits = self.limits
        while True:
            try:
                n, eof, timed_out = self.source.fill(view)
            except OSError as exc:  # e.g. EISDIR: the server cut the dump (its timeout)
                raise _Cut(REASON_READ_ERROR, f"{exc.strerror or exc}") from exc
            cap_hit = limits.max_bytes is not None and self.size + n > limits.max_bytes
            if cap_hit:
                n = max(0, limits.max_bytes - self.size)
            if n:
                try:
                    self.sink.put(buf, n)
                except _Cut:
                    if self.sink.cobj is None:  # the file holds exactly the first sink.pos bytes
                        self.size = self.sink.pos
                    raise
                self.size += n
            if cap_hit:
                raise _Cut(limits.max_reason, f"cut at {limits.max_bytes} bytes")
            if timed_out:
                raise _Cut(REASON_TIMEOUT, "the dump took longer than the timeout")
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
    source = _Source(src, limits.deadline, clock)
    sink = _Sink(dst_fd, limits)
    copy = _Copy(source, sink, limits)
    reason: str | None = None
    detail = ""
    complete = False
    try:
        if not (copy.can_splice() and copy.splice()):
            copy.buffered()
        complete = True
    except _Cut as cut:
        reason, detail = cut.reason, cut.detail
    try:
        sink.finish()
    except _Cut as cut:
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
