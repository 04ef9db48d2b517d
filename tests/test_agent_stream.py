"""Streaming a core: sparse output, zstd, sha256, the size cap, the free-space floor, the
deadline, ENOSPC on a real small tmpfs, and bounded memory whatever the size."""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time
import tracemalloc

import pytest
import zstandard

pytestmark = pytest.mark.timeout(120)

from webhook.agent.stream import CHUNK, StreamLimits, copy_core, enlarge_pipe


def synthetic_core(size_mib: int, seed: int = 1) -> bytes:
    """Mixed like a real core: text-ish pages, random pages, long zero runs, odd tail."""
    import random

    rnd = random.Random(seed)
    parts = []
    for i in range(size_mib * 4):  # 256 KiB pieces
        kind = i % 4
        if kind == 0:
            parts.append(bytes(256 << 10))
        elif kind == 1:
            parts.append(rnd.randbytes(256 << 10))
        elif kind == 2:
            parts.append((b"GLIBC_2.34 libstdc++ frame %d\n" % i) * ((256 << 10) // 30) + bytes((256 << 10) % 30))
        else:
            parts.append(bytes(128 << 10) + rnd.randbytes(128 << 10))
    return b"".join(parts) + b"tail" + bytes(10000)  # not a multiple of the block size, ends in zeros


def feed_pipe(data: bytes, *, close: bool = True) -> tuple[int, threading.Thread]:
    r, w = os.pipe()

    def writer() -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(w, view[:1 << 20]):]
        except BrokenPipeError:
            pass
        finally:
            if close:
                os.close(w)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    return r, t


def copy_via_pipe(data: bytes, out_path: str, limits: StreamLimits):
    r, t = feed_pipe(data)
    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        result = copy_core(r, fd, limits)
    finally:
        os.close(fd)
        os.close(r)
        t.join(5)
    return result


def test_sparse_copy_is_identical_and_smaller_on_disk(tmp_path):
    data = synthetic_core(8)
    out = tmp_path / "core"
    result = copy_via_pipe(data, str(out), StreamLimits())
    assert result.complete and result.reason is None
    assert result.size == len(data) == out.stat().st_size == result.written
    assert out.read_bytes() == data
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert out.stat().st_blocks * 512 < len(data) * 0.8  # the zero runs are holes


def test_non_sparse_writes_every_block(tmp_path):
    data = bytes(4 << 20)
    out = tmp_path / "core"
    result = copy_via_pipe(data, str(out), StreamLimits(sparse=False))
    assert result.complete and out.stat().st_blocks * 512 >= len(data)
    sparse = tmp_path / "sparse"
    copy_via_pipe(data, str(sparse), StreamLimits())
    assert sparse.stat().st_blocks == 0 and sparse.stat().st_size == len(data)


def test_zstd_round_trip(tmp_path):
    data = synthetic_core(6)
    out = tmp_path / "core.zst"
    result = copy_via_pipe(data, str(out), StreamLimits(compression="zstd", zstd_level=1, zstd_threads=2))
    assert result.complete and result.size == len(data)
    assert result.written == out.stat().st_size < len(data) * 0.6
    assert zstandard.ZstdDecompressor().decompressobj().decompress(out.read_bytes()) == data
    assert result.sha256 == hashlib.sha256(data).hexdigest()  # of the original bytes
    zstd_cli = subprocess.run(["zstd", "-t", "-q", str(out)], capture_output=True)
    assert zstd_cli.returncode == 0, zstd_cli.stderr  # a standard frame the CLI accepts


def test_size_cap_cuts_and_says_why(tmp_path):
    data = os.urandom(3 << 20)
    out = tmp_path / "core"
    result = copy_via_pipe(data, str(out), StreamLimits(max_bytes=1 << 20))
    assert not result.complete and result.reason == "size_limit"
    assert out.read_bytes() == data[: 1 << 20] and result.size == 1 << 20
    assert result.sha256 == hashlib.sha256(data[: 1 << 20]).hexdigest()
    exact = copy_via_pipe(data, str(tmp_path / "exact"), StreamLimits(max_bytes=len(data), max_reason="rlimit_core"))
    assert exact.complete and exact.reason is None
    rl = copy_via_pipe(data, str(tmp_path / "rl"), StreamLimits(max_bytes=5000, max_reason="rlimit_core"))
    assert rl.reason == "rlimit_core" and (tmp_path / "rl").stat().st_size == 5000


def test_deadline_stops_a_stalled_dump(tmp_path):
    r, w = os.pipe()
    os.write(w, b"x" * 60000)  # fits the default pipe; then nothing more, never closed
    fd = os.open(tmp_path / "core", os.O_WRONLY | os.O_CREAT, 0o600)
    start = time.monotonic()
    try:
        result = copy_core(r, fd, StreamLimits(deadline=time.monotonic() + 0.5))
    finally:
        os.close(fd)
        os.close(r)
        os.close(w)
    assert 0.4 < time.monotonic() - start < 5
    assert not result.complete and result.reason == "timeout" and result.size == 60000


def test_keep_free_floor(tmp_path):
    st = os.statvfs(tmp_path)
    free = st.f_bavail * st.f_frsize
    data = os.urandom(2 << 20)
    result = copy_via_pipe(data, str(tmp_path / "core"), StreamLimits(keep_free_bytes=free + (1 << 30)))
    assert not result.complete and result.reason == "keep_free" and result.size == 0
    # a floor just under the free space lets about the difference through, never more
    result = copy_via_pipe(data, str(tmp_path / "core2"), StreamLimits(keep_free_bytes=free - (1 << 20)))
    assert result.reason == "keep_free" and 0 < result.size <= (1 << 20) + (64 << 10)
    assert (tmp_path / "core2").read_bytes() == data[: result.size]
    assert result.sha256 == hashlib.sha256(data[: result.size]).hexdigest()


def test_file_object_source(tmp_path):
    import io

    data = synthetic_core(1)
    fd = os.open(tmp_path / "core", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        result = copy_core(io.BytesIO(data), fd, StreamLimits())
    finally:
        os.close(fd)
    assert result.complete and (tmp_path / "core").read_bytes() == data


def test_enlarge_pipe():
    r, w = os.pipe()
    try:
        assert enlarge_pipe(r) >= CHUNK
    finally:
        os.close(r)
        os.close(w)


def test_memory_is_bounded_whatever_the_size(tmp_path):
    """Python-side allocations stay at a few MiB for a 96 MiB core, raw and compressed."""
    chunk = synthetic_core(4)
    total = 96 << 20

    def source() -> int:
        r, w = os.pipe()

        def writer() -> None:
            sent = 0
            while sent < total:
                sent += os.write(w, chunk[: min(len(chunk), total - sent)])
            os.close(w)

        threading.Thread(target=writer, daemon=True).start()
        return r

    for limits in (StreamLimits(), StreamLimits(compression="zstd", zstd_threads=0)):
        r = source()
        fd = os.open(tmp_path / "big", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        tracemalloc.start()
        try:
            result = copy_core(r, fd, limits)
            _current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            os.close(fd)
            os.close(r)
        assert result.complete and result.size == total
        assert peak < 8 << 20, f"peak Python allocations {peak} bytes for a {total}-byte core"


@pytest.mark.root
def test_enospc_on_a_small_tmpfs_then_the_next_core_fits(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    try:
        data = os.urandom(8 << 20)
        result = copy_via_pipe(data, str(mnt / "core"), StreamLimits())
        assert not result.complete and result.reason == "no_space"
        assert 0 < result.size <= 4 << 20
        assert (mnt / "core").read_bytes() == data[: result.size]
        os.unlink(mnt / "core")
        small = os.urandom(1 << 20)
        again = copy_via_pipe(small, str(mnt / "core2"), StreamLimits())
        assert again.complete and (mnt / "core2").read_bytes() == small
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
