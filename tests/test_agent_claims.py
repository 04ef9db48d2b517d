"""A killed agent's leftover whose container is gone, reached through another pod on the same
storage (issue 15 §3: "the container, or another pod on the same claim, is alive"), and the
webhook's read-only reason read per container (issue 12 §3).

The recovery tests run a real process of another "pod" (its own mount namespace, chrooted
busybox, kubelet-shaped cgroup) that has the claim's storage bind-mounted at its own path, with a
subPath: the leftover is visible only inside that process's mount namespace, so only
``openat2`` inside its root can reach it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

from tests.agent_support import (
    handle_bytes,
    make_settings,
    request_for,
    start_namespace_app,
    synthetic_core,
    webhook_env,
)
from tests.crash_support import RecordedEvents
from tests.e2e_support import NODE_NAME, running_agent
from tests.process_support import wait_for
from webhook import constants as C
from webhook.agent import inflight
from webhook.agent.crash import CrashProcessor
from webhook.agent.events import build_event
from webhook.agent.identity import Resolved, apply_view
from webhook.agent.journal import JOURNAL_DIR, Journal, entry_for, tmp_names
from webhook.agent.metrics import AgentMetrics
from webhook.agent.podvolumes import Mount, claim_of, translate, unwritable_for, volume_mounts
from webhook.agent.podwatch import PodIndex, pod_record
from webhook.agent.reach import peers_on_node

DEAD_CID = "d" * 64
DEAD_UID = "0f0f0f0f-0000-4000-8000-000000000001"


def _pod(name: str, uid: str, namespace: str, container: str, cid: str, volume: dict, mount: dict,
         annotations: dict | None = None) -> dict:
    return {"metadata": {"name": name, "namespace": namespace, "uid": uid, "annotations": annotations or {}},
            "spec": {"nodeName": "node-1", "volumes": [{"name": "cores", **volume}],
                     "containers": [{"name": container, "image": "busybox",
                                     "volumeMounts": [{"name": "cores", **mount}]}]},
            "status": {"containerStatuses": [{"name": container, "containerID": f"containerd://{cid}"}]}}


CLAIM = {"persistentVolumeClaim": {"claimName": "crash-store"}}


def _crashed_pod() -> dict:
    """The crashed pod: the claim at /data; its cores go to /data/crash/dir."""
    return _pod("web-0", DEAD_UID, "shop", "app", DEAD_CID, CLAIM, {"mountPath": "/data"})


def _entry(index: PodIndex) -> dict:
    """The journal entry the crash path writes (journal.entry_for, with the watch's names)."""
    who = apply_view(Resolved(pod_uid=DEAD_UID, container_id=DEAD_CID, runtime="containerd"),
                     index.lookup(DEAD_UID))
    request = SimpleNamespace(pid=6, global_pid=999999999, tid=6, global_tid=999999999, uid=0, gid=0, signal=11,
                              comm="big", hostname="web-0", time=1700000000, rlimit_core=-1, dump_mode=1,
                              spool_reason="")
    target = SimpleNamespace(destination="pod", directory="/data/crash/dir", name="core.6", compression="none",
                             uid=0, gid=0, pattern="/data/crash/dir/core.%p")
    return entry_for(request, who, target, tmp_names("core.6"), node="node-1", exe="/bin/big",
                              registered=True, identification="registered")


def _recover(tmp_path, index: PodIndex, entry: dict):
    Journal(str(tmp_path / "host"), instance="dead-agent").begin(entry)
    events, registry = RecordedEvents(), CollectorRegistry()
    (rec,) = inflight.recover(Journal(str(tmp_path / "host")), node_cores_dir=str(tmp_path / "cores"),
                              node="node-1", events=events, registry=registry,
                              peers=peers_on_node(index.records))
    return rec, events, registry


@pytest.fixture
def peer(tmp_path, k8s_cgroup):  # noqa: F811
    """Another pod's live process: the claim's ``crash`` subPath bind-mounted at /pod/data/dump in
    its own mount namespace; ``storage`` is the claim's root as the node sees it."""
    pod_uid, cid, cgroup = k8s_cgroup
    storage = tmp_path / "storage"
    (storage / "crash" / "dir").mkdir(parents=True)
    unshare, pid = start_namespace_app(tmp_path, storage / "crash", webhook_env("/x/core", pod_uid), cgroup)
    try:
        assert not (tmp_path / "rootfs" / "pod/data/dump/dir").exists()  # only inside its namespace
        yield SimpleNamespace(uid=pod_uid, cid=cid, pid=pid, storage=storage)
    finally:
        unshare.kill()
        unshare.wait()


@pytest.mark.root
def test_leftover_of_a_gone_container_becomes_partial_through_another_pod_on_the_claim(tmp_path, peer):
    index = PodIndex()
    index.replace([_crashed_pod(),
                   _pod("reader-1", peer.uid, "shop", "worker", peer.cid, CLAIM,
                        {"mountPath": "/pod/data/dump", "subPath": "crash"})])
    entry = _entry(index)
    assert entry["volume"] == {"source": "pvc:shop/crash-store", "path": "/crash/dir"}  # recorded at the dump
    data = b"\x7fELF" + os.urandom(70000)
    (peer.storage / "crash" / "dir" / entry["tmp_name"]).write_bytes(data)
    (peer.storage / "crash" / "dir" / entry["meta_tmp_name"]).write_bytes(bytes(65536))  # the reservation
    rec, events, registry = _recover(tmp_path, index, entry)
    assert (rec.result, rec.via) == ("partial", "shop/reader-1/worker"), rec
    assert rec.path == "/data/crash/dir/core.6.partial"  # as the crashed container saw it
    kept = peer.storage / "crash" / "dir" / "core.6.partial"
    assert kept.read_bytes() == data
    assert sorted(os.listdir(kept.parent)) == ["core.6.partial", "core.6.partial.json"]  # no temporary left
    meta = json.loads((kept.parent / "core.6.partial.json").read_text())
    assert meta["truncated"] is True and meta["truncated_reason"] == "agent_restarted"
    assert (meta["pod"], meta["container_id"], meta["size"]) == ("web-0", DEAD_CID, len(data))
    assert meta["recovered_through"] == "shop/reader-1/worker"
    (summary,) = events.seen
    assert summary["outcome"] == "partial" and "agent_restarted" in build_event(summary, 0)["message"]
    assert registry.get_sample_value("coredump_agent_inflight_recovered_total", {"result": "partial"}) == 1


class RecordingJournal(Journal):
    def __init__(self, host_dir: str) -> None:
        super().__init__(host_dir)
        self.begun: list[dict] = []

    def begin(self, entry: dict):
        self.begun.append(entry)
        return super().begin(entry)


@pytest.mark.root
def test_the_crash_path_records_the_storage_of_the_core_directory(tmp_path, k8s_cgroup):  # noqa: F811
    """A real crash of a registered namespace process: its journal entry names the claim and the
    directory's path inside it (from the pod watch's copy of the spec), before anything is written."""
    pod_uid, cid, cgroup = k8s_cgroup
    vol = tmp_path / "vol"
    vol.mkdir()
    unshare, pid = start_namespace_app(tmp_path, vol, webhook_env("/pod/data/dump/core.%p", pod_uid), cgroup)
    try:
        index = PodIndex()
        index.replace([_pod("web-7d9c-abcde", pod_uid, "shop", "app", cid, CLAIM, {"mountPath": "/pod/data"})])
        settings = make_settings(tmp_path)
        journal = RecordingJournal(settings.host_dir)
        processor = CrashProcessor(settings, None, events=False, notifier=False, signatures=False,
                                   metrics=AgentMetrics(CollectorRegistry()), pod_lookup=index.lookup, journal=journal)
        out = handle_bytes(processor, request_for(pid), synthetic_core(1)[:300_000])
    finally:
        unshare.kill()
        unshare.wait()
    assert out.outcome == "written" and out.destination == "pod", out
    (entry,) = journal.begun
    assert entry["volume"] == {"source": "pvc:shop/crash-store", "path": "/dump"}
    assert entry["container_id"] == cid and not list(Path(journal.dir).glob("*.json"))  # ended


@pytest.mark.kernel
def test_restarted_agent_recovers_through_the_pod_its_watch_lists(tmp_path, peer, kernel, bin_dir, pod_api):
    """The real ``coredump agent run``: its recovery waits for the pod watch's list and finds the
    other pod on the claim there (commands.recover_inflight)."""
    crashed = _crashed_pod()
    reader = _pod("reader-1", peer.uid, "shop", "worker", peer.cid, CLAIM,
                  {"mountPath": "/pod/data/dump", "subPath": "crash"})
    index = PodIndex()
    index.replace([crashed, reader])
    entry = _entry(index)  # what the killed agent recorded
    for pod in (crashed, reader):
        pod["spec"]["nodeName"] = NODE_NAME
        pod_api.set_pod(pod)
    data = b"\x7fELF" + os.urandom(9000)
    (peer.storage / "crash" / "dir" / entry["tmp_name"]).write_bytes(data)
    host = Path(tempfile.mkdtemp(prefix="cde-"))
    Journal(str(host), instance="killed-agent").begin(entry)
    kept = peer.storage / "crash" / "dir" / "core.6.partial"
    with running_agent(bin_dir, pod_api, "--no-events", host=host) as agent:
        wait_for(lambda: (kept.parent / "core.6.partial.json").exists(), 30, "the leftover recovered")
        wait_for(lambda: not list((host / JOURNAL_DIR).glob("*.json")), 10, "the journal cleared")
        (line,) = [r for r in agent.records() if r.get("message", "").startswith("core of a dump cut")]
        assert line["via"] == "shop/reader-1/worker" and line["pod"] == "web-0", line
        assert agent.stop() == 0
    assert kept.read_bytes() == data
    assert json.loads((kept.parent / "core.6.partial.json").read_text())["truncated_reason"] == "agent_restarted"


@pytest.mark.root
def test_without_a_live_pod_on_the_same_claim_the_leftover_is_reported_unreachable(tmp_path, peer):
    """The live process mounts a claim of the same name in another namespace (another claim):
    not used; the loss is reported with the leftover's path, and the leftover is left alone."""
    index = PodIndex()
    index.replace([_crashed_pod(),
                   _pod("reader-1", peer.uid, "payments", "worker", peer.cid, CLAIM,
                        {"mountPath": "/pod/data/dump", "subPath": "crash"})])
    entry = _entry(index)
    leftover = peer.storage / "crash" / "dir" / entry["tmp_name"]
    leftover.write_bytes(b"\x7fELF" + bytes(1000))
    rec, events, registry = _recover(tmp_path, index, entry)
    assert rec.result == "unreachable" and rec.leftover == f"/data/crash/dir/{entry['tmp_name']}"
    assert "pvc:shop/crash-store" in rec.detail
    assert leftover.exists() and not (leftover.parent / "core.6.partial").exists()
    (summary,) = events.seen
    assert summary["outcome"] == "failed" and entry["tmp_name"] in build_event(summary, 0)["message"]
    assert registry.get_sample_value("coredump_agent_inflight_recovered_total", {"result": "unreachable"}) == 1


# --- pure parts -----------------------------------------------------------------------------------
def test_storage_keys_and_translation():
    pod = {"metadata": {"namespace": "shop", "uid": "u1"},
           "spec": {"volumes": [{"name": "pvc", **CLAIM},
                                {"name": "nas", "nfs": {"server": "nas.example", "path": "/share/"}},
                                {"name": "scratch", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "x"}}],
                    "containers": [{"name": "app", "volumeMounts": [
                        {"name": "pvc", "mountPath": "/data/./", "subPath": "a/b"},
                        {"name": "nas", "mountPath": "/data/nas"},
                        {"name": "scratch", "mountPath": "/tmp/s", "readOnly": True},
                        {"name": "cfg", "mountPath": "/etc/cfg"},
                        {"name": "pvc", "mountPath": "/x", "subPathExpr": "$(POD)"}]}]}}
    mounts = volume_mounts(pod)["app"]
    assert mounts == (Mount("/data", "pvc:shop/crash-store", "/a/b"), Mount("/data/nas", "nfs:nas.example:/share"),
                      Mount("/tmp/s", "pod:u1/scratch", "/", True))
    assert claim_of(mounts, "/data/nas/cores") == {"source": "nfs:nas.example:/share", "path": "/cores"}
    assert claim_of(mounts, "/data/c") == {"source": "pvc:shop/crash-store", "path": "/a/b/c"}
    assert claim_of(mounts, "/var/c") is None and claim_of(mounts, "/datax") is None
    other = (Mount("/m", "pvc:shop/crash-store", "/a"), Mount("/n", "pvc:shop/crash-store", "/z"),
             Mount("/deep/er", "pvc:shop/crash-store", "/"), Mount("/q", "pvc:other/crash-store", "/"))
    assert translate({"source": "pvc:shop/crash-store", "path": "/a/b/c"}, other) == ["/deep/er/a/b/c", "/m/b/c"]
    assert translate({"source": "pvc:shop/nothing", "path": "/"}, other) == []


def test_unwritable_reason_is_read_per_container():
    ann = "container app: volume data is read-only at /data; container side: volume s is read-only at /s"
    assert unwritable_for(ann, "app") == "container app: volume data is read-only at /data"
    assert unwritable_for(ann, "side") == "container side: volume s is read-only at /s"
    assert unwritable_for(ann, "other") is None and unwritable_for("", "app") is None
    assert unwritable_for("the volume is read-only", "any") == "the volume is read-only"  # the whole pod
    record = pod_record(_pod("web-0", DEAD_UID, "shop", "app", DEAD_CID, CLAIM, {"mountPath": "/data"},
                             annotations={C.ANN_UNWRITABLE: ann}))
    who = apply_view(Resolved(pod_uid=DEAD_UID, container_id=DEAD_CID), record.view)
    assert who.unwritable == "container app: volume data is read-only at /data"
    assert who.mounts == (Mount("/data", "pvc:shop/crash-store"),)
