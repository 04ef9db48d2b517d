"""Retention: the first N and latest M cores of one signature stay in a directory, the others go
with their metadata and sysroot (never following a link a tenant planted); in the node location the
store entries no core links to any more go too; pruned cores' CoreDumps say so."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tests.agent_support import SIG_A, SIG_B, retained_core
from tests.kube_apiserver import Echo, FakeApiServer, Recorded
from webhook.agent import index as idx
from webhook.agent import retention
from webhook.agent.analysis import SignatureWorker
from webhook.agent.index_edge import CustomObjectsEdge
from webhook.agent.index_writer import IndexWriter
from webhook.agent.limits import apply_retention


def test_cores_in_takes_current_and_older_metadata_only(tmp_path):
    """A core's metadata has ``digest`` (``sha256`` when an older agent wrote it); other JSON is not a core's."""
    retained_core(tmp_path, "core.new", 1700000001, SIG_A)
    retained_core(tmp_path, "core.old", 1700000000, SIG_A, sha256="5" * 64)
    doc = json.loads((tmp_path / "core.old.json").read_text())
    del doc["digest"]
    (tmp_path / "core.old.json").write_text(json.dumps(doc))
    (tmp_path / "config.json").write_text(json.dumps({"file": "config", "time": 1}))
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert sorted(k.name for k in retention.cores_in(fd)) == ["core.new", "core.old"]
    finally:
        os.close(fd)


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
        retained_core(d, f"core.{i}", 1700000000 + i, SIG_A)
    retained_core(d, "core.other", 1700000003, SIG_B)
    retained_core(d, "core.snap", 1700000004, SIG_A, gcore=True)
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


def _pruned_with_index(d: Path, server: FakeApiServer) -> tuple[IndexWriter, list[str]]:
    """Four cores of one signature indexed, then the worker's retention (1 first, 2 latest) with
    the index told of what it deleted: the names of the CoreDumps created, in crash order."""
    base = "/apis/coredump-webhook.io/v1alpha1/namespaces/shop/coredumps"
    server.route("POST", base, Echo())
    server.route("PUT", base + "/*", Echo())
    writer = IndexWriter(CustomObjectsEdge(server.api()), writes_per_second=1000, backoff=0.05)
    for i in range(4):
        retained_core(d, f"core.{i}", 1700000000 + i, SIG_A)
        summary = {**json.loads((d / f"core.{i}.json").read_text()), "outcome": "written", "identity": "verified"}
        assert writer.submit(summary)
    assert writer.flush(20)
    names = [json.loads(r["body"])["metadata"]["name"] for r in server.requests if r["method"] == "POST"]
    worker = SignatureWorker(lambda: [], retention=(1, 2), on_pruned=writer.mark_pruned)
    job_doc = json.loads((d / "core.3.json").read_text())
    from webhook.agent.analysis import SignatureJob

    job = SignatureJob(os.open(d, os.O_RDONLY | os.O_DIRECTORY), "core.3", "core.3.json", job_doc)
    worker._retain(job, {"signature": SIG_A})
    job.close()
    worker.close()
    assert not (d / "core.1").exists() and (d / "core.0").exists() and (d / "core.2").exists()
    assert writer.flush(20)
    return writer, names


def test_retention_deletes_the_core_file_and_its_coredump_together(tmp_path):
    """The worker prunes after a signature lands; the CoreDump this agent wrote for the pruned
    core is deleted with it (the only delete the agent makes), the others stay."""
    d = tmp_path / "cores"
    d.mkdir()
    with FakeApiServer() as server:
        server.route("DELETE", "/apis/coredump-webhook.io/v1alpha1/namespaces/shop/coredumps/*",
                     Recorded(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}))
        writer, names = _pruned_with_index(d, server)
        deletes = [r["path"].rsplit("/", 1)[1] for r in server.requests if r["method"] == "DELETE"]
        assert deletes == [names[1]]  # core.1's record, nothing else
        assert not [r for r in server.requests if r["method"] == "PUT"]
        assert (writer.deleted, writer.failed) == (1, 0)
        # a core this agent never indexed (another agent's, or from before it ran): no call at all
        writer.mark_pruned({"namespace": "shop", "pod": "web-0", "pod_uid": "u-1", "registered": True,
                            "identity": "verified", "digest": "xxh128:" + "9" * 32})
        assert writer.flush(20)
        assert len([r for r in server.requests if r["method"] == "DELETE"]) == 1
        writer.close()


def test_a_refused_delete_marks_the_record_pruned_and_a_missing_one_is_left_alone(tmp_path):
    """An older install's RBAC has no `delete` (403): the record then says Pruned; a record a user
    already deleted (404) gets nothing more."""
    status = {"kind": "Status", "apiVersion": "v1", "status": "Failure"}
    d = tmp_path / "cores"
    d.mkdir()
    with FakeApiServer() as server:
        server.route("DELETE", "/apis/coredump-webhook.io/v1alpha1/namespaces/shop/coredumps/*",
                     Recorded(403, {**status, "code": 403, "reason": "Forbidden"}))
        writer, names = _pruned_with_index(d, server)
        puts = [json.loads(r["body"]) for r in server.requests if r["method"] == "PUT"]
        assert [(p["metadata"]["name"], p["status"]["state"]) for p in puts] == [(names[1], "Pruned")]
        assert puts[0]["metadata"]["resourceVersion"]  # an update of what the server answered
        assert (writer.deleted, writer.updated, writer.failed) == (0, 1, 0)
        writer.close()
    d2 = tmp_path / "cores2"
    d2.mkdir()
    with FakeApiServer() as server:
        server.route("DELETE", "/apis/coredump-webhook.io/v1alpha1/namespaces/shop/coredumps/*",
                     Recorded(404, {**status, "code": 404, "reason": "NotFound"}))
        writer, names = _pruned_with_index(d2, server)
        assert [r["method"] for r in server.requests if r["method"] != "POST"] == ["DELETE"]
        assert (writer.deleted, writer.updated, writer.failed) == (0, 0, 0)
        writer.close()


def test_node_location_retention_takes_companions_and_unlinked_store_entries(tmp_path):
    root = tmp_path / "cores"
    d = root / "shop" / "web-0" / "app"
    d.mkdir(parents=True)
    store = root / "shop" / ".symbols" / "buildid"
    for bid in ("abc", "def"):
        (store / bid).mkdir(parents=True)
        (store / bid / "executable").write_bytes(b"\x7fELF " + bid.encode() * 1000)
    retained_core(d, "core.old", 1, SIG_A)
    retained_core(d, "core.new", 2, SIG_A)
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
    retained_core(d, "core.old-a", now - 10 * 86400, SIG_A)
    retained_core(d, "core.old-b", now - 9 * 86400, SIG_B)
    retained_core(d, "core.new-b", now - 3600, SIG_B)
    (d / "notes.json").write_text('{"not": "a core"}')
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        gone = retention.prune(fd, SIG_B, "crash", 0, 0, max_age=7 * 86400, now=now)
    finally:
        os.close(fd)
    assert sorted(g["file"] for g in gone) == ["core.old-a", "core.old-b"]
    assert sorted(p.name for p in d.iterdir()) == ["core.new-b", "core.new-b.json", "core.new-b.sysroot", "notes.json"]


def test_a_forged_metadata_file_cannot_get_another_namespace_s_record_deleted(tmp_path):
    """The metadata beside a core is in the tenant's volume: rewritten to name a record this agent
    wrote in another namespace, retention still deletes only the file, never that record."""
    d = tmp_path / "cores"
    d.mkdir()
    with FakeApiServer() as server:
        for ns in ("shop", "payments"):
            server.route("DELETE", f"/apis/coredump-webhook.io/v1alpha1/namespaces/{ns}/coredumps/*",
                         Recorded(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}))
        server.route("POST", "/apis/coredump-webhook.io/v1alpha1/namespaces/payments/coredumps", Echo())
        writer = IndexWriter(CustomObjectsEdge(server.api()), writes_per_second=1000, backoff=0.05)
        victim = {"namespace": "payments", "pod": "pay-0", "pod_uid": "u-9", "registered": True, "identity": "verified",
                  "digest": "xxh128:" + "7" * 32, "outcome": "written", "path": "/cores/core.pay", "time": 1700000000}
        assert writer.submit(victim)
        assert writer.flush(20)
        for i in range(4):
            retained_core(d, f"core.{i}", 1700000000 + i, SIG_A)
        forged = {**json.loads((d / "core.1.json").read_text()), "namespace": "payments", "pod": "pay-0",
                  "pod_uid": "u-9", "digest": "xxh128:" + "7" * 32}
        (d / "core.1.json").write_text(json.dumps(forged))
        from webhook.agent.analysis import SignatureJob

        worker = SignatureWorker(lambda: [], retention=(1, 2), on_pruned=writer.mark_pruned)
        job = SignatureJob(os.open(d, os.O_RDONLY | os.O_DIRECTORY), "core.3", "core.3.json",
                           json.loads((d / "core.3.json").read_text()))
        worker._retain(job, {"signature": SIG_A})
        job.close()
        worker.close()
        assert not (d / "core.1").exists()  # the file went
        assert writer.flush(20)
        assert [r for r in server.requests if r["method"] == "DELETE"] == []
        writer.close()


def test_records_follow_the_files_first_and_latest_and_the_count_goes_on(tmp_path):
    """A crash loop in one pod's directory with retention (1 first, 2 latest) and the index on the
    same rule, crash by crash as the agent runs them (retention, then the CoreDump): the records
    left are exactly those of the files left, and their counts add up to every crash."""
    d = tmp_path / "cores"
    d.mkdir()
    base = "/apis/coredump-webhook.io/v1alpha1/namespaces/shop/coredumps"
    with FakeApiServer() as server:
        server.route("POST", base, Echo())
        server.route("PUT", base + "/*", Echo())
        server.route("DELETE", base + "/*", Recorded(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}))
        writer = IndexWriter(CustomObjectsEdge(server.api()), keep_first=1, keep_latest=2,
                                 writes_per_second=1000, backoff=0.05)
        worker = SignatureWorker(lambda: [], retention=(1, 2), on_pruned=writer.mark_pruned)
        from webhook.agent.analysis import SignatureJob

        names = {}
        for i in range(8):
            retained_core(d, f"core.{i}", 1700000000 + i, SIG_A)
            doc = {**json.loads((d / f"core.{i}.json").read_text()), "outcome": "written"}
            names[f"core.{i}"] = idx.coredump_name(doc)
            job = SignatureJob(os.open(d, os.O_RDONLY | os.O_DIRECTORY), f"core.{i}", f"core.{i}.json", doc)
            worker._retain(job, {"signature": SIG_A})
            job.close()
            assert writer.submit(doc)
            assert writer.flush(20)
        worker.close()
        files = sorted(p.name for p in d.iterdir() if p.name.startswith("core.") and "." not in p.name[5:])
        assert files == ["core.0", "core.6", "core.7"]
        live: dict[str, dict] = {}
        for r in server.requests:
            if r["method"] in ("POST", "PUT"):
                body = json.loads(r["body"])
                live[body["metadata"]["name"]] = body
            elif r["method"] == "DELETE":
                del live[r["path"].rsplit("/", 1)[1]]
        assert sorted(live) == sorted(names[f] for f in files)
        assert sum(b["status"]["count"] for b in live.values()) == 8
        assert live[names["core.0"]]["status"]["count"] == 1  # the first is the first
        assert writer.failed == 0
        writer.close()


def test_node_location_retention_deletes_the_records_of_the_cores_it_removes(tmp_path):
    """The node location's age limit removes a core: its CoreDump goes with it (the agent's
    retention loop passes the index), the record of the core kept stays."""
    root = tmp_path / "cores"
    d = root / "shop" / "web-0" / "app"
    d.mkdir(parents=True)
    base = "/apis/coredump-webhook.io/v1alpha1/namespaces/shop/coredumps"
    with FakeApiServer() as server:
        server.route("POST", base, Echo())
        server.route("DELETE", base + "/*", Recorded(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}))
        writer = IndexWriter(CustomObjectsEdge(server.api()), writes_per_second=1000, backoff=0.05)
        now = time.time()
        names = {}
        for name, t in (("core.old", now - 7200), ("core.new", now)):
            retained_core(d, name, int(t), SIG_A)
            for p in (d / name, d / (name + ".json")):
                os.utime(p, (t, t))
            doc = {**json.loads((d / (name + ".json")).read_text()), "outcome": "written", "destination": "node"}
            names[name] = idx.coredump_name(doc)
            assert writer.submit(doc)
        assert writer.flush(20)
        result = apply_retention(str(root), max_age_seconds=3600, max_total_bytes=0, now=now,
                                 on_removed=writer.mark_pruned)
        assert any(p.endswith("core.old") for p in result.removed) and (d / "core.new").exists()
        assert writer.flush(20)
        deletes = [r["path"].rsplit("/", 1)[1] for r in server.requests if r["method"] == "DELETE"]
        assert deletes == [names["core.old"]]
        writer.close()


def test_node_retention_leaves_dumps_in_flight_and_orphans_and_survives_a_failing_listener(tmp_path, caplog):
    """A fresh temporary file is a dump in flight (neither removed nor counted), a stale one is an
    old file like any other; a companion without its core stays for the store sweep; a listener
    that raises is logged and the others still hear; an emptied directory goes, never the root."""
    from webhook.agent.writer import TMP_PREFIX

    root = tmp_path / "cores"
    d = root / "shop" / "web-0"
    d.mkdir(parents=True)
    now = time.time()
    old = now - 30 * 86400
    for name, t in (("core.a", old), ("core.b", old), (TMP_PREFIX + "fresh", old), (TMP_PREFIX + "stale", old)):
        (d / name).write_bytes(b"x" * 8192)
        os.utime(d / name, (t, t))
    os.utime(d / (TMP_PREFIX + "fresh"), (now, now))  # mtime decides: fresh, however old its core
    for core in ("core.a", "core.b"):
        (d / f"{core}.json").write_text(json.dumps({"file": core}))
        os.utime(d / f"{core}.json", (old, old))
    for companion in ("orphan.sysroot", "orphan.d"):
        (d / companion).mkdir()
        (d / companion / "exe").write_bytes(b"y")
        os.utime(d / companion / "exe", (old, old))
    (root / "empty" / "deeper").mkdir(parents=True)
    heard = []

    def listener(doc):
        heard.append(doc["file"])
        raise RuntimeError("index down")

    result = apply_retention(str(root), max_age_seconds=86400, max_total_bytes=0, now=now, on_removed=listener)
    assert sorted(heard) == ["core.a", "core.b"]
    assert sorted(p.name for p in d.iterdir()) == sorted([TMP_PREFIX + "fresh", "orphan.d", "orphan.sysroot"])
    assert str(d / (TMP_PREFIX + "stale")) in result.removed and str(d / (TMP_PREFIX + "fresh")) not in result.removed
    assert not (root / "empty").exists() and root.is_dir()
    assert result.kept_bytes == 0 and result.freed_bytes >= 3 * 8192
    assert len([r for r in caplog.records if r.getMessage() == "could not report a removed core"]) == 2
    # nothing over the bound: only the ages count; a missing root is nothing to do
    assert apply_retention(str(tmp_path / "none"), max_age_seconds=1, max_total_bytes=1).removed == ()
