"""Retention: the first N and latest M cores of one signature stay in a directory, the others go
with their metadata and sysroot (never following a link a tenant planted); in the node location the
store entries no core links to any more go too; pruned cores' CoreDumps say so."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tests.inspect_apiserver import Echo, FakeApiServer
from webhook.agent import index as idx
from webhook.agent import retention
from webhook.agent.analysis import SignatureWorker
from webhook.agent.limits import apply_retention

SIG_A, SIG_B = "a" * 64, "b" * 64


def _core(d: Path, name: str, t: int, signature: str, **extra) -> None:
    (d / name).write_bytes(b"\x7fELF core " + name.encode())
    doc = {"file": name, "time": t, "signature": signature, "path": f"/cores/{name}", "namespace": "shop",
           "pod": "web-0", "pod_uid": "u-1", "identity": "verified", "registered": True, "sha256": f"{t:064x}", **extra}
    (d / (name + ".json")).write_text(json.dumps(doc))
    sysroot = d / (name + ".sysroot") / "usr" / "lib"
    sysroot.mkdir(parents=True)
    (sysroot / "libc.so.6").symlink_to("../../../.symbols/buildid/abc/executable")


def test_plan_keeps_the_first_and_the_latest():
    cores = [retention.Kept(f"c{i}", float(i), {}) for i in range(10)]
    assert [c.name for c in retention.plan(cores, 2, 3)] == ["c2", "c3", "c4", "c5", "c6"]
    assert retention.plan(cores[:5], 2, 3) == [] and retention.plan(cores, 0, 0) == []


def test_prune_in_a_directory_never_follows_links(tmp_path):
    d = tmp_path / "cores"
    d.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    for i in range(8):
        _core(d, f"core.{i}", 1700000000 + i, SIG_A)
    _core(d, "core.other", 1700000003, SIG_B)
    _core(d, "core.snap", 1700000004, SIG_A, gcore=True)
    # a planted link inside a sysroot that retention will remove: to a directory outside
    (d / "core.3.sysroot" / "evil").symlink_to(outside)
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        gone = retention.prune(fd, SIG_A, "crash", 2, 3)
    finally:
        os.close(fd)
    assert sorted(g["file"] for g in gone) == ["core.2", "core.3", "core.4"]
    left = sorted(p.name for p in d.iterdir() if not p.name.endswith((".json", ".sysroot")))
    assert left == ["core.0", "core.1", "core.5", "core.6", "core.7", "core.other", "core.snap"]
    assert not (d / "core.3.sysroot").exists() and not (d / "core.3.json").exists()
    assert (outside / "precious").read_text() == "keep me"


def test_signature_worker_applies_retention_and_the_index_marks_pruned(tmp_path):
    """The worker prunes after a signature lands; the CoreDump this agent wrote says Pruned."""
    d = tmp_path / "cores"
    d.mkdir()
    with FakeApiServer() as server:
        server.route("POST", "/apis/coredump-webhook.io/v1alpha1/namespaces/shop/coredumps", Echo())
        server.route("PUT", "/apis/coredump-webhook.io/v1alpha1/namespaces/shop/coredumps/*", Echo())
        writer = idx.IndexWriter(idx.CustomObjectsEdge(server.api()), writes_per_second=1000)
        for i in range(4):
            _core(d, f"core.{i}", 1700000000 + i, SIG_A)
            summary = {**json.loads((d / f"core.{i}.json").read_text()), "outcome": "written"}
            writer.submit(summary)
        assert writer.flush(20)
        worker = SignatureWorker(lambda: [], retention=(1, 2), on_pruned=writer.mark_pruned)
        job_doc = json.loads((d / "core.3.json").read_text())
        found = {"signature": SIG_A}
        from webhook.agent.analysis import SignatureJob

        job = SignatureJob(os.open(d, os.O_RDONLY | os.O_DIRECTORY), "core.3", "core.3.json", job_doc)
        worker._retain(job, found)
        job.close()
        assert not (d / "core.1").exists() and (d / "core.0").exists() and (d / "core.2").exists()
        assert writer.flush(20)
        puts = [json.loads(r["body"]) for r in server.requests if r["method"] == "PUT"]
        assert [p["status"]["state"] for p in puts] == ["Pruned"]
        assert puts[0]["metadata"]["name"] == idx.coredump_name(json.loads(json.dumps({**job_doc, "sha256": f"{1700000001:064x}"})))
        worker.close()
        writer.close()


def test_node_location_retention_takes_companions_and_unlinked_store_entries(tmp_path):
    root = tmp_path / "cores"
    d = root / "shop" / "web-0" / "app"
    d.mkdir(parents=True)
    store = root / "shop" / ".symbols" / "buildid"
    for bid in ("abc", "def"):
        (store / bid).mkdir(parents=True)
        (store / bid / "executable").write_bytes(b"\x7fELF " + bid.encode() * 1000)
    _core(d, "core.old", 1, SIG_A)
    _core(d, "core.new", 2, SIG_A)
    (d / "core.new.sysroot" / "usr" / "lib" / "libc.so.6").unlink()
    (d / "core.new.sysroot" / "usr" / "lib" / "libc.so.6").symlink_to("../../../../../.symbols/buildid/def/executable")
    old = time.time() - 30 * 86400
    for p in (d / "core.old", d / "core.old.json"):
        os.utime(p, (old, old))
    result = apply_retention(str(root), max_age_seconds=7 * 86400, max_total_bytes=0)
    assert not (d / "core.old").exists() and not (d / "core.old.sysroot").exists()
    assert (d / "core.new").exists() and (d / "core.new.sysroot").is_dir()
    # the store: the entry only the removed core used is gone, the other stays; never counted as a core
    assert not (store / "abc").exists() and (store / "def" / "executable").exists()
    assert str(d / "core.old.sysroot") in result.removed


def test_age_limit_in_a_pod_directory_takes_every_signature(tmp_path):
    d = tmp_path / "cores"
    d.mkdir()
    now = 1700100000
    _core(d, "core.old-a", now - 10 * 86400, SIG_A)
    _core(d, "core.old-b", now - 9 * 86400, SIG_B)
    _core(d, "core.new-b", now - 3600, SIG_B)
    (d / "notes.json").write_text('{"not": "a core"}')
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        gone = retention.prune(fd, SIG_B, "crash", 0, 0, max_age=7 * 86400, now=now)
    finally:
        os.close(fd)
    assert sorted(g["file"] for g in gone) == ["core.old-a", "core.old-b"]
    assert sorted(p.name for p in d.iterdir()) == ["core.new-b", "core.new-b.json", "core.new-b.sysroot", "notes.json"]
