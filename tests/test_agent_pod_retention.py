"""Retention in pod volumes from the agent's periodic loop (webhook/agent/pod_retention.py).

A directory that gets no new crash is pruned too: the loop reaches it through the root of a real
process of the container (its own mount namespace, the volume bind-mounted where the pod sees
it), applies the per-signature first/latest rule and the age limit, deletes the records through
the crash index and drops build-id store entries no remaining sysroot links to.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.agent_support import SIG_A, SIG_B, retained_core, start_namespace_app
from tests.kube_apiserver import Echo, FakeApiServer, Recorded
from tests.process_support import wait_for
from webhook.agent import index as idx
from webhook.agent.commands import retention_loop
from webhook.agent.index_edge import CustomObjectsEdge
from webhook.agent.index_writer import IndexWriter
from webhook.agent.pod_retention import POD_DIRS_FILE, PodDirs
from webhook.agent.settings import AgentSettings

BASE = "/apis/coredump-webhook.io/v1alpha1/namespaces/shop/coredumps"


def test_pod_dirs_are_remembered_across_restarts(tmp_path):
    path = str(tmp_path / POD_DIRS_FILE)
    dirs = PodDirs(path)
    summary = {"destination": "pod", "outcome": "written", "path": "/pod/data/dump/core.1", "pod_uid": "u-1",
               "container_id": "c" * 64, "namespace": "shop", "identity": "verified"}
    dirs.remember(summary)
    dirs.remember({**summary, "destination": "node", "path": "/x/core.2"})  # the node location: its own loop
    dirs.remember({**summary, "outcome": "failed", "path": "/y/core.3"})
    dirs.remember({**summary, "identity": "unverified", "path": "/z/core.4", "pod_uid": "u-2"})
    again = PodDirs(path)
    assert [(e["directory"], e["namespace"]) for e in again.entries.values()] == [("/pod/data/dump", "shop"), ("/z", "")]
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    Path(path).write_text("{not json")
    assert PodDirs(path).entries == {}  # damaged: logged, an empty start


@pytest.mark.root
def test_retention_loop_prunes_a_pod_directory_with_no_new_crash(tmp_path, k8s_cgroup):
    pod_uid, cid, cgroup = k8s_cgroup
    vol = tmp_path / "vol"
    vol.mkdir()
    now = time.time()
    # signature A: 5 crashes (keep 1 first, 2 latest); B: one core older than the age limit
    for i in range(5):
        retained_core(vol, f"core.a{i}", int(now) - 600 + i, SIG_A, pod_uid=pod_uid)
    retained_core(vol, "core.b0", int(now) - 90000, SIG_B, pod_uid=pod_uid)
    store = vol / ".symbols" / "buildid"
    for bid in ("abc", "unused", "fresh"):
        (store / bid).mkdir(parents=True)
        (store / bid / "executable").write_bytes(b"\x7fELF " + bid.encode())
    for bid in ("abc", "unused"):
        os.utime(store / bid, (now - 3600, now - 3600))
    host = tmp_path / "host"
    host.mkdir()
    PodDirs(str(host / POD_DIRS_FILE)).remember({
        "destination": "pod", "outcome": "written", "path": "/pod/data/dump/core.a4", "pod_uid": pod_uid,
        "container_id": cid, "namespace": "shop", "identity": "verified"})
    proc, pid = start_namespace_app(tmp_path, vol, {"COREDUMP_PATTERN": "/pod/data/dump/core.%p"}, cgroup)
    stop = threading.Event()
    with FakeApiServer() as server:
        server.route("POST", BASE, Echo())
        server.route("DELETE", BASE + "/*", Recorded(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}))
        writer = IndexWriter(CustomObjectsEdge(server.api()), keep_first=10, keep_latest=10,
                                 writes_per_second=1000, backoff=0.05)
        names = {}
        for name in ("core.a0", "core.a1", "core.a2", "core.a3", "core.a4", "core.b0"):
            doc = {**json.loads((vol / f"{name}.json").read_text()), "outcome": "written"}
            assert writer.submit(doc)
            names[name] = idx.coredump_name(doc)
        assert writer.flush(20)
        s = AgentSettings(host_dir=str(host), retention_keep_first=1, retention_keep_latest=2,
                          pod_retention_max_age_seconds=86400)
        loop = threading.Thread(target=retention_loop, args=(s, stop), kwargs={"interval": 0.1,
                                                                              "on_removed": writer.mark_pruned})
        try:
            loop.start()
            wait_for(lambda: not (vol / "core.b0").exists() and not (vol / "core.a2").exists(), 20)
            assert writer.flush(20)
        finally:
            stop.set()
            loop.join(10)
            os.kill(pid, signal.SIGKILL)
            proc.wait(10)
        left = sorted(p.name for p in vol.iterdir() if not p.name.startswith("."))
        assert left == sorted(f"core.a{i}{ext}" for i in (0, 3, 4) for ext in ("", ".json", ".sysroot")), left
        deleted = sorted(r["path"].rsplit("/", 1)[1] for r in server.requests if r["method"] == "DELETE")
        assert deleted == sorted(names[n] for n in ("core.a1", "core.a2", "core.b0"))
        writer.close()
    # the store: what a remaining sysroot links to stays, a young entry stays, the rest goes
    assert sorted(p.name for p in store.iterdir()) == ["abc", "fresh"]


@pytest.mark.root
def test_a_directory_no_live_process_mounts_is_left_alone(tmp_path):
    vol = tmp_path / "vol"
    vol.mkdir()
    for i in range(4):
        retained_core(vol, f"core.a{i}", 1700000000 + i, SIG_A)
    host = tmp_path / "host"
    host.mkdir()
    PodDirs(str(host / POD_DIRS_FILE)).remember({
        "destination": "pod", "outcome": "written", "path": f"{vol}/core.a3", "pod_uid": "no-such-pod",
        "container_id": "f" * 64, "namespace": "shop", "identity": "verified"})
    from webhook.agent.pod_retention import prune_pod_dirs

    gone = prune_pod_dirs(PodDirs(str(host / POD_DIRS_FILE)), keep=(1, 1), max_age=1.0)
    assert gone == [] and len(list(vol.glob("core.a?"))) == 4


@pytest.mark.root
def test_another_container_of_the_pod_reaches_the_directory_only_if_it_holds_the_pod_s_cores(tmp_path, k8s_cgroup):
    """The crashed container restarted (a new container ID): a process of the same pod reaches the
    directory, but only one whose view of that path holds this pod's cores is pruned."""
    pod_uid, cid, cgroup = k8s_cgroup
    vol = tmp_path / "vol"
    vol.mkdir()
    for i in range(4):
        retained_core(vol, f"core.a{i}", 1700000000 + i, SIG_A, pod_uid="another-pod")
    host = tmp_path / "host"
    host.mkdir()
    dirs_path = str(host / POD_DIRS_FILE)
    PodDirs(dirs_path).remember({
        "destination": "pod", "outcome": "written", "path": "/pod/data/dump/core.a3", "pod_uid": pod_uid,
        "container_id": "e" * 64, "namespace": "shop", "identity": "verified"})  # that container is gone
    from webhook.agent.pod_retention import prune_pod_dirs

    proc, pid = start_namespace_app(tmp_path, vol, {"COREDUMP_PATTERN": "/pod/data/dump/core.%p"}, cgroup)
    try:
        assert prune_pod_dirs(PodDirs(dirs_path), keep=(1, 1), max_age=0) == []
        assert len(list(vol.glob("core.a?"))) == 4
        for i in range(4):  # now they are this pod's cores
            retained_core(vol, f"core.b{i}", 1700000100 + i, SIG_B, pod_uid=pod_uid)
        gone = prune_pod_dirs(PodDirs(dirs_path), keep=(1, 1), max_age=0)
        assert sorted(d["file"] for d in gone) == ["core.a1", "core.a2", "core.b1", "core.b2"]
    finally:
        os.kill(pid, signal.SIGKILL)
        proc.wait(10)
