"""The agent's pod watch against recorded API responses over a real socket, with a real
``kubernetes.client.ApiClient``: list, watch (ADDED/MODIFIED/DELETED/BOOKMARK), 410 -> relist;
and the crash path's metadata gaining image, labels and owner from the index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.kube_apiserver import FakeApiServer, Recorded
from tests.process_support import wait_for
from webhook import kubewatch
from webhook.agent import podwatch
from webhook.agent.podwatch import PodIndex, PodWatcher

AGENT = Path(__file__).resolve().parent / "recorded" / "agent"
WEB_UID = "6f1c2a7e-3b9d-4c51-9a0e-2d8f4b7c1e93"
DB_UID = "a3f9c1d2-7e4b-4c8a-b5d6-0e1f2a3b4c5d"
BATCH_UID = "5d6e7f80-91a2-4b3c-8d4e-5f6a7b8c9d0e"
WEB_CID_1 = "8e2a4c6b1d3f5a7c9e0b2d4f6a8c0e1f3b5d7f9a1c3e5b7d9f0a2c4e6b8d0f1a"
WEB_CID_2 = "f0e1d2c3b4a5968778695a4b3c2d1e0f9f8e7d6c5b4a39281706f5e4d3c2b1a0"


class AgentRecorded(Recorded):
    def bytes(self) -> bytes:
        return (AGENT / self.body).read_bytes() if isinstance(self.body, str) else super().bytes()


class EmptyWatch(Recorded):
    def bytes(self) -> bytes:
        return b""


GONE = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "too old resource version: 481750 (482910)", "reason": "Expired", "code": 410}


def test_record_from_a_recorded_pod():
    pod = json.loads((AGENT / "podlist-node-3.json").read_text())["items"][0]
    rec = podwatch.pod_record(pod)
    assert rec is not None and rec.node == "node-3" and rec.phase == "Running" and rec.hostname == "web-7d9f8c6b5-x2kqp"
    v = rec.view
    assert (v.namespace, v.name, v.uid, v.owner) == ("shop", "web-7d9f8c6b5-x2kqp", WEB_UID, "ReplicaSet/web-7d9f8c6b5")
    assert v.labels == {"app": "web", "pod-template-hash": "7d9f8c6b5"}
    assert v.images == {"coredump-webhook-install": "ghcr.io/coredump-webhook/coredump-webhook:0.1.0",
                        "app": "registry.example.com/shop/web:1.4.2", "proxy": "docker.io/envoyproxy/envoy:v1.31.0"}
    assert v.container_ids[WEB_CID_1] == "app"
    assert v.container_ids["4c1d0b9e7f3a"] == "app"  # the previous run's id (lastState) too
    assert len(v.container_ids) == 4
    assert rec.annotations["coredump-webhook.io/status"] == "injected"


def test_watch_lines_apply_in_order():
    index = PodIndex()
    index.replace(json.loads((AGENT / "podlist-node-3.json").read_text())["items"])
    kinds = []
    for line in kubewatch.iter_lines([(AGENT / "watch-pods-1.ndjson").read_bytes()[i:i + 777]
                                     for i in range(0, 100_000, 777)]):
        kind, obj = kubewatch.parse_event(line)
        kinds.append(kind)
        if kind != "BOOKMARK":
            index.apply(kind, obj)
    assert kinds == ["ADDED", "MODIFIED", "DELETED", "BOOKMARK"]
    assert index.lookup(DB_UID) is None
    assert index.lookup(BATCH_UID).owner == "Job/batch-28861290"
    assert index.lookup(WEB_UID).labels["tier"] == "frontend"
    with pytest.raises(kubewatch.Expired, match="too old"):
        kubewatch.parse_event((AGENT / "watch-pods-expired.ndjson").read_bytes())


def test_list_watch_expire_relist_against_a_real_socket():
    seen: list[str] = []
    with FakeApiServer() as api:
        api.route("GET", "/api/v1/pods",
                  AgentRecorded(200, "podlist-node-3.json"),
                  AgentRecorded(200, "watch-pods-1.ndjson"),
                  AgentRecorded(200, "watch-pods-expired.ndjson"),  # ERROR event 410 -> relist
                  AgentRecorded(200, "podlist-node-3-relist.json"),
                  Recorded(410, GONE),  # HTTP 410 on the watch itself -> relist
                  AgentRecorded(200, "podlist-node-3-relist.json"),
                  Recorded(500, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                 "message": "etcdserver: request timed out", "code": 500}),  # backoff
                  EmptyWatch(200, ""))  # the server ends a watch at timeoutSeconds with no events
        watcher = PodWatcher(api.api(), "node-3", on_pod=lambda r: seen.append(r.view.name),
                             backoff_start=0.05, backoff_max=0.1)
        watcher.start()
        try:
            wait_for(lambda: len(api.requests) >= 8, 15)
        finally:
            watcher.stop()
        reqs = [r for r in api.requests if r["path"] == "/api/v1/pods"]
    for r in reqs:
        assert r["query"]["fieldSelector"] == ["spec.nodeName=node-3"]
        assert r["headers"]["authorization"] == "Bearer test-token"
    watch = [("watch" in r["query"], r["query"].get("resourceVersion", [""])[0]) for r in reqs[:7]]
    assert watch == [(False, ""), (True, "481600"), (True, "481750"), (False, ""), (True, "482920"), (False, ""),
                     (True, "482920")]
    assert reqs[1]["query"]["allowWatchBookmarks"] == ["true"] and reqs[1]["query"]["timeoutSeconds"] == ["300"]
    assert watcher.lists >= 3 and watcher.errors >= 1
    # the index is the relisted state: db-0 deleted, the job's pod running, web restarted
    idx = watcher.index
    assert idx.lookup(DB_UID) is None and len(idx) == 2
    web = idx.lookup(WEB_UID)
    assert web.container_ids[WEB_CID_2] == "app" and web.container_ids[WEB_CID_1] == "app"
    assert web.labels["tier"] == "frontend" and web.images["app"] == "registry.example.com/shop/web:1.4.2"
    batch = idx.lookup(BATCH_UID)
    assert batch.images == {"worker": "registry.example.com/jobs/batch:2.0"} and batch.owner == "Job/batch-28861290"
    assert "9a8b7c6d5e4f30211203f4e5d6c7b8a99a8b7c6d5e4f30211203f4e5d6c7b8a9" in batch.container_ids
    assert seen[:2] == ["web-7d9f8c6b5-x2kqp", "db-0"] and "batch-28861290-q7k2m" in seen


def test_unreachable_api_only_counts_errors():
    from kubernetes import client

    cfg = client.Configuration()
    cfg.host = "http://127.0.0.1:9"  # discard port: connection refused
    watcher = PodWatcher(client.ApiClient(cfg), "node-3", backoff_start=0.05, backoff_max=0.1, request_timeout=2)
    watcher.start()
    try:
        wait_for(lambda: watcher.errors >= 2, 15)
    finally:
        watcher.stop()
    assert len(watcher.index) == 0 and not watcher.index.synced.is_set()


def test_pod_watch_needs_a_node_name():
    with pytest.raises(ValueError, match="node name"):
        PodWatcher(object(), "")


# --- the crash path uses the index (real namespace process, kubelet-shaped cgroup) --------------
@pytest.mark.root
def test_crash_metadata_gains_image_labels_and_owner(tmp_path, k8s_cgroup):
    from prometheus_client import CollectorRegistry

    from tests.agent_support import (
        handle_bytes,
        make_settings,
        nspid_of,
        read_meta,
        request_for,
        start_namespace_app,
        synthetic_core,
        webhook_env,
    )
    from webhook.agent.crash import CrashProcessor
    from webhook.agent.metrics import AgentMetrics

    pod_uid, cid, cgroup = k8s_cgroup
    listed = json.loads((AGENT / "podlist-node-3.json").read_text())
    pod = listed["items"][0]
    pod["metadata"]["uid"] = pod_uid  # the recorded pod, with this test's UID and container ID
    pod["status"]["containerStatuses"][0]["containerID"] = f"containerd://{cid}"
    index = PodIndex()
    index.replace([pod])
    vol = tmp_path / "vol"
    vol.mkdir()
    env = webhook_env("/pod/data/dump/core.%p", pod_uid)
    unshare, pid = start_namespace_app(tmp_path, vol, env, cgroup)
    try:
        proc = CrashProcessor(make_settings(tmp_path), None, events=False, notifier=False,
                              metrics=AgentMetrics(CollectorRegistry()), pod_lookup=index.lookup)
        nspid = nspid_of(pid)
        out = handle_bytes(proc, request_for(pid, nspid=nspid), synthetic_core(1)[:300_000])
        assert out.outcome == "written", out
        meta = read_meta(vol / f"core.{nspid}")
        assert meta["image"] == "registry.example.com/shop/web:1.4.2"
        assert meta["labels"] == {"app": "web", "pod-template-hash": "7d9f8c6b5"}
        assert meta["owner"] == "ReplicaSet/web-7d9f8c6b5"
        assert meta["container"] == "app" and meta["container_id"] == cid
    finally:
        unshare.kill()
        unshare.wait()


def test_record_of_odd_pods_keeps_what_it_can():
    """Recorded pod objects are not trusted to be complete: no UID is no record; nameless
    containers, statuses and volumes are left out; a status names the image the spec lacks; the
    first container ID seen keeps its name; ephemeral containers have images but no mounts."""
    assert podwatch.pod_record({}) is None
    assert podwatch.pod_record({"metadata": {"uid": ""}, "spec": None}) is None
    pod = {
        "metadata": {"uid": "u1", "name": "p", "namespace": "ns", "annotations": None, "labels": None},
        "spec": {"nodeName": None,
                 "initContainers": [{"name": "init", "image": "i:1", "volumeMounts": [{"name": "v", "mountPath": "/c"}]}],
                 "containers": [{"name": "app"}, {"image": "nameless:1"}, {"name": "side", "image": "s:1", "volumeMounts": None}],
                 "ephemeralContainers": [{"name": "dbg", "image": "busybox", "volumeMounts": [{"name": "v", "mountPath": "/d"}]}],
                 "volumes": [{"name": "v", "emptyDir": {}}, {"emptyDir": {}},
                             {"name": "claim", "persistentVolumeClaim": {"claimName": "data"}}, {"name": "bare"}]},
        "status": {"phase": "Running",
                   "containerStatuses": [
                       {"name": "app", "image": "app:2", "containerID": "containerd://aaa",
                        "lastState": {"terminated": {"containerID": "containerd://bbb"}}},
                       {"image": "x", "containerID": "containerd://ccc"},
                       {"name": "side", "image": "other:9", "containerID": "docker://aaa", "lastState": {}},
                       {"name": "gone", "containerID": "", "lastState": None}],
                   "initContainerStatuses": None},
    }
    rec = podwatch.pod_record(pod)
    assert rec is not None
    v = rec.view
    assert v.images == {"init": "i:1", "side": "s:1", "dbg": "busybox", "app": "app:2", "gone": ""}
    assert v.container_ids == {"aaa": "app", "bbb": "app"}
    assert v.volumes == {"v": ("emptyDir", ""), "claim": ("persistentVolumeClaim", "data"), "bare": ("", "")}
    assert v.mount_names == {"init": [("/c", "v")], "app": [], "": [], "side": []}
    assert (v.labels, v.owner, v.unwritable, rec.annotations) == ({}, None, "", {})
    assert (rec.node, rec.hostname, rec.phase, rec.resource_version) == ("", "p", "Running", "")
    assert podwatch.pod_record({"metadata": {"uid": "u2", "name": "n"}, "spec": {"hostname": "h"}}).hostname == "h"
