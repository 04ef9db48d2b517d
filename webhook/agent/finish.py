"""What a core needs once its process is released: the digest of its original bytes, and holes.

The crash path (``stream.stream_core``) only moves the bytes; everything that can wait runs
here, after the kernel has reaped the crashing process, reading the file back from the page
cache (it was just written): one pass computes the digest (the agent's ``digest`` setting,
webhook/digest.py: xxh128 by default) and, for a core that was spliced without a look at its
data, finds the zero 4 KiB blocks and punches them out (``fallocate(PUNCH_HOLE)``: the file
reads the same, only its allocation shrinks). A zstd core
is decompressed in bounded pieces and its original bytes hashed. Until this has run the
metadata is not written, so no reader ever sees a hash that was not computed.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import fcntl
import logging
import os

from webhook import digest as digests
from webhook.agent.stream import CHUNK, StreamLimits, StreamResult, zero_runs

log = logging.getLogger(__name__)

#: Read size of the pass (a few chunks: fewer syscalls, still a bounded buffer).
READ_SIZE = 2 * CHUNK
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Deallocate ``[offset, offset + length)`` of ``fd``, keeping its size (reads as zeros)."""
    if _fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _readable(fd: int) -> tuple[int, bool]:
    """``fd`` itself when it can be read, else the same file reopened read-only (owned: True)."""
    if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR:
        return fd, False
    return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC), True


class _Holes:
    """Merges the zero runs of consecutive reads and punches each once it is complete."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.start = self.end = -1
        self.punched = 0
        self.enabled = True

    def add(self, start: int, end: int) -> None:
        if start == self.end:
            self.end = end
            return
        self.flush()
        self.start, self.end = start, end

    def flush(self) -> None:
        if self.enabled and self.end > self.start >= 0:
            try:
                punch_hole(self.fd, self.start, self.end - self.start)
                self.punched += self.end - self.start
            except OSError as exc:  # a filesystem without PUNCH_HOLE: the core stays dense
                self.enabled = False
                if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                    log.warning("could not punch holes into a core", extra={"error": str(exc)})
        self.start = self.end = -1


def _finish_raw(rfd: int, wfd: int, result: StreamResult, punch: bool, algorithm: str) -> StreamResult:
    hasher = digests.new(algorithm)
    buf = bytearray(READ_SIZE)
    view = memoryview(buf)
    holes = _Holes(wfd) if punch else None
    off = 0
    while off < result.size:
        n = os.preadv(rfd, [view[: min(READ_SIZE, result.size - off)]], off)
        if n <= 0:
            break  # shorter than written: the hash says what is there
        hasher.update(view[:n])
        if holes is not None:
            for a, e in zero_runs(buf, n, off):
                holes.add(off + a, off + e)
        off += n
    if holes is not None:
        holes.flush()
    value = digests.format_digest(algorithm, hasher.hexdigest())
    if off != result.size:
        return dataclasses.replace(result, digest=value, size=off, complete=False,
                                   reason=result.reason or "read_error",
                                   detail=result.detail or "the file is shorter than what was written",
                                   holes_pending=False)
    return dataclasses.replace(result, digest=value, holes_pending=False)


def _finish_zstd(rfd: int, result: StreamResult, algorithm: str) -> StreamResult:
    """Hash the decompressed bytes; a cut core's frame may end early: hash what it holds."""
    import zstandard

    hasher = digests.new(algorithm)
    total = 0
    with open(os.dup(rfd), "rb", buffering=0) as f:
        f.seek(0)
        reader = zstandard.ZstdDecompressor().stream_reader(f, read_size=CHUNK, closefd=False)
        buf = bytearray(READ_SIZE)
        view = memoryview(buf)
        try:
            while n := reader.readinto(view):
                hasher.update(view[:n])
                total += n
        except zstandard.ZstdError:
            if result.complete:
                raise
    value = digests.format_digest(algorithm, hasher.hexdigest())
    if result.complete:
        return dataclasses.replace(result, digest=value)
    return dataclasses.replace(result, digest=value, size=total)


def finish_core(fd: int, result: StreamResult, limits: StreamLimits,
                algorithm: str = digests.DEFAULT) -> StreamResult:
    """The result with its digest (``"<algorithm>:<hex>"`` of the original bytes now in the
    file), holes punched.

    ``fd`` is the core's file (writable, as the copy had it). Never raises for I/O trouble:
    a core that cannot be read back gets an empty digest (the metadata then says null).
    """
    try:
        rfd, owned = _readable(fd)
    except OSError as exc:
        log.warning("cannot read a core back to hash it", extra={"error": str(exc)})
        return result
    try:
        if limits.compression == "zstd":
            return _finish_zstd(rfd, result, algorithm)
        return _finish_raw(rfd, fd, result, punch=result.holes_pending and limits.sparse, algorithm=algorithm)
    except Exception as exc:  # noqa: BLE001 - the core is written; only its hash is missing
        log.warning("cannot hash a core", extra={"error": repr(exc)})
        return result
    finally:
        if owned:
            os.close(rfd)

