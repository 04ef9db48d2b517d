"""Writing a core to its file: zero blocks become holes, or the bytes go through zstd, and the
free-space floor of the target filesystem is kept.
"""

from __future__ import annotations

import os

from webhook.agent.stream_limits import REASON_KEEP_FREE, Cut, StreamLimits, write_cut

#: Granularity of hole detection (a page; the smallest block of every filesystem we write to).
BLOCK = 4096
#: Hole detection first tries whole steps of this size (one compare per 64 KiB of zeros).
ZERO_STEP = 64 << 10
_ZERO_BLOCK = bytes(BLOCK)
_ZERO_STEP = bytes(ZERO_STEP)
#: Re-read the target filesystem's free space after this many bytes written.
STATVFS_EVERY = 64 << 20


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


class Sink:
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
            raise Cut(REASON_KEEP_FREE, f"would leave less than {self.limits.keep_free_bytes} bytes free")
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
            raise Cut(REASON_KEEP_FREE, f"would leave less than {self.limits.keep_free_bytes} bytes free")
        self._write_all(view)

    def _write_all(self, view: memoryview) -> None:
        while view:
            try:
                n = os.pwrite(self.fd, view, self.pos)
            except InterruptedError:
                continue
            except OSError as exc:
                raise write_cut(exc) from exc
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
            raise write_cut(exc) from exc
