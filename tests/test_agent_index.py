"""The crash index: CoreDump objects built from crash summaries, validated against the CRD's schema,
written through the real kubernetes client to the fake API server (batched, rate limited, retried,
counted once a signature's quota is reached)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.inspect_data import write_core
from tests.kube_apiserver import Echo, FakeApiServer, Recorded
from webhook.agent import index as idx
from webhook.agent.index_edge import CustomObjectsEdge
from webhook.agent.index_writer import STATE_FILE, IndexWriter, index_quota

REPO = Path(__file__).resolve().parent.parent
BASE = "/apis/coredump-webhook.io/v1alpha1/namespaces"


def summary(tmp_path: Path, **over) -> dict:
    """What the crash processor hands its sinks: the outcome plus the metadata the agent wrote."""
    core = write_core(tmp_path, "data/dump/core.web.7", namespace="shop", pod="web-7d9c-x2kqp", container="app",
                      t=1700000000, signature="ab" * 32, frames=["check_order", "main"])
    doc = json.loads(core.with_name(core.name + ".json").read_text())
    doc.update({"outcome": "written", "reason": "registered", "destination": "pod", "path": "/data/dump/core.web.7",
                "owner": "ReplicaSet/web-7d9c", "labels": {"app": "web", "pod-template-hash": "7d9c"},
                "sysroot": "/data/dump/core.web.7.sysroot", "symbols_store": "/data/dump/.symbols",
                "build_id": "9d6e209f292f42f42121de7aa93ccf1c46a3c4a6",
                "backtrace": ["#0 x"] * 200, "identity": "verified"})
    doc.update(over)
    return doc


def test_coredump_from_a_crash_validates_and_is_small(tmp_path, validate, crd):
    s = summary(tmp_path)
    body = idx.build_coredump(s, 1700000100)
    validate(body)
    spec, labels = body["spec"], body["metadata"]["labels"]
    assert body["metadata"]["namespace"] == "shop" and spec["pod"] == "web-7d9c-x2kqp"
    assert spec["topFrames"] == ["check_order", "main"] and spec["frames"] == "check_order < main"
    assert "backtrace" not in json.dumps(body)  # the core's metadata keeps it
    assert spec["owner"] == {"kind": "Deployment", "name": "web"}  # the ReplicaSet's Deployment
    assert labels[idx.LABEL_WORKLOAD] == "deployment.web" and labels[idx.LABEL_SIGNATURE] == "ab" * 8
    assert spec["location"] == {"kind": "pod", "path": "/data/dump/core.web.7", "sysroot": "/data/dump/core.web.7.sysroot",
                                "symbolsStore": "/data/dump/.symbols"}
    assert body["status"] == {"state": "Present", "count": 1, "lastSeen": "2023-11-14T22:15:00Z"}
    # every printer column points at a field the object has
    (version,) = crd["spec"]["versions"]
    for col in version["additionalPrinterColumns"]:
        node = body
        for part in col["jsonPath"].strip(".").split("."):
            node = node[part]
    assert spec["digest"] == s["digest"] and s["digest"].startswith("xxh128:") and "sha256" not in spec
    assert body["metadata"]["name"] == "web-7d9c-x2kqp-" + s["digest"][len("xxh128:"):][:12]
    # an older agent's summary (sha256 only) is indexed with a sha256 digest, named as before
    old = summary(tmp_path, sha256="c" * 64)
    del old["digest"]
    legacy = idx.build_coredump(old, 1700000100)
    validate(legacy)
    assert legacy["spec"]["digest"] == "sha256:" + "c" * 64 and legacy["metadata"]["name"].endswith("-" + "c" * 12)
    # a digest that was not computed (null) is no field at all, never a made-up one
    none = idx.build_coredump(summary(tmp_path, digest=None), 1700000100)
    validate(none)
    assert "digest" not in none["spec"] and "sha256" not in none["spec"]
    # a snapshot is its own kind; a hostile pod name still makes a valid object name
    snap = idx.build_coredump(summary(tmp_path, gcore=True, pod="Web_POD.." + "x" * 300, signature=None,
                                      signature_frames=None), 1700000100)
    validate(snap)
    assert snap["spec"]["kind"] == "snapshot" and idx.LABEL_SIGNATURE not in snap["metadata"]["labels"]


@pytest.mark.parametrize("over", [
    {"registered": False},  # no verified identity: never filed in a namespace
    {"identity": "unverified"},  # names the pod watch has not vouched for
    {"identity": None},
    {"namespace": None},
    {"pod_uid": None},
    {"outcome": "failed", "path": None},
    {"outcome": "rate_limited"},
])
def test_no_coredump_without_a_verified_pod_or_a_written_core(tmp_path, over):
    assert idx.build_coredump(summary(tmp_path, **over), 1700000100) is None


@pytest.fixture
def server():
    with FakeApiServer() as s:
        yield s


def _writer(server, **kw) -> IndexWriter:
    kw.setdefault("writes_per_second", 1000)
    return IndexWriter(CustomObjectsEdge(server.api()), backoff=0.05, **kw)


def _bodies(server, method: str) -> list[dict]:
    return [json.loads(r["body"]) for r in server.requests if r["method"] == method and "/coredumps" in r["path"]]


def _final(server) -> dict[str, dict]:
    """name -> the last body written to it (create or update), without the deleted ones."""
    out: dict[str, dict] = {}
    for r in server.requests:
        if "/coredumps" not in r["path"]:
            continue
        if r["method"] in ("POST", "PUT"):
            body = json.loads(r["body"])
            out[body["metadata"]["name"]] = body
        elif r["method"] == "DELETE":
            out.pop(r["path"].rsplit("/", 1)[1], None)
    return out


def test_writer_keeps_the_first_and_the_latest_and_counts_the_rest(tmp_path, server, validate):
    """A crash loop of one signature in one Deployment (a storm: all queued at once): the first
    crash keeps its record, the latest two have one each, the rest are counted on them; the sum
    of the counts is the number of crashes."""
    server.route("POST", f"{BASE}/shop/coredumps", Echo())
    server.route("PUT", f"{BASE}/shop/coredumps/*", Echo())
    w = _writer(server, keep_first=1, keep_latest=2)
    loop = [summary(tmp_path, digest=f"xxh128:{i + 1:032x}", pod=f"web-7d9c-{i:05d}", time=1700000000 + i) for i in range(12)]
    for doc in loop:
        assert w.submit(doc)
    other = summary(tmp_path, digest="xxh128:" + "f" * 32, signature="cd" * 32, signature_frames=["other_bug", "main"])
    assert w.submit(other)
    assert w.flush(20)
    created, updated = _bodies(server, "POST"), _bodies(server, "PUT")
    assert len(created) == 4  # first 1 + latest 2 for the loop, plus the other bug
    assert len(created) + len(updated) <= 13  # never more writes than crashes
    final = _final(server)
    mine = {n: b for n, b in final.items() if b["spec"]["signature"] == "ab" * 32}
    assert len(mine) == 3 and sum(b["status"]["count"] for b in mine.values()) == 12
    first = idx.build_coredump(loop[0], 0)["metadata"]["name"]
    assert mine[first]["spec"]["pod"] == "web-7d9c-00000" and mine[first]["status"]["count"] == 1
    assert first not in {b["metadata"]["name"] for b in updated}  # the first is never rolled
    assert "web-7d9c-00011" in {b["spec"]["pod"] for b in mine.values()}  # the newest has a record
    for body in updated:
        assert body["metadata"]["resourceVersion"]  # an update of what the server answered
    for body in created + updated:
        validate(body)
    assert (w.created, w.updated, w.failed, w.dropped) == (4, len(updated), 0, 0)
    # crash by crash (each written before the next): the oldest latest record rolls forward
    for i in range(12, 16):
        assert w.submit(summary(tmp_path, digest=f"xxh128:{i + 1:032x}", pod=f"web-7d9c-{i:05d}", time=1700000000 + i))
        assert w.flush(20)
        put = _bodies(server, "PUT")[-1]
        assert put["spec"]["pod"] == f"web-7d9c-{i:05d}" and put["metadata"]["name"] != first
        validate(put)
    assert len(_bodies(server, "POST")) == 4  # still no new object
    mine = {n: b for n, b in _final(server).items() if b["spec"]["signature"] == "ab" * 32}
    assert len(mine) == 3 and sum(b["status"]["count"] for b in mine.values()) == 16
    assert sorted(b["spec"]["pod"] for b in mine.values()) == ["web-7d9c-00000", "web-7d9c-00014", "web-7d9c-00015"]
    w.close()


def test_writer_retries_transient_failures_and_takes_its_own_earlier_create(tmp_path, server):
    status = {"kind": "Status", "apiVersion": "v1", "status": "Failure"}
    server.route("POST", f"{BASE}/shop/coredumps", Recorded(503, {**status, "code": 503, "reason": "ServiceUnavailable"}),
                 Recorded(409, {**status, "code": 409, "reason": "AlreadyExists"}), Echo())
    w = _writer(server)
    assert w.submit(summary(tmp_path))
    assert w.flush(20)
    posts = _bodies(server, "POST")
    assert len(posts) == 2 and posts[0] == posts[1]  # the same object again, not a duplicate
    assert (w.created, w.failed) == (1, 0)
    # a namespace where the CRD is missing or the agent is refused: given up, the queue goes on
    server.route("POST", f"{BASE}/payments/coredumps", Recorded(404, {**status, "code": 404, "reason": "NotFound"}))
    assert w.submit(summary(tmp_path, namespace="payments", digest="xxh128:" + "1" * 32))
    assert w.submit(summary(tmp_path, digest="xxh128:" + "2" * 32))
    assert w.flush(20)
    assert (w.created, w.failed) == (2, 1)
    w.close()


def test_a_record_deleted_by_a_user_gets_a_successor_with_the_count(tmp_path, server, validate):
    status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound"}
    server.route("POST", f"{BASE}/shop/coredumps", Echo())
    server.route("PUT", f"{BASE}/shop/coredumps/*", Recorded(404, status), Echo())
    w = _writer(server, keep_first=0, keep_latest=1)
    w.submit(summary(tmp_path, digest="xxh128:" + "1" * 32))
    assert w.flush(20)
    second = summary(tmp_path, digest="xxh128:" + "2" * 32)
    w.submit(second)
    assert w.flush(20)
    w.submit(summary(tmp_path, digest="xxh128:" + "3" * 32))
    assert w.flush(20)
    posts, puts = _bodies(server, "POST"), _bodies(server, "PUT")
    assert len(posts) == 2 and "resourceVersion" not in posts[1]["metadata"]  # the successor
    assert posts[1]["metadata"]["name"] == idx.coredump_name(second)  # under its own core's name
    assert puts[-1]["metadata"]["name"] == posts[1]["metadata"]["name"]
    assert puts[-1]["status"]["count"] == 3  # every crash counted, none lost
    validate(posts[1])
    w.close()


def test_submit_never_blocks_and_the_overflow_is_counted(tmp_path, server):
    server.route("POST", f"{BASE}/shop/coredumps", Echo())
    w = _writer(server, writes_per_second=0.01, maxsize=3)  # one write, then a 100 s wait per write
    results = [w.submit(summary(tmp_path, digest=f"xxh128:{i:032x}", pod=f"p-{i}")) for i in range(40)]
    assert results.count(False) == w.dropped and w.dropped >= 30
    w._stop = True


def test_rate_limit_is_a_token_bucket_per_node():
    now = [0.0]
    w = IndexWriter(object(), writes_per_second=2.0, monotonic=lambda: now[0])
    w._tokens, w._last = 1.0, 0.0
    assert w._take_token() == 0.0  # the first write goes at once
    assert w._take_token() == pytest.approx(0.5)  # then one per half second
    now[0] = 0.5
    assert w._take_token() == 0.0
    now[0] = 100.0  # idle for long: the burst is bounded by one second's worth
    assert [w._take_token() for _ in range(3)] == [0.0, 0.0, pytest.approx(0.5)]
    w._stop = True


def test_a_crash_during_a_retried_create_takes_its_place(tmp_path, server):
    """One latest record and its create fails once: the next crash, arriving meanwhile, becomes
    that record (its name, count 2): one object, no update of a record that does not exist."""
    status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 503, "reason": "ServiceUnavailable"}
    server.route("POST", f"{BASE}/shop/coredumps", Recorded(503, status), Echo())
    server.route("PUT", f"{BASE}/shop/coredumps/*", Echo())
    w = _writer(server, keep_first=0, keep_latest=1)
    w.submit(summary(tmp_path, digest="xxh128:" + "1" * 32))
    second = summary(tmp_path, digest="xxh128:" + "2" * 32)
    w.submit(second)
    assert w.flush(20)
    methods = [r["method"] for r in server.requests]
    assert methods == ["POST", "POST"], methods
    post = _bodies(server, "POST")[-1]
    assert post["metadata"]["name"] == idx.coredump_name(second) and post["status"]["count"] == 2
    assert (w.created, w.updated, w.failed) == (1, 0, 0)
    w.close()


def test_location_names_the_pod_volume_and_an_emptydir_core_is_gone_with_its_pod(tmp_path, server, validate):
    """The pod watch's view (the recorded pod) says which volume holds the core; once the watch
    knows the pod was deleted, the CoreDump of a core on its emptyDir says Gone."""
    from tests.kube_apiserver import RECORDED
    from webhook.agent.podwatch import pod_record

    pod = json.loads((RECORDED / "pod-web.json").read_text())
    view = pod_record(pod).view
    uid = view.uid
    doc = summary(tmp_path, pod_uid=uid, path="/data/dump-a/core.web.7")
    body = idx.build_coredump(doc, 1700000100, view)
    validate(body)
    assert body["spec"]["location"] == {"kind": "pod", "path": "/data/dump-a/core.web.7", "volume": "coredump-webhook-cores",
                                        "volumeType": "emptyDir", "sysroot": "/data/dump/core.web.7.sysroot",
                                        "symbolsStore": "/data/dump/.symbols"}
    pvc = json.loads(json.dumps(pod))
    pvc["spec"]["volumes"][0] = {"name": "coredump-webhook-cores", "persistentVolumeClaim": {"claimName": "web-cores"}}
    located = idx.build_coredump(doc, 1700000100, pod_record(pvc).view)["spec"]["location"]
    assert (located["volumeType"], located["claim"]) == ("persistentVolumeClaim", "web-cores")
    assert "volume" not in idx.build_coredump({**doc, "destination": "node"}, 1700000100, view)["spec"]["location"]
    # the writer: the pod is deleted (the synced watch no longer knows it) -> Gone, once
    server.route("POST", f"{BASE}/shop/coredumps", Echo())
    server.route("PUT", f"{BASE}/shop/coredumps/*", Echo())
    deleted = set()
    w = _writer(server, pod_lookup=lambda u: view if u not in deleted else None, pod_gone=lambda u: u in deleted,
                sweep_interval=0.05)
    assert w.submit(doc)
    assert w.flush(20)
    deleted.add(uid)
    from tests.process_support import wait_for

    wait_for(lambda: _bodies(server, "PUT"), 10)
    assert w.flush(20)
    puts = _bodies(server, "PUT")
    assert [p["status"]["state"] for p in puts] == ["Gone"], puts
    validate(puts[0])
    w.close()


def test_an_emptydir_core_is_gone_with_its_pod_after_an_agent_restart(tmp_path, server, validate):
    """The record of an emptyDir core is kept in the state file: an agent restarted before the
    pod is deleted still marks it Gone (and a record marked Gone is not marked again)."""
    from tests.kube_apiserver import RECORDED
    from tests.process_support import wait_for
    from webhook.agent.podwatch import pod_record

    view = pod_record(json.loads((RECORDED / "pod-web.json").read_text())).view
    doc = summary(tmp_path, pod_uid=view.uid, path="/data/dump-a/core.web.7")
    server.route("POST", f"{BASE}/shop/coredumps", Echo())
    server.route("PUT", f"{BASE}/shop/coredumps/*", Echo())
    state = tmp_path / "host" / STATE_FILE
    state.parent.mkdir()
    w = _writer(server, state_path=str(state), pod_lookup=lambda u: view, pod_gone=lambda u: False)
    assert w.submit(doc)
    assert w.flush(20)
    w.close()
    (created,) = _bodies(server, "POST")
    saved = json.loads(state.read_text())["emptyDir"]
    assert [(b["metadata"]["name"], b["spec"]["podUID"]) for b in saved] == [(created["metadata"]["name"], view.uid)]
    # restarted, with no crash since: the pod is deleted -> Gone, from the state file alone
    w = _writer(server, state_path=str(state), pod_lookup=lambda u: None, pod_gone=lambda u: u == view.uid,
                sweep_interval=0.05)
    wait_for(lambda: _bodies(server, "PUT"), 10)
    assert w.flush(20)
    w.close()
    (put,) = _bodies(server, "PUT")
    validate(put)
    assert put["metadata"]["name"] == created["metadata"]["name"] and put["status"]["state"] == "Gone"
    assert json.loads(state.read_text())["emptyDir"] == []
    # a third start has nothing left to mark
    w = _writer(server, state_path=str(state), pod_gone=lambda u: True, sweep_interval=0.05)
    time.sleep(0.3)
    assert w.flush(20)
    w.close()
    assert len(_bodies(server, "PUT")) == 1
    # a damaged entry is skipped, never fatal
    state.write_text(json.dumps({"format": 1, "keys": [], "emptyDir": [{"metadata": 5}, "x"]}))
    w = _writer(server, state_path=str(state), pod_gone=lambda u: True)
    assert w.state.emptydir == {}
    w.close()


def test_quota_state_first_and_latest_rule():
    """Pure: keep 2 first and 2 latest of one key; every crash after is a roll of the oldest
    latest record (the writes answered in between), the counts summing to the crashes."""
    from webhook.agent.index_state import QuotaState

    q = QuotaState(None, 2, 2)
    key = ("shop", "crash", "ab", "deployment.web")
    seen = []
    for i in range(9):
        action, slot = q.place(key, f"c{i}", {"metadata": {"name": f"c{i}"}})
        seen.append((action, slot.name))
        slot.pending, slot.created, slot.rv = "", True, str(i)
    assert seen == [("create", "c0"), ("create", "c1"), ("create", "c2"), ("create", "c3"),
                    ("roll", "c2"), ("roll", "c3"), ("roll", "c2"), ("roll", "c3"), ("roll", "c2")]
    ks = q.keys[key]
    assert [(s.name, s.core, s.count) for s in ks.first] == [("c0", "c0", 1), ("c1", "c1", 1)]
    assert [(s.name, s.core, s.count) for s in ks.latest] == [("c3", "c7", 3), ("c2", "c8", 4)]
    assert sum(s.count for s in ks.slots()) == ks.total == 9
    # a pruned record hands its count on to the next record written; the first stays taken
    assert q.find("shop", "c1") == (key, ks.first[1]) and q.find("other", "c1") is None
    q.forget(key, ks.first[1])
    assert q.find("shop", "c1") is None and ks.carry == 1
    action, slot = q.place(key, "c9", {"metadata": {"name": "c9"}})
    assert (action, slot.name, slot.count) == ("roll", "c3", 5)  # 3 + this crash + the carried one
    assert sum(s.count for s in ks.slots()) == ks.total + 0 == 10


def test_quota_survives_a_restart_and_a_damaged_state_file_is_not_fatal(tmp_path, server, validate):
    """The agent cannot list CoreDumps: what it wrote (names, versions, counts) is in a state file
    in its host directory, so a restarted agent rolls the same records forward instead of adding
    objects, keeps counting, and can still delete a pruned core's record."""
    server.route("POST", f"{BASE}/shop/coredumps", Echo())
    server.route("PUT", f"{BASE}/shop/coredumps/*", Echo())
    server.route("DELETE", f"{BASE}/shop/coredumps/*",
                 Recorded(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}))
    state = tmp_path / "host" / STATE_FILE
    state.parent.mkdir()
    crashes = [summary(tmp_path, digest=f"xxh128:{i + 1:032x}", pod=f"web-7d9c-{i:05d}", time=1700000000 + i) for i in range(6)]
    w = _writer(server, keep_first=1, keep_latest=1, state_path=str(state))
    for doc in crashes[:3]:
        w.submit(doc)
        assert w.flush(20)
    w.close()
    assert [r["method"] for r in server.requests] == ["POST", "POST", "PUT"]
    assert oct(state.stat().st_mode & 0o777) == "0o600" and not state.with_name(state.name + ".tmp").exists()
    last_rv = json.loads(server.requests[-1]["body"])["metadata"].get("resourceVersion")
    # restarted: the next crash rolls the same latest record (its version, the count going on)
    w = _writer(server, keep_first=1, keep_latest=1, state_path=str(state))
    w.submit(crashes[3])
    assert w.flush(20)
    put = _bodies(server, "PUT")[-1]
    assert [r["method"] for r in server.requests] == ["POST", "POST", "PUT", "PUT"]
    assert put["metadata"]["name"] == idx.coredump_name(crashes[1]) and put["spec"]["pod"] == "web-7d9c-00003"
    assert put["status"]["count"] == 3 and put["metadata"]["resourceVersion"] != last_rv
    validate(put)
    # ... and deletes the first crash's record when retention prunes its core
    assert w.mark_pruned(crashes[0])
    assert w.flush(20)
    assert server.requests[-1]["method"] == "DELETE" and server.requests[-1]["path"].endswith(idx.coredump_name(crashes[0]))
    w.close()
    # a damaged file (a torn write by hand, garbage): logged, the agent starts without it
    for junk in (b"{\"format\": 1, \"keys\": [", b"\x00" * 100, b"[]", json.dumps(
            {"format": 1, "keys": [{"key": ["shop"], "first": []}, {"key": ["a", "b", "c", "d"], "latest": [{"name": 5}]}]}).encode()):
        state.write_bytes(junk)
        w = _writer(server, keep_first=1, keep_latest=1, state_path=str(state))
        assert w.state.keys == {}
        w.submit(crashes[4])
        assert w.flush(20)
        assert server.requests[-1]["method"] == "POST"  # a fresh start: a new first record
        w.close()
        assert json.loads(state.read_text())["format"] == 1  # rewritten whole


def test_quota_state_file_is_bounded(tmp_path):
    """Many workloads crash: the file stays under its byte bound (least recently used keys go)."""
    from webhook.agent.index_state import QuotaState

    path = tmp_path / "state.json"
    q = QuotaState(str(path), 3, 5, max_keys=10_000, max_bytes=20_000)
    for i in range(2000):
        _, slot = q.place(("ns", "crash", f"{i:016x}", f"deployment.app-{i}"), f"pod-{i}-{i:012x}", {})
        slot.created, slot.pending = True, ""
    assert q.save()
    assert path.stat().st_size <= 20_000
    kept = QuotaState(str(path), 3, 5)
    assert 0 < len(kept.keys) < 2000 and ("ns", "crash", f"{1999:016x}", "deployment.app-1999") in kept.keys
    q2 = QuotaState(None, 1, 1, max_keys=5)
    for i in range(50):
        q2.place(("ns", "crash", str(i), "w"), f"c{i}", {})
    assert len(q2.keys) == 5


def test_the_index_quota_is_the_retention_rule_of_the_files():
    from webhook.agent.settings import AgentSettings

    assert index_quota(AgentSettings()) == (3, 5)  # the defaults of retention
    assert index_quota(AgentSettings(retention_keep_first=2, retention_keep_latest=0)) == (2, 1)
    # retention off (every file kept): index_keep_per_signature records, the last one rolled
    assert index_quota(AgentSettings(retention_keep_first=0, retention_keep_latest=0,
                                     index_keep_per_signature=5)) == (4, 1)


def _row(crd: dict, body: dict, wide: bool = False) -> dict[str, object]:
    """What `kubectl get coredumps` prints for ``body``: the CRD's printer columns evaluated
    (simple `.a.b` paths, as all of ours are); a column whose field is missing prints empty."""
    (version,) = crd["spec"]["versions"]
    row: dict[str, object] = {"Name": body["metadata"]["name"]}
    for col in version["additionalPrinterColumns"]:
        if col.get("priority", 0) and not wide:
            continue
        node: object = body
        for part in col["jsonPath"].strip(".").split("."):
            node = node.get(part) if isinstance(node, dict) else None
        row[col["name"]] = node
    return row


def test_kubectl_get_stays_useful_after_rolls_prunes_and_restarts(tmp_path, server, validate, crd):
    """Every body the writer sends (first records, rolled latest ones, a successor, a Pruned mark)
    validates against the CRD and gives a full `kubectl get coredumps` row: the pod, container and
    signal of the core it describes now, its frames, a count >= 1 and the core's age."""
    status = {"kind": "Status", "apiVersion": "v1", "status": "Failure"}
    server.route("POST", f"{BASE}/shop/coredumps", Echo())
    server.route("PUT", f"{BASE}/shop/coredumps/*", Echo(), Recorded(404, {**status, "code": 404, "reason": "NotFound"}), Echo())
    server.route("DELETE", f"{BASE}/shop/coredumps/*", Recorded(403, {**status, "code": 403, "reason": "Forbidden"}))
    w = _writer(server, keep_first=1, keep_latest=1, state_path=str(tmp_path / STATE_FILE))
    crashes = [summary(tmp_path, digest=f"xxh128:{i + 1:032x}", pod=f"web-7d9c-{i:05d}", time=1700000000 + 60 * i,
                       signal=6, signal_name="SIGABRT") for i in range(5)]
    for doc in crashes:
        w.submit(doc)
        assert w.flush(20)
    w.mark_pruned(crashes[0])  # the RBAC refuses the delete: a Pruned mark instead
    assert w.flush(20)
    w.close()
    sent = [(r["method"], json.loads(r["body"])) for r in server.requests if r["method"] in ("POST", "PUT")]
    assert [m for m, _ in sent] == ["POST", "POST", "PUT", "PUT", "POST", "PUT", "PUT"]
    for _method, body in sent:
        validate(body)
        row = _row(crd, body)
        assert row["Pod"] == body["spec"]["pod"] and row["Container"] == "app" and row["Signal"] == "SIGABRT"
        assert row["Frames"] == "check_order < main" and isinstance(row["Count"], int) and row["Count"] >= 1
        assert row["Age"] == body["spec"]["time"]
        # the columns (pod, container, signal, signature, size, age) without -o wide
        assert row["Signature"] == "ab" * 32 and row["Size"] == body["spec"]["size"] > 0
        assert "Node" not in row and "State" not in row
        wide = _row(crd, body, wide=True)
        assert wide["State"] in ("Present", "Pruned") and wide["Node"]
    rolled = [b for m, b in sent if m == "PUT" and b["status"]["state"] == "Present"]
    # a rolled record shows the newest core it describes (pod, age) and the crashes it counts
    assert [(_row(crd, b)["Pod"], _row(crd, b)["Count"]) for b in rolled] == [
        ("web-7d9c-00002", 2), ("web-7d9c-00003", 3), ("web-7d9c-00004", 4)]  # the second one answered 404
    assert _row(crd, rolled[-1])["Age"] == "2023-11-14T22:17:20Z"
    successor = sent[4][1]  # the rolled record was deleted by a user: its successor keeps the count
    assert _row(crd, successor)["Count"] == 3 and _row(crd, successor)["Name"] == idx.coredump_name(crashes[3])
    pruned = sent[-1][1]
    assert _row(crd, pruned, wide=True)["State"] == "Pruned" and _row(crd, pruned)["Name"] == idx.coredump_name(crashes[0])


def test_quota_state_load_settles_unanswered_writes_and_shrunk_settings(tmp_path, caplog):
    """A state file from before a restart: an unanswered latest create is dropped and counted, an
    unanswered first slot stays taken as gone, latest slots over a lowered keep_latest are counted
    into the carry (the newest kept); damaged keys and emptyDir entries are skipped, logged once."""
    from webhook.agent.index_state import QuotaState

    def slot(name, count=1, created=True, gone=False):
        return {"name": name, "core": name, "count": count, "rv": "1", "created": created, "gone": gone}

    path = tmp_path / "state.json"
    path.write_text(json.dumps({"format": 1, "keys": [
        {"key": ["ns", "crash", "ab", "w"], "carry": 1, "total": 9,
         "first": [slot("f0"), slot("f1", count=2, created=False), slot("f2", count=4, created=False, gone=True)],
         "latest": [slot("l0", count=3), slot("l1", count=5, created=False), slot("l2"), slot("l3", count=2)]},
        {"key": ["ns", "crash", "cd", "w"], "carry": -3, "total": -1},
        {"key": ["ns", "crash", 5, "w"]},
        {"key": ["ns", "crash", "ef", "w"], "carry": "x"},
        "junk"],
        "emptyDir": [{"metadata": {}}, "junk"]}))
    caplog.set_level("WARNING")
    q = QuotaState(str(path), 3, 2)  # loads the file
    ks = q.keys[("ns", "crash", "ab", "w")]
    assert [(s.name, s.gone) for s in ks.first] == [("f0", False), ("f1", True), ("f2", True)]
    assert [s.name for s in ks.latest] == ["l2", "l3"]
    assert (ks.carry, ks.total) == (1 + 5 + 2 + 3, 9)
    empty = q.keys[("ns", "crash", "cd", "w")]
    assert (empty.first, empty.latest, empty.carry, empty.total) == ([], [], 0, 0)
    assert len(q.keys) == 2 and q.emptydir == {}
    skipped = [r for r in caplog.records if r.getMessage() == "index state: damaged entries skipped"]
    assert len(skipped) == 1 and skipped[0].skipped == 5
    # an oversized file is not read at all
    small = QuotaState(str(path), 3, 2, max_bytes=10)
    assert small.keys == {} and any(r.getMessage() == "index state not understood: starting without it"
                                    for r in caplog.records)


def test_coredump_fields_from_odd_summaries(tmp_path, validate):
    """Numbers must be non-negative ints (a bool is none), an unknown compression is left out,
    ``truncated`` is a bool whenever the summary has it, a node core has no volume, and a summary
    without a time is stamped with now; over-long strings are cut to the CRD's limits."""
    s = summary(tmp_path, outcome="partial", destination="node", path="/var/lib/cores/core.7", time=None,
                pid=True, uid=0, gid=-1, signal=11, size="12", stored_size=7, truncated=0, compression="gzip",
                node="Node_1!", image="i" * 2000, sysroot=None, symbols_store="", owner="StatefulSet/db",
                signature_frames=[f"f{i}" * 200 for i in range(8)])
    body = idx.build_coredump(s, 1700000100)
    validate(body)
    spec = body["spec"]
    assert spec["time"] == "2023-11-14T22:15:00Z" and spec["location"] == {"kind": "node", "path": "/var/lib/cores/core.7"}
    assert "pid" not in spec and "gid" not in spec and "size" not in spec
    assert (spec["uid"], spec["signal"], spec["storedSize"], spec["truncated"]) == (0, 11, 7, False)
    assert "compression" not in spec and len(spec["image"]) == 1024 and spec["node"] == "Node_1!"
    assert body["metadata"]["labels"][idx.LABEL_NODE] == "Node_1" and spec["owner"] == {"kind": "StatefulSet", "name": "db"}
    assert len(spec["topFrames"]) == idx.TOP_FRAMES and all(len(f) == 256 for f in spec["topFrames"])
    assert len(spec["frames"]) == 512 and body["metadata"]["labels"][idx.LABEL_WORKLOAD] == "statefulset.db"
    zstd = idx.build_coredump(summary(tmp_path, compression="zstd", owner=None, node=None), 1700000100)
    assert zstd["spec"]["compression"] == "zstd" and "owner" not in zstd["spec"]
    assert idx.LABEL_WORKLOAD not in zstd["metadata"]["labels"] and idx.LABEL_NODE not in zstd["metadata"]["labels"]
    assert idx.build_coredump(summary(tmp_path, compression="none"), 1700000100)["spec"]["compression"] == "none"
