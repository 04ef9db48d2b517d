"""``coredump gcore`` end to end in two halves.

Node side, for real: a live process in its own mount+pid namespace and a kubelet-shaped cgroup
(the webhook's env), a pod record carrying the gcore annotation (a recorded pod with this test's
UID and container ID): the agent maps container + namespace PID to the host PID, runs gcore, and
the snapshot lands through the crash path's writer in the pod's volume, marked ``gcore``; the
process keeps running. CLI side: the PATCH of the annotation and the wait for the agent's Event,
against recorded API responses over a real socket.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from tests.agent_support import Recorder, make_settings, read_meta, start_namespace_app, webhook_env
from tests.clock_support import FakeClock
from tests.crash_support import core_files
from tests.kube_apiserver import FakeApiServer, Recorded
from tests.suite_support import which_or_fail
from webhook import constants
from webhook.agent import podwatch
from webhook.agent.crash import CrashProcessor
from webhook.agent.events import build_event
from webhook.agent.metrics import AgentMetrics
from webhook.agent.snapshots import GcoreRefused, GcoreService, find_host_pid, parse_request
from webhook.cli import main
from webhook.diagnose.gcore import ET_CORE, elf_type

AGENT = Path(__file__).resolve().parent / "recorded" / "agent"
POD = "web-7d9f8c6b5-x2kqp"
POD_PATH = f"/api/v1/namespaces/shop/pods/{POD}"
EVENTS_PATH = "/api/v1/namespaces/shop/events"


def record_for(pod_uid: str, cid: str, request: dict | None) -> podwatch.PodRecord:
    pod = json.loads((AGENT / "podlist-node-3.json").read_text())["items"][0]
    pod["metadata"]["uid"] = pod_uid
    pod["status"]["containerStatuses"][0]["containerID"] = f"containerd://{cid}"
    if request is not None:
        pod["metadata"]["annotations"][constants.ANN_GCORE_REQUEST] = json.dumps(request)
    record = podwatch.pod_record(pod)
    assert record is not None
    return record


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def test_parse_request_rejects_bad_input():
    ok = parse_request('{"id":"gc-1","container":"app","pid":null,"requestedAt":"2024-11-21T08:30:05Z"}')
    assert (ok.id, ok.container, ok.pid) == ("gc-1", "app", None) and ok.requested_at == 1732177805.0
    for raw, msg in (("nope", "not JSON"), ("[1]", "object"), ('{"id":"a/b","requestedAt":"2024-01-01T00:00:00Z"}', "id"),
                     ('{"id":"x","pid":-1,"requestedAt":"2024-01-01T00:00:00Z"}', "pid"),
                     ('{"id":"x","pid":true,"requestedAt":"2024-01-01T00:00:00Z"}', "pid"),
                     ('{"id":"x","requestedAt":"yesterday"}', "requestedAt")):
        with pytest.raises(ValueError, match=msg):
            parse_request(raw)


def test_no_process_of_the_container_is_a_clear_refusal():
    with pytest.raises(GcoreRefused, match="no running process of container 0123456789ab"):
        find_host_pid("0123456789ab" * 5 + "0123", "6f1c2a7e-3b9d-4c51-9a0e-2d8f4b7c1e93")


@pytest.mark.root
def test_gcore_request_through_the_pod_watch_lands_in_the_pod_volume(tmp_path, k8s_cgroup):
    which_or_fail("gcore")
    pod_uid, cid, cgroup = k8s_cgroup
    vol = tmp_path / "vol"
    vol.mkdir()
    env = webhook_env("/pod/data/dump/core.%e.%p.%s", pod_uid)
    unshare, pid = start_namespace_app(tmp_path, vol, env, cgroup)
    os.kill(pid, signal.SIGCONT)  # started stopped: let it run, gcore must leave it running
    try:
        # host-PID mapping: the container's main process, and by its namespace PID
        assert find_host_pid(cid, pod_uid, None) == pid
        assert find_host_pid(cid, pod_uid, 1) == pid
        with pytest.raises(GcoreRefused, match="no process with PID 999"):
            find_host_pid(cid, pod_uid, 999)

        settings = make_settings(tmp_path, rate_limit_count=1)
        events = Recorder()
        watched = record_for(pod_uid, cid, None).view  # what the pod watch knows of the pod
        processor = CrashProcessor(settings, None, events=events, notifier=False, signatures=False,
                                   metrics=AgentMetrics(CollectorRegistry()),
                                   pod_lookup=lambda uid: watched if uid == pod_uid else None)
        service = GcoreService(processor, host_dir=settings.host_dir, node_name="node-3", events=events)
        request = {"id": "gc-5f3a9c1e", "container": "app", "pid": None, "requestedAt": now_rfc3339()}
        record = record_for(pod_uid, cid, request)
        service.on_pod(record)
        service.on_pod(record)  # the same request seen again (MODIFIED, relist): taken once
        assert service.flush(120)
        assert len(service.results) == 1, service.results
        result = service.results[0]
        assert result["outcome"] == "written" and result["path"] == "/pod/data/dump/core.sleep.1.0", result
        core = vol / "core.sleep.1.0"  # %e %p (namespace PID) %s (0: no signal) inside the pod's volume
        assert elf_type(str(core)) == ET_CORE
        meta = read_meta(core)
        assert meta["gcore"] is True and meta["gcore_request"] == "gc-5f3a9c1e" and meta["signal"] == 0
        assert (meta["pod_uid"], meta["container"], meta["container_id"], meta["pid"], meta["global_pid"]) == (
            pod_uid, "app", cid, 1, pid)
        assert meta["size"] == core.stat().st_size and meta["truncated"] is False
        # the process is alive and running (not left stopped)
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
        assert state in "SR", state
        assert not list((Path(settings.host_dir) / "staging").iterdir()), "work file left on the node"
        # the answer: a CoreSnapshot Event naming the request and the path
        (info,) = [i for _, i in events.items]
        body = build_event(info, time.time())
        assert body["reason"] == constants.EVENT_REASON_SNAPSHOT and body["type"] == "Normal"
        assert "gcore gc-5f3a9c1e " in body["message"] and "core written to /pod/data/dump/core.sleep.1.0 (" in body["message"]
        # not rate limited like crashes: a second request right away is served too
        service.on_pod(record_for(pod_uid, cid, {**request, "id": "gc-2", "pid": 1}))
        # a PID that is not in the container: a failed Event, nothing written
        service.on_pod(record_for(pod_uid, cid, {**request, "id": "gc-3", "pid": 999}))
        # too old (e.g. seen again after an agent restart): ignored
        service.on_pod(record_for(pod_uid, cid, {**request, "id": "gc-4", "requestedAt": "2020-01-01T00:00:00Z"}))
        assert service.flush(120)
        assert [r["outcome"] for r in service.results] == ["written", "written", "failed"]
        assert "no process with PID 999" in service.results[2]["reason"]
        failed = build_event(events.items[-1][1], time.time())
        assert failed["type"] == "Warning" and "gcore gc-3 " in failed["message"] and ": failed: " in failed["message"]
        assert [p.name for p in core_files(vol, metadata=True)] == [
            "core.sleep.1.0", "core.sleep.1.0.1", "core.sleep.1.0.1.json", "core.sleep.1.0.json"]
    finally:
        unshare.kill()
        unshare.wait()


@pytest.mark.root
def test_gcore_refuses_a_process_without_registration(tmp_path, k8s_cgroup):
    which_or_fail("gcore")
    pod_uid, cid, cgroup = k8s_cgroup
    vol = tmp_path / "vol"
    vol.mkdir()
    env = {"PATH": "/bin", "COREDUMP_POD_UID": "00000000-0000-0000-0000-000000000000",
           "COREDUMP_PATTERN": "/pod/data/dump/x"}  # someone else's registration: the cgroup disagrees
    unshare, pid = start_namespace_app(tmp_path, vol, env, cgroup)
    os.kill(pid, signal.SIGCONT)
    try:
        settings = make_settings(tmp_path)
        processor = CrashProcessor(settings, None, events=False, notifier=False, signatures=False,
                                   metrics=AgentMetrics(CollectorRegistry()))
        service = GcoreService(processor, host_dir=settings.host_dir, node_name="node-3")
        request = {"id": "gc-x", "container": "app", "pid": None, "requestedAt": now_rfc3339()}
        out = service.take(record_for(pod_uid, cid, request), parse_request(json.dumps(request)))
        assert out["outcome"] == "failed" and "not registered" in out["reason"] and "pod_uid_mismatch" in out["reason"]
        assert list(vol.iterdir()) == []
    finally:
        unshare.kill()
        unshare.wait()


# --- the CLI: PATCH the annotation, wait for the Event ---------------------------------------------
@pytest.fixture
def server():
    with FakeApiServer() as s:
        yield s


def run(server, tmp_path, *args, clock=None):
    """The CLI against ``server``; a ``clock`` (tests/clock_support.py) replaces the real one."""
    kc = server.kubeconfig(tmp_path / "kubeconfig")
    return CliRunner().invoke(main, [*args, "--kubeconfig", str(kc)], catch_exceptions=False, obj=clock)


def test_cli_patches_the_annotation_and_prints_the_agents_path(server, tmp_path):
    server.route("GET", POD_PATH, Recorded(200, "pod-web.json"))
    server.route("PATCH", POD_PATH, Recorded(200, "pod-web-gcore-requested.json"))
    server.route("GET", EVENTS_PATH, Recorded(200, "eventlist-empty.json"), Recorded(200, "eventlist-empty.json"),
                 Recorded(200, "eventlist-coresnapshot.json"))
    res = run(server, tmp_path, "gcore", POD, "-n", "shop", "--request-id", "gc-5f3a9c1e", clock=FakeClock())
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == "/data/dump-a/core-!usr!local!bin!web-1-1732177806"
    assert [r["method"] for r in server.requests] == ["GET", "PATCH", "GET", "GET", "GET"]
    patch = server.requests[1]
    assert patch["headers"]["content-type"] == "application/merge-patch+json"
    value = json.loads(json.loads(patch["body"])["metadata"]["annotations"][constants.ANN_GCORE_REQUEST])
    assert value["id"] == "gc-5f3a9c1e" and value["container"] == "app" and value["pid"] is None
    assert parse_request(json.dumps(value)).requested_at == pytest.approx(time.time(), abs=120)
    listing = server.requests[2]["query"]
    assert listing["fieldSelector"] == [f"involvedObject.name={POD},reason=CoreSnapshot"]


def test_cli_reports_the_agents_failure(server, tmp_path):
    server.route("GET", POD_PATH, Recorded(200, "pod-web.json"))
    server.route("PATCH", POD_PATH, Recorded(200, "pod-web-gcore-requested.json"))
    server.route("GET", EVENTS_PATH, Recorded(200, "eventlist-coresnapshot-failed.json"))
    res = run(server, tmp_path, "gcore", POD, "-n", "shop", "--pid", "999", "--request-id", "gc-5f3a9c1e",
              clock=FakeClock())
    assert res.exit_code == 1
    assert "gcore gc-5f3a9c1e failed on node node-3: no process with PID 999 in the container" in res.output
    value = json.loads(json.loads(server.requests[1]["body"])["metadata"]["annotations"][constants.ANN_GCORE_REQUEST])
    assert value["pid"] == 999


def test_cli_forbidden_patch_names_the_verb(server, tmp_path):
    server.route("GET", POD_PATH, Recorded(200, "pod-web.json"))
    server.route("PATCH", POD_PATH, Recorded(403, "status-403-patch-pod.json"))
    res = run(server, tmp_path, "gcore", POD, "-n", "shop")
    assert res.exit_code == 1
    assert "needs RBAC verb 'patch' on 'pods' in namespace 'shop'" in res.output


def test_cli_times_out_when_no_agent_answers(server, tmp_path):
    clock = FakeClock()
    server.route("GET", POD_PATH, Recorded(200, "pod-web.json"))
    server.route("PATCH", POD_PATH, Recorded(200, "pod-web-gcore-requested.json"))
    server.route("GET", EVENTS_PATH, Recorded(200, "eventlist-coresnapshot.json"))  # other requests only
    res = run(server, tmp_path, "gcore", POD, "-n", "shop", "--timeout", "60", "--request-id", "gc-0000", clock=clock)
    assert res.exit_code == 1 and "no answer from the node agent within 60s for gcore request gc-0000" in res.output


@pytest.mark.root
def test_a_restarted_agent_does_not_take_a_pending_request_again(tmp_path, k8s_cgroup):
    """The annotation stays on the pod: the new agent's first list shows it again (issue 15 s5)."""
    from webhook.diagnose import gcore

    which_or_fail("gcore")
    pod_uid, cid, cgroup = k8s_cgroup
    vol = tmp_path / "vol"
    vol.mkdir()
    unshare, pid = start_namespace_app(tmp_path, vol, webhook_env("/pod/data/dump/core.%p.%t", pod_uid), cgroup)
    os.kill(pid, signal.SIGCONT)
    snapshots: list[int] = []

    def counted(host_pid, workdir, timeout):  # the real gcore, counted: each call freezes the process
        snapshots.append(host_pid)
        return gcore.snapshot(host_pid, workdir, timeout=timeout)

    try:
        settings = make_settings(tmp_path)
        request = {"id": "gc-restart-1", "container": "app", "pid": None, "requestedAt": now_rfc3339()}
        for _run in range(2):  # the first agent, then the one started after it stopped
            processor = CrashProcessor(settings, None, events=False, notifier=False, signatures=False,
                                       metrics=AgentMetrics(CollectorRegistry()))
            service = GcoreService(processor, host_dir=settings.host_dir, node_name="node-3", snapshot=counted)
            service.on_pod(record_for(pod_uid, cid, request))
            assert service.flush(120)
        assert snapshots == [pid], "one request, one snapshot"
        assert len(core_files(vol)) == 1
        assert (Path(settings.host_dir) / "gcore-taken").read_text() == "gc-restart-1\n"
    finally:
        unshare.kill()
        unshare.wait()


def test_taken_ids_survive_and_stay_bounded(tmp_path):
    from webhook.agent.taken import TakenRequests

    path = tmp_path / "host" / "gcore-taken"
    first = TakenRequests(str(path), keep=3)
    assert first.claim("a") and not first.claim("a")
    for rid in "bcdefgh":
        assert first.claim(rid)
    again = TakenRequests(str(path), keep=3)
    assert not again.claim("h") and "g" in again and "a" not in again  # the newest kept
    assert len(path.read_text().split()) <= 7
