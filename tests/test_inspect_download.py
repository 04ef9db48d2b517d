"""Resumable, verified download against local files and a byte source that breaks midway."""

from __future__ import annotations

import hashlib
import io
import os

import pytest
import xxhash

from webhook.inspect import download as dl


class Flaky:
    """A real file read through a source that stops after ``cut`` bytes, like a dropped stream."""

    def __init__(self, path, cut=None, chunk=4096):
        self.path, self.cut, self.chunk = path, cut, chunk
        self.offsets = []

    def read_from(self, offset):
        self.offsets.append(offset)
        sent = 0
        for block in dl.FileSource(self.path, self.chunk).read_from(offset):
            if self.cut is not None and sent + len(block) > self.cut:
                yield block[: self.cut - sent]
                raise ConnectionError("stream closed")
            sent += len(block)
            yield block


@pytest.fixture(params=["xxh128", "sha256"])
def core(tmp_path, request):
    """A core, its digest as the metadata records it (``xxh128:<hex>``, the default, or
    ``sha256:<hex>``), computed by the reference libraries, and its size."""
    p = tmp_path / "core.42"
    p.write_bytes(os.urandom(300_000) + b"\0" * 100_000)
    h = xxhash.xxh3_128() if request.param == "xxh128" else hashlib.sha256()
    h.update(p.read_bytes())
    return p, f"{request.param}:{h.hexdigest()}", p.stat().st_size


def test_download_verifies_and_renames(core, tmp_path):
    src, sha, size = core
    seen = []
    res = dl.download(dl.FileSource(str(src), 65536), str(tmp_path / "out"), digest=sha, size=size,
                      progress=lambda d, t: seen.append((d, t)))
    assert (tmp_path / "out").read_bytes() == src.read_bytes()
    assert res.digest == sha and res.resumed_from == 0 and not (tmp_path / "out.part").exists()
    assert seen[0] == (0, size) and seen[-1] == (size, size)
    again = dl.download(dl.FileSource(str(src)), str(tmp_path / "out"), digest=sha, size=size)
    assert again.already_done


def test_interrupted_download_resumes_from_the_part_file(core, tmp_path):
    src, sha, size = core
    out = str(tmp_path / "out")
    flaky = Flaky(str(src), cut=123_457)
    with pytest.raises(ConnectionError):
        dl.download(flaky, out, digest=sha, size=size)
    assert os.path.getsize(out + ".part") == 123_457 and not os.path.exists(out)
    flaky.cut = None
    res = dl.download(flaky, out, digest=sha, size=size)
    assert flaky.offsets == [0, 123_457]
    assert res.resumed_from == 123_457
    assert open(out, "rb").read() == src.read_bytes()


def test_short_stream_keeps_part_and_says_resume(core, tmp_path):
    src, sha, size = core
    out = str(tmp_path / "out")

    class Short:
        def read_from(self, offset):
            yield src.read_bytes()[offset:1000]

    with pytest.raises(dl.DownloadError, match="run the same command again"):
        dl.download(Short(), out, digest=sha, size=size)
    assert os.path.getsize(out + ".part") == 1000


def test_digest_mismatch_keeps_part_and_no_final_file(core, tmp_path):
    src, sha, size = core
    out = str(tmp_path / "out")
    # A corrupted prefix left by an earlier run: resuming gives the right size but wrong bytes.
    (tmp_path / "out.part").write_bytes(b"X" * 5000)
    with pytest.raises(dl.DownloadError, match="digest mismatch"):
        dl.download(dl.FileSource(str(src)), out, digest=sha, size=size)
    assert not os.path.exists(out)
    assert os.path.getsize(out + ".part") == size


def test_part_larger_than_core_starts_over(core, tmp_path):
    src, sha, size = core
    (tmp_path / "out.part").write_bytes(b"Y" * (size + 10))
    res = dl.download(dl.FileSource(str(src)), str(tmp_path / "out"), digest=sha, size=size)
    assert res.resumed_from == 0 and res.digest == sha


def test_progress_bar_only_on_a_terminal():
    buf = io.StringIO()
    dl.ProgressBar(buf, "core")(10, 100)
    assert buf.getvalue() == ""
    bar = dl.ProgressBar(buf, "core", enabled=True)
    bar(100, 100)
    assert "100%" in buf.getvalue() and buf.getvalue().endswith("\n")
    assert dl.render_progress("c", 512, 1024).count("#") == 15


def test_zstd_core_is_verified_against_the_original_bytes(core, tmp_path):
    import zstandard

    src, sha, size = core
    packed = tmp_path / "core.42.zst"
    packed.write_bytes(zstandard.ZstdCompressor(level=1).compress(src.read_bytes()))
    stored = packed.stat().st_size
    out = str(tmp_path / "got.zst")
    res = dl.download(dl.FileSource(str(packed)), out, digest=sha, size=stored, compression="zstd")
    assert res.digest == sha and open(out, "rb").read() == packed.read_bytes()
    bad = bytearray(packed.read_bytes())
    bad[len(bad) // 2] ^= 0xFF
    packed.write_bytes(bytes(bad))
    with pytest.raises(dl.DownloadError, match="digest mismatch"):
        dl.download(dl.FileSource(str(packed)), str(tmp_path / "bad.zst"), digest=sha, size=stored, compression="zstd")
    assert os.path.exists(str(tmp_path / "bad.zst.part"))


def test_a_malformed_digest_is_an_error_never_a_pass(core, tmp_path):
    src, sha, size = core
    for bad in ("md5:" + "0" * 32, sha.partition(":")[2], sha[:-1], sha.upper()):
        with pytest.raises(dl.DownloadError, match="not one this version can check"):
            dl.download(dl.FileSource(str(src)), str(tmp_path / "out"), digest=bad, size=size)
    assert not (tmp_path / "out").exists()


def test_download_headers_name_the_algorithm():
    xxh, sha = "xxh128:" + "a" * 32, "sha256:" + "b" * 64
    assert dl.digest_headers(xxh) == {"X-Core-Digest": xxh}
    assert dl.digest_headers(sha) == {"X-Core-Digest": sha, "X-Core-SHA256": "b" * 64}
    assert dl.digest_headers("") == {} and dl.digest_headers("xxh128:zz") == {}
