"""Resumable, verified download of a core from any byte source.

The transport (an exec stream in the pod running the coredump wrapper's ``--coredump-cat FILE
OFFSET`` or ``tail -c +N FILE``, or a local file in tests)
only has to deliver the bytes from an offset to the end. Here: the ``.part`` file, resuming from
its size, the progress callback and the digest check against the metadata (``"xxh128:<hex>"``
or ``"sha256:<hex>"``, webhook/digest.py: the algorithm is the one the agent used). A mismatch
never produces the final file: the ``.part`` stays for inspection and the error says what to do.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from webhook import digest as digests

#: Suffix of an unfinished download.
PART_SUFFIX = ".part"
_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """The download did not produce a verified file."""


class ByteSource(Protocol):
    """Bytes of one remote file, from an offset to its end."""

    def read_from(self, offset: int) -> Iterator[bytes]: ...


@dataclass
class FileSource:
    """A local file as a byte source (tests, and the page's server side)."""

    path: str
    chunk: int = _CHUNK

    def read_from(self, offset: int) -> Iterator[bytes]:
        with open(self.path, "rb") as f:
            f.seek(offset)
            while block := f.read(self.chunk):
                yield block


@dataclass(frozen=True)
class Result:
    path: str
    size: int
    #: "<algorithm>:<hex>" of the original bytes, as computed here.
    digest: str
    #: Bytes already present in the .part file when this run started.
    resumed_from: int
    #: True when the final file was already there and verified (nothing fetched).
    already_done: bool = False


def _digest_of(path: str, algorithm: str, limit: int | None = None) -> digests.Hasher:
    h = digests.new(algorithm)
    left = limit
    with open(path, "rb") as f:
        while True:
            want = _CHUNK if left is None else min(_CHUNK, left)
            if want == 0:
                break
            block = f.read(want)
            if not block:
                break
            h.update(block)
            if left is not None:
                left -= len(block)
    return h


def _digest_zstd(path: str, algorithm: str) -> str:
    """Digest of a zstd file's *decompressed* bytes (the agent hashes the original core)."""
    import zstandard

    h = digests.new(algorithm)
    with open(path, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as reader:
        while block := reader.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def _file_digest(path: str, algorithm: str, zstd: bool) -> str:
    hexdigest = _digest_zstd(path, algorithm) if zstd else _digest_of(path, algorithm).hexdigest()
    return digests.format_digest(algorithm, hexdigest)


def digest_headers(digest: str) -> dict[str, str]:
    """The response headers of a core download: ``X-Core-Digest: xxh128:<hex>`` (of the original
    bytes, decompressed for zstd), and ``X-Core-SHA256: <hex>`` as well when it is a sha256 (what
    older clients read). None for a core whose digest was not computed."""
    parsed = digests.parse(digest)
    if parsed is None:
        return {}
    headers = {"X-Core-Digest": digest}
    if parsed[0] == digests.SHA256:
        headers["X-Core-SHA256"] = parsed[1]
    return headers


def download(
    source: ByteSource,
    dest: str,
    *,
    digest: str | None,
    size: int | None,
    progress: Callable[[int, int | None], None] | None = None,
    compression: str = "none",
) -> Result:
    """Fetch ``source`` into ``dest`` through ``dest.part``, resuming, then verify.

    ``digest`` (``"xxh128:<hex>"`` or ``"sha256:<hex>"``) comes from the core's metadata and covers
    the *original* core; ``size`` is the number of bytes of the stored file (``stored_size``). For
    a ``zstd`` core the check decompresses the downloaded file. Without a digest only the size is
    checked (the caller warns); a malformed one is an error, never a silent pass.
    """
    algorithm = _algorithm(digest)
    zstd = compression == "zstd"
    part = dest + PART_SUFFIX
    if os.path.exists(dest) and digest:
        if _file_digest(dest, algorithm, zstd) == digest:
            return Result(dest, os.path.getsize(dest), digest, 0, already_done=True)
        raise DownloadError(f"{dest} exists and does not match {digest}: remove it or choose -o")
    offset = _resume_offset(part, size)
    h = _digest_of(part, algorithm, offset) if offset else digests.new(algorithm)
    done = _write_from(source, part, offset, h, size, progress)
    if size is not None and done != size:
        raise DownloadError(
            f"got {done} of {size} bytes; {part} kept: run the same command again to resume"
        )
    got = _downloaded_digest(part, algorithm, zstd, h)
    if digest and got != digest:
        raise DownloadError(
            f"digest mismatch: metadata says {digest}, got {got}; {part} kept for inspection "
            "(delete it to download again from the start)"
        )
    os.replace(part, dest)
    return Result(dest, done, got, offset)


def _algorithm(digest: str | None) -> str:
    """The algorithm to check ``digest`` with (the default when there is none)."""
    if not digest:
        return digests.DEFAULT
    parsed = digests.parse(digest)
    if parsed is None:
        raise DownloadError(f"the metadata's digest {digest!r} is not one this version can check")
    return parsed[0]


def _resume_offset(part: str, size: int | None) -> int:
    """Where a kept ``.part`` lets the download resume (0: from the start)."""
    offset = os.path.getsize(part) if os.path.exists(part) else 0
    if size is not None and offset > size:
        offset = 0  # a .part larger than the core is not a prefix of it: start over
    return offset


def _write_from(source: ByteSource, part: str, offset: int, h: digests.Hasher, size: int | None,
                progress: Callable[[int, int | None], None] | None) -> int:
    """Append ``source`` from ``offset`` to ``part``, hashing it; returns the bytes ``part`` holds."""
    done = offset
    mode = "r+b" if offset else "wb"
    with open(part, mode) as out:
        out.seek(offset)
        out.truncate()
        if progress:
            progress(done, size)
        for block in source.read_from(offset):
            out.write(block)
            h.update(block)
            done += len(block)
            if progress:
                progress(done, size)
        out.flush()
        os.fsync(out.fileno())
    return done


def _downloaded_digest(part: str, algorithm: str, zstd: bool, h: digests.Hasher) -> str:
    """The digest of the original core: of what was fetched, or of it decompressed (``zstd``)."""
    try:
        return digests.format_digest(algorithm, _digest_zstd(part, algorithm) if zstd else h.hexdigest())
    except Exception as exc:  # zstandard.ZstdError: a corrupt frame is a mismatch too
        return f"undecodable zstd ({exc})"


class ProgressBar:
    """A one-line progress bar on a terminal stream; silent when it is not a terminal."""

    def __init__(self, stream=None, label: str = "", enabled: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.label = label
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._last = 0.0

    def __call__(self, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.1 and (total is None or done < total):
            return
        self._last = now
        self.stream.write("\r" + render_progress(self.label, done, total))
        if total is not None and done >= total:
            self.stream.write("\n")
        self.stream.flush()


def human_size(n: int | float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def render_progress(label: str, done: int, total: int | None, width: int = 30) -> str:
    """'core.12 [#######.......]  23% 1.2 MiB/5.0 MiB'"""
    if not total:
        return f"{label} {human_size(done)}"
    frac = min(done / total, 1.0)
    filled = int(frac * width)
    return f"{label} [{'#' * filled}{'.' * (width - filled)}] {frac * 100:3.0f}% {human_size(done)}/{human_size(total)}"
