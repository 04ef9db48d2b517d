"""Streaming a core: sparse output, zstd, the digest, the size cap, the free-space floor, the
deadline, ENOSPC on a real small tmpfs, and bounded memory whatever the size."""

from __future__ import annotations

import os
import subprocess
import threading
import time
import tracemalloc

import pytest
import xxhash
import zstandard

from tests.agent_support import feed_pipe, synthetic_core
from webhook.agent.pipe_source import enlarge_pipe
from webhook.agent.stream import CHUNK, StreamLimits, copy_core

pytestmark = pytest.mark.timeout(120)


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
    assert result.digest == "xxh128:" + xxhash.xxh3_128(data).hexdigest()
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
    assert result.digest == "xxh128:" + xxhash.xxh3_128(data).hexdigest()  # of the original bytes
    zstd_cli = subprocess.run(["zstd", "-t", "-q", str(out)], capture_output=True)
    assert zstd_cli.returncode == 0, zstd_cli.stderr  # a standard frame the CLI accepts


def test_size_cap_cuts_and_says_why(tmp_path):
    data = os.urandom(3 << 20)
    out = tmp_path / "core"
    result = copy_via_pipe(data, str(out), StreamLimits(max_bytes=1 << 20))
    assert not result.complete and result.reason == "size_limit"
    assert out.read_bytes() == data[: 1 << 20] and result.size == 1 << 20
    assert result.digest == "xxh128:" + xxhash.xxh3_128(data[: 1 << 20]).hexdigest()
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


@pytest.fixture
def private_tmpfs(tmp_path):
    """A filesystem nobody else writes to, so its free space only moves with this test."""
    import subprocess

    mnt = tmp_path / "fs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.root
def test_keep_free_floor(private_tmpfs):
    tmp_path = private_tmpfs
    st = os.statvfs(tmp_path)
    free = st.f_bavail * st.f_frsize
    data = os.urandom(2 << 20)
    result = copy_via_pipe(data, str(tmp_path / "core"), StreamLimits(keep_free_bytes=free + (1 << 30)))
    assert not result.complete and result.reason == "keep_free" and result.size == 0
    # a floor just under the free space lets about the difference through, never more
    result = copy_via_pipe(data, str(tmp_path / "core2"), StreamLimits(keep_free_bytes=free - (1 << 20)))
    assert result.reason == "keep_free" and 0 < result.size <= (1 << 20) + (64 << 10)
    assert (tmp_path / "core2").read_bytes() == data[: result.size]
    assert result.digest == "xxh128:" + xxhash.xxh3_128(data[: result.size]).hexdigest()


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


# --- hole detection: exact at chunk boundaries, odd tails, all-zero and zero-free inputs ---------
from webhook.agent.core_sink import BLOCK, ZERO_STEP, zero_runs  # noqa: E402


def reference_zero_runs(buf: bytes, n: int, offset: int) -> list[tuple[int, int]]:
    """The obvious per-block definition: maximal runs of file-aligned all-zero whole blocks."""
    runs: list[tuple[int, int]] = []
    off = (-offset) % BLOCK
    while off + BLOCK <= n:
        if not any(buf[off:off + BLOCK]):
            if runs and runs[-1][1] == off:
                runs[-1] = (runs[-1][0], off + BLOCK)
            else:
                runs.append((off, off + BLOCK))
        off += BLOCK
    return runs


def blocks(kinds: str, seed: int = 7) -> bytes:
    """One BLOCK per letter: z zero, r random, f zero but the first byte, l zero but the last."""
    import random

    rnd = random.Random(seed)
    out = []
    for k in kinds:
        if k == "z":
            out.append(bytes(BLOCK))
        elif k == "r":
            out.append(rnd.randbytes(BLOCK))
        elif k == "f":
            out.append(b"\x01" + bytes(BLOCK - 1))
        else:
            out.append(bytes(BLOCK - 1) + b"\x01")
    return b"".join(out)


def test_zero_runs_matches_the_per_block_definition():
    import random

    rnd = random.Random(3)
    per_chunk = CHUNK // BLOCK
    layouts = [
        "z" * per_chunk, "r" * per_chunk, "rz" * (per_chunk // 2), "zr" * (per_chunk // 2),
        "z" * 17 + "r" + "z" * (per_chunk - 18),  # a run through a 64 KiB step boundary
        "r" + "z" * (per_chunk - 1),  # zeros not aligned to a 64 KiB step
        "f" * per_chunk, "l" * per_chunk, ("z" * 15 + "l") * (per_chunk // 16),
    ] + ["".join(rnd.choice("zzzrfl") for _ in range(per_chunk)) for _ in range(20)]
    for layout in layouts:
        buf = bytearray(blocks(layout))
        for n in (len(buf), len(buf) - 1, len(buf) - BLOCK, 3 * BLOCK + 5, BLOCK - 1, 0):
            for offset in (0, BLOCK, 1, BLOCK - 1, 12345):
                assert zero_runs(buf, n, offset) == reference_zero_runs(bytes(buf), n, offset), (layout[:40], n, offset)
    assert zero_runs(bytearray(CHUNK), CHUNK) == [(0, CHUNK)]
    assert zero_runs(bytearray(b"\x01" * CHUNK), CHUNK) == []
    assert ZERO_STEP % BLOCK == 0


def holes_dir(tmp_path):
    """tmpfs counts exactly the pages a file holds; fall back to tmp_path (>= checks only)."""
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        import tempfile

        return tempfile.mkdtemp(dir="/dev/shm", prefix="cdw-holes-"), True
    return str(tmp_path), False


@pytest.mark.parametrize("layout,tail", [
    ("all-zero", 0), ("all-zero", 100), ("no-zero", 0), ("no-zero", 5),
    ("across-chunks", 0), ("across-chunks", 4095), ("single-bytes", 1),
])
def test_sparse_output_at_chunk_boundaries_and_odd_tails(tmp_path, layout, tail):
    """Bytes read back equal the input; the file holds a page for exactly each block that is
    not all zero (a partial tail block is always written); chunk edges change nothing."""
    import random
    import shutil

    rnd = random.Random(11)
    per_chunk = CHUNK // BLOCK
    if layout == "all-zero":
        kinds = "z" * (3 * per_chunk)
    elif layout == "no-zero":
        kinds = "r" * (2 * per_chunk + 3)
    elif layout == "across-chunks":  # zero runs and data blocks straddling both 1 MiB edges
        kinds = ("r" * (per_chunk - 2) + "zzzz" + "r" * (per_chunk - 5) + "zr" + "z" * 40
                 + "l" + "z" * 100 + "f")
    else:  # zero but one byte, alternating with zero blocks and random runs
        kinds = "".join(rnd.choice("zzlfr") for _ in range(2 * per_chunk + 77))
    tail_bytes = bytes(tail) if layout == "all-zero" else rnd.randbytes(tail)
    data = blocks(kinds) + tail_bytes
    expected_pages = sum(k != "z" for k in kinds) + (1 if tail else 0)
    d, exact = holes_dir(tmp_path)
    try:
        # odd write sizes on the pipe: reads never line up with blocks, the chunks still do
        r, w = os.pipe()

        def writer() -> None:
            view = memoryview(data)
            step = 4097 * 3
            while view:
                view = view[os.write(w, view[:step]):]
            os.close(w)

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        out = os.path.join(d, "core")
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            result = copy_core(r, fd, StreamLimits())
        finally:
            os.close(fd)
            os.close(r)
            t.join(10)
        assert result.complete and result.size == len(data) == os.stat(out).st_size == result.written
        with open(out, "rb") as f:
            assert f.read() == data
        assert result.digest == "xxh128:" + xxhash.xxh3_128(data).hexdigest()
        allocated = os.stat(out).st_blocks * 512
        if exact:
            assert allocated == expected_pages * BLOCK, (allocated, expected_pages)
        else:
            assert allocated >= expected_pages * BLOCK
    finally:
        if d != str(tmp_path):
            shutil.rmtree(d, ignore_errors=True)


def test_a_cut_inside_a_chunk_hashes_exactly_the_kept_bytes(tmp_path):
    """The size cap inside the second chunk of a ring of buffers: file, size and digest agree."""
    data = synthetic_core(6)
    for cap in (CHUNK + 4096 + 7, 5 * CHUNK - 1, 1):
        result = copy_via_pipe(data, str(tmp_path / "cut"), StreamLimits(max_bytes=cap))
        assert result.reason == "size_limit" and result.size == cap
        assert (tmp_path / "cut").read_bytes() == data[:cap]
        assert result.digest == "xxh128:" + xxhash.xxh3_128(data[:cap]).hexdigest()


# --- the crash path's part (splice) and what waits until the process is released --------------
from webhook.agent.finish import finish_core  # noqa: E402
from webhook.agent.stream import stream_core  # noqa: E402


def test_a_pipe_is_spliced_and_hash_and_holes_wait_for_finish(tmp_path):
    """Onto a disk filesystem stream_core splices: it leaves the digest empty and the zero
    blocks as data; finish_core, after the release, computes the hash of exactly those bytes
    and punches the zero blocks out."""
    import shutil
    import tempfile
    from pathlib import Path

    from webhook.agent.stream import MEMORY_FS_MAGIC, _fs_magic

    data = blocks("rzzzzr" * 300 + "zzr") + b"odd tail"
    out = tmp_path / "core"
    fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    if _fs_magic(fd) in MEMORY_FS_MAGIC:  # tmp_path on tmpfs: /var/tmp is on disk on Debian
        os.close(fd)
        out = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="cdw-splice-")) / "core"
        fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        assert _fs_magic(fd) not in MEMORY_FS_MAGIC, "no disk filesystem to splice onto"
    r, t = feed_pipe(data)
    try:
        streamed = stream_core(r, fd, StreamLimits())
        assert streamed.complete and streamed.size == len(data) and streamed.digest == ""
        assert streamed.holes_pending  # spliced: nobody looked at the bytes yet
        assert out.read_bytes() == data
        os.fsync(fd)  # allocation settles (delayed allocation)
        dense = os.stat(out).st_blocks * 512
        assert dense >= len(data) - BLOCK  # every block is still allocated
        done = finish_core(fd, streamed, StreamLimits())
        os.fsync(fd)
    finally:
        os.close(fd)
        os.close(r)
        t.join(5)
    assert done.digest == "xxh128:" + xxhash.xxh3_128(data).hexdigest() and not done.holes_pending
    assert out.read_bytes() == data  # the same bytes, now with holes
    data_pages = "rzzzzr".count("r") * 300 + 1 + 1  # + the partial tail block
    allocated = os.stat(out).st_blocks * 512
    assert data_pages * BLOCK <= allocated <= data_pages * BLOCK + (64 << 10)  # + extent blocks
    if out.parent != tmp_path:
        shutil.rmtree(out.parent, ignore_errors=True)


def test_onto_tmpfs_the_pipe_is_read_with_holes_inline():
    """tmpfs: the buffered path (faster there than splice), zero blocks never written."""
    import shutil
    import tempfile

    data = blocks("rzzzzr" * 300 + "zzr") + b"odd tail"
    d = tempfile.mkdtemp(dir="/dev/shm", prefix="cdw-inline-")
    try:
        out = os.path.join(d, "core")
        r, t = feed_pipe(data)
        fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            streamed = stream_core(r, fd, StreamLimits())
            assert streamed.complete and not streamed.holes_pending and streamed.digest == ""
            data_pages = "rzzzzr".count("r") * 300 + 1 + 1
            assert os.stat(out).st_blocks * 512 == data_pages * BLOCK  # holes already
            done = finish_core(fd, streamed, StreamLimits())
        finally:
            os.close(fd)
            os.close(r)
            t.join(5)
        assert done.digest == "xxh128:" + xxhash.xxh3_128(data).hexdigest()
        with open(out, "rb") as f:
            assert f.read() == data
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_a_file_source_is_not_spliced_and_holes_are_made_inline(tmp_path):
    import io

    data = synthetic_core(2)
    fd = os.open(tmp_path / "core", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        streamed = stream_core(io.BytesIO(data), fd, StreamLimits())
        assert streamed.complete and not streamed.holes_pending and streamed.digest == ""
        done = finish_core(fd, streamed, StreamLimits())
    finally:
        os.close(fd)
    assert done.digest == "xxh128:" + xxhash.xxh3_128(data).hexdigest()
    assert (tmp_path / "core").read_bytes() == data


def test_finish_hashes_with_the_chosen_algorithm_and_never_invents_one(tmp_path):
    """sha256 when the agent's setting says so (plain and zstd: the original bytes); an algorithm
    it does not know leaves the digest empty (the metadata's null), never a guess."""
    import hashlib
    import io

    data = synthetic_core(2)
    for compression in ("none", "zstd"):
        limits = StreamLimits(compression=compression)
        fd = os.open(tmp_path / f"core.{compression}", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            streamed = stream_core(io.BytesIO(data), fd, limits)
            assert finish_core(fd, streamed, limits, "sha256").digest == "sha256:" + hashlib.sha256(data).hexdigest()
            assert finish_core(fd, streamed, limits, "md5").digest == ""
        finally:
            os.close(fd)


def test_a_pipe_cut_mid_splice_ends_as_read_error_with_a_true_hash(tmp_path):
    """The server's cut (a directory dup2'ed over the pipe's fd) makes splice fail with EINVAL:
    the buffered path takes over, reads EISDIR, and the core is marked; its hash is right."""
    first = os.urandom(2 << 20)
    r, w = os.pipe()
    os.write(w, first[: 1 << 16])
    out = tmp_path / "core"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)  # write-only: finish reopens it to read
    box = {}

    def run() -> None:
        box["result"] = copy_core(r, fd, StreamLimits(deadline=time.monotonic() + 30))

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 10
    while os.stat(out).st_size < (1 << 16) and time.monotonic() < deadline:
        time.sleep(0.01)
    placeholder = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    os.dup2(placeholder, r)  # what CoreFd.cut does; the pipe's read end is now closed
    try:
        os.write(w, first[1 << 16:])
    except BrokenPipeError:
        pass
    t.join(30)
    os.close(fd)
    os.close(w)
    os.close(r)
    os.close(placeholder)
    result = box["result"]
    assert not result.complete and result.reason == "read_error"
    kept = out.read_bytes()
    assert len(kept) == result.size >= 1 << 16 and first.startswith(kept)
    assert result.digest == "xxh128:" + xxhash.xxh3_128(kept).hexdigest()


@pytest.mark.root
def test_a_zstd_core_cut_by_the_floor_is_hashed_as_far_as_it_decompresses(private_tmpfs):
    """A truncated frame (the free-space floor hit mid-write): finish_core hashes and counts
    exactly what the file yields when decompressed, never a guess."""
    st = os.statvfs(private_tmpfs)
    free = st.f_bavail * st.f_frsize
    data = os.urandom(6 << 20)  # incompressible: the frame grows as fast as the input
    out = private_tmpfs / "core.zst"
    limits = StreamLimits(keep_free_bytes=free - (2 << 20), compression="zstd", zstd_threads=0)
    result = copy_via_pipe(data, str(out), limits)
    assert not result.complete and result.reason == "keep_free"
    got = bytearray()
    with open(out, "rb") as f:
        reader = zstandard.ZstdDecompressor().stream_reader(f)
        try:
            while chunk := reader.read(1 << 20):
                got += chunk
        except zstandard.ZstdError:
            pass
    assert 0 < len(got) == result.size < len(data) and data.startswith(bytes(got))
    assert result.digest == "xxh128:" + xxhash.xxh3_128(got).hexdigest()


@pytest.mark.parametrize("code", ["agent_stopped", "timeout"])
def test_a_core_the_server_cut_records_why_it_was_cut(tmp_path, code):
    """The server's cut (CoreFd.cut) says why: a stopping agent's or a dump timeout's cut core
    is marked with that reason, not as a read error of its own."""
    from webhook.agent.corefd import CoreFd

    data = os.urandom(1 << 20)
    r, w = os.pipe()
    os.write(w, data[: 1 << 15])
    core = CoreFd(r)
    out = tmp_path / "core"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
    box = {}
    t = threading.Thread(target=lambda: box.update(result=copy_core(r, fd, StreamLimits(deadline=time.monotonic() + 30))))
    t.start()
    deadline = time.monotonic() + 10
    while os.stat(out).st_size < (1 << 15) and time.monotonic() < deadline:
        time.sleep(0.01)
    placeholder = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    assert core.cut(placeholder, "why, for the log", code)
    os.close(w)
    t.join(30)
    core.release()
    core.release()  # the last holder closes it, and the reason is forgotten with the number
    os.close(fd)
    os.close(placeholder)
    result = box["result"]
    assert not result.complete and result.reason == code and result.size == 1 << 15
    from webhook.agent.stream_limits import cut_reason

    assert cut_reason(r) == "read_error"
