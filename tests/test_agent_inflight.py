"""The in-flight journal and the recovery of a killed agent's leftovers (issue 15 §3), on real
files: the node location (reached directly) and a pod whose container is gone (reported); and
the metadata reservation that keeps a cut core's reason on a full volume (§2)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
import xxhash
from prometheus_client import CollectorRegistry

from tests.crash_support import RecordedEvents
from webhook.agent import inflight
from webhook.agent import metadata as meta
from webhook.agent.events import build_event
from webhook.agent.journal import Journal, tmp_names
from webhook.agent.metafile import ReservedMetadata


def _entry(**kw) -> dict:
    core_tmp, meta_tmp = tmp_names(kw.get("name", "core.sleep.42.1700000000"))
    base = {"destination": "node", "directory": "/host", "name": "core.sleep.42.1700000000",
            "tmp_name": core_tmp, "meta_tmp_name": meta_tmp, "compression": "none", "pid": 42, "global_pid": 42,
            "signal": 11, "comm": "sleep", "time": 1700000000, "namespace": None, "pod": None}
    base.update(kw)
    return base


def test_tmp_names_never_collide():
    core, meta_tmp = tmp_names("c" * 300)
    assert core != meta_tmp and len(core) == 255 and core.startswith(".coredump-tmp.")
    assert meta_tmp.startswith(".coredump-tmp.") and not meta_tmp.endswith(".json") and len(meta_tmp) < 255


def test_journal_keeps_others_leftovers_only(tmp_path):
    mine = Journal(str(tmp_path))
    earlier = Journal(str(tmp_path), instance="1-1")
    token = mine.begin(_entry())
    old = earlier.begin(_entry(pid=7))
    (tmp_path / "inflight" / ".torn.tmp").write_text("{")
    (tmp_path / "inflight" / "bad.json").write_text("not json")
    left = mine.leftovers()
    assert [e["pid"] for _, e in left] == [7] and left[0][1]["id"] == old
    assert sorted(os.listdir(tmp_path / "inflight")) == sorted([f"{token}.json", f"{old}.json"])
    mine.end(token)
    mine.end(token)  # idempotent
    assert os.listdir(tmp_path / "inflight") == [f"{old}.json"]
    assert Journal("/proc/1/nonexistent").begin(_entry()) is None  # logged, never raises


def test_node_leftover_becomes_partial_and_empty_one_is_removed(tmp_path):
    cores = tmp_path / "cores"
    (cores / "host").mkdir(parents=True)
    journal = Journal(str(tmp_path), instance="dead-agent")
    full, empty = _entry(), _entry(name="core.sleep.43.1700000001", pid=43, global_pid=43)
    data = b"\x7fELF" + os.urandom(5000)
    (cores / "host" / full["tmp_name"]).write_bytes(data)
    (cores / "host" / full["meta_tmp_name"]).write_bytes(bytes(65536))  # the reservation
    (cores / "host" / "core.sleep.42.1700000000.partial").write_bytes(b"x")  # a name is never replaced
    (cores / "host" / empty["tmp_name"]).write_bytes(b"")
    journal.begin(full)
    journal.begin(empty)
    registry = CollectorRegistry()
    results = inflight.recover(Journal(str(tmp_path)), node_cores_dir=str(cores), node="n1",
                               registry=registry, events=RecordedEvents())
    assert sorted(r.result for r in results) == ["partial", "removed_empty"]
    kept = cores / "host" / "core.sleep.42.1700000000.1.partial"
    assert kept.read_bytes() == data
    meta = json.loads(Path(str(kept) + ".json").read_text())
    assert meta["truncated_reason"] == "agent_restarted" and meta["size"] == len(data)
    assert meta["digest"] == "xxh128:" + xxhash.xxh3_128(data).hexdigest() and meta["node"] == "n1"
    assert sorted(os.listdir(cores / "host")) == ["core.sleep.42.1700000000.1.partial",
                                                  "core.sleep.42.1700000000.1.partial.json",
                                                  "core.sleep.42.1700000000.partial"]
    assert not list((tmp_path / "inflight").iterdir())
    assert registry.get_sample_value("coredump_agent_inflight_recovered_total", {"result": "partial"}) == 1


def test_a_recovered_leftover_is_hashed_with_the_agents_digest_setting(tmp_path):
    cores = tmp_path / "cores"
    (cores / "host").mkdir(parents=True)
    entry = _entry()
    data = b"\x7fELF" + os.urandom(3000)
    (cores / "host" / entry["tmp_name"]).write_bytes(data)
    inflight.Journal(str(tmp_path), instance="dead-agent").begin(entry)
    (rec,) = inflight.recover(inflight.Journal(str(tmp_path)), node_cores_dir=str(cores), digest="sha256")
    assert rec.result == "partial"
    meta = json.loads((cores / "host" / "core.sleep.42.1700000000.partial.json").read_text())
    assert meta["digest"] == "sha256:" + hashlib.sha256(data).hexdigest() and "sha256" not in meta


def test_a_recovered_zstd_leftover_has_no_digest_rather_than_a_wrong_one(tmp_path):
    """The digest covers the original bytes (`coredump get` checks the decompressed download); a
    cut zstd stream's are not at hand, so the metadata says null, never the compressed bytes' hash."""
    import zstandard

    cores = tmp_path / "cores"
    (cores / "host").mkdir(parents=True)
    entry = _entry(compression="zstd")
    stream = zstandard.ZstdCompressor().compress(b"\x7fELF" + os.urandom(20000))
    (cores / "host" / entry["tmp_name"]).write_bytes(stream[: len(stream) // 2])  # cut mid-frame
    inflight.Journal(str(tmp_path), instance="dead-agent").begin(entry)
    (rec,) = inflight.recover(inflight.Journal(str(tmp_path)), node_cores_dir=str(cores))
    assert rec.result == "partial"
    meta = json.loads((cores / "host" / "core.sleep.42.1700000000.zst.partial.json").read_text())
    assert meta["compression"] == "zstd" and meta["truncated_reason"] == "agent_restarted"
    assert meta["digest"] is None and "sha256" not in meta


def test_unreachable_pod_leftover_is_reported_with_its_path(tmp_path):
    journal = Journal(str(tmp_path), instance="dead-agent")
    entry = _entry(destination="pod", directory="/pod/data/dump", name="core.6", namespace="shop", pod="web-0",
                   pod_uid="u-1", container="app", container_id="f" * 64, global_pid=999999999)
    journal.begin(entry)
    events, registry = RecordedEvents(), CollectorRegistry()
    (rec,) = inflight.recover(Journal(str(tmp_path)), node_cores_dir=str(tmp_path / "cores"),
                              events=events, registry=registry)
    assert rec.result == "unreachable" and rec.leftover == f"/pod/data/dump/{entry['tmp_name']}"
    (summary,) = events.seen
    assert summary["outcome"] == "failed" and entry["tmp_name"] in summary["reason"]
    body = build_event(summary, 0)
    assert body["involvedObject"]["name"] == "web-0" and "agent_restarted" in body["message"]
    assert registry.get_sample_value("coredump_agent_inflight_recovered_total", {"result": "unreachable"}) == 1
    assert not list((tmp_path / "inflight").iterdir())


@pytest.mark.root
def test_reserved_metadata_fits_on_a_full_volume(tmp_path):
    vol = tmp_path / "vol"
    vol.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(vol)], check=True)
    try:
        dirfd = os.open(vol, os.O_RDONLY | os.O_DIRECTORY)
        try:
            small = ReservedMetadata(dirfd, "a.json", reserve=8192)
            big = ReservedMetadata(dirfd, "b.json", reserve=8192)
            assert not small.tmp_name.endswith(".json")  # no listing takes it for metadata meanwhile
            with open(vol / "filler", "wb", buffering=0) as f:  # the core fills the volume
                with pytest.raises(OSError):
                    while True:
                        f.write(b"\1" * 4096)
            doc = {"schema": 2, "size": 5, "digest": "x", "truncated": True, "truncated_reason": "no_space"}
            assert small.commit("core.partial.json", doc, meta.dumps) == "core.partial.json"
            huge = dict(doc, binaries=["lib" * 10] * 5000)  # far beyond the reservation
            assert big.commit("core.1.partial.json", huge, meta.dumps) == "core.1.partial.json"
        finally:
            small.discard()  # committed: nothing removed
            big.discard()
            os.close(dirfd)
        assert meta.loads((vol / "core.partial.json").read_bytes()) == doc
        cut = meta.loads((vol / "core.1.partial.json").read_bytes())
        assert cut["truncated_reason"] == "no_space" and cut["metadata_compacted"] is True and "binaries" not in cut
        assert not [n for n in os.listdir(vol) if n.startswith(".coredump-tmp")]
    finally:
        subprocess.run(["umount", str(vol)], check=False)
