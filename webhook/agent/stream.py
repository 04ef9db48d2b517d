"""Stream a core from the kernel's pipe to a file in bounded memory, and say how it ended.

A small ring of 1 MiB buffers is reused for the whole core, whatever its size. Zero 4 KiB
blocks become holes (cores carry their zero pages as real bytes), or the bytes go through a
streaming zstd compressor. The sha256 is of the original bytes, computed in a helper thread
while the next buffer is read and written. The copy stops, and says why, at the size cap, at
the free-space floor of the target filesystem, on ENOSPC, or at the deadline; the caller
decides what a cut core is called (never the final name).

Speed matters (the crashing process is pinned until the core is read): every per-byte step is
done in C on whole buffers or blocks (``startswith`` against zero bytes, ``hashlib``, ``readv``,
``pwrite``), data runs are written with one call each, and no buffer is allocated per chunk.
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

#: Read size (one buffer of the ring).
CHUNK = 1 << 20
#: Buffers in flight: one being read and written while the others wait for their sha256 (enough
#: to ride out a scheduler slice of the hash thread on a busy 2-core node; 6 MiB in all).
BUFFERS = 6
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


def _pipe_max_size() -> int:
    try:
        with open(PIPE_MAX_SIZE_PATH) as f:
            return int(f.read())
    except (OSError, ValueError):
        return CHUNK


def enlarge_pipe(fd: int, size: int = PIPE_SIZE) -> int:
    """Ask for a bigger pipe buffer (the default 64 KiB halves the throughput); best effort.

    Tries ``size``, then the unprivileged maximum, then one chunk; returns the size obtained.
    """
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return 0
    except OSError:
        return 0
    tried: set[int] = set()
    for want in (size, None, CHUNK):
        if want is None:  # /proc read only once ``size`` was refused (root seldom is)
            want = min(size, _pipe_max_size())
        if want in tried:
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
        size = len(view)
        while filled < size:
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

    A ring of BUFFERS 1 MiB buffers: each is read and written by this thread, then hashed by
    one helper thread (in order; hashlib releases the GIL) while the next ones are read and
    written. A buffer is refilled only once its hash is done, which bounds the memory; so the
    copy runs at most at the speed of one sha256 (~1.4 GB/s with SHA-NI), the floor of any
    ingest that hashes before it lets the process go. A buffer is hashed only after it was
    written, so a cut core's sha256 covers exactly the bytes in the file.
    """
    bufs = [bytearray(CHUNK) for _ in range(BUFFERS)]
    hashing: list[Future | None] = [None] * BUFFERS
    digest = hashlib.sha256()
    source = _Source(src, limits.deadline, clock)
    sink = _Sink(dst_fd, limits)
    hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="core-sha256")
    size = 0
    reason: str | None = None
    detail = ""
    complete = False
    turn = 0

    def drain() -> None:
        for i, fut in enumerate(hashing):
            if fut is not None:
                fut.result()
                hashing[i] = None

    try:
        while True:
            buf = bufs[turn]
            if hashing[turn] is not None:
                hashing[turn].result()  # this buffer's bytes are in the digest: free to refill
                hashing[turn] = None
            try:
                n, eof, timed_out = source.fill(memoryview(buf))
            except OSError as exc:  # e.g. EISDIR: the server cut the dump (its timeout)
                raise _Cut(REASON_READ_ERROR, f"{exc.strerror or exc}") from exc
            cap_hit = limits.max_bytes is not None and size + n > limits.max_bytes
            if cap_hit:
                n = max(0, limits.max_bytes - size)
            if n:
                try:
                    sink.put(buf, n)
                except _Cut:
                    drain()
                    if sink.cobj is None:  # the file holds exactly the first sink.pos bytes
                        done = sink.pos - size
                        digest.update(memoryview(buf)[:done])
                        size += done
                    raise
                hashing[turn] = hasher.submit(digest.update, memoryview(buf)[:n])
                size += n
                turn = (turn + 1) % BUFFERS
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
        drain()
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
