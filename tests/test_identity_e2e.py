"""Issue 8 section 1 performed for real: a tenant forges another namespace's identity.

Everything is real but the API server (tests/pod_api.py: list + watch over a real socket, the
pods being the ones the test node runs): the webhook's mutation, runc containers with
kubelet-shaped cgroups, kernel crashes, the static helper and ``coredump agent run`` with its pod
watch and Events on, the page app over the agent's node location.

The attacker: a process of a pod in ``shop`` that execs children with
``COREDUMP_POD_NAMESPACE=payments``, ``COREDUMP_POD_NAME=billing-...``, its own true pod UID, an
unusable pattern (so the core goes to the node location) and a fresh container name per crash.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from tests.crash_support import core_files
from tests.e2e_support import NAMESPACE, Agent, forging_pod, running_agent, start_pod
from tests.pod_api import PodApi
from tests.process_support import wait_for
from webhook import constants as C
from webhook.inspect.listing import scan_directory
from webhook.inspect.page import UNVERIFIED_HEADING, create_page_app

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(120)]

FORGED_NS, FORGED_POD = "payments", "billing-5c8d7f6b9-zzt4q"
#: Where the agent files a verified crash's CoreDump (the crash index) for the true namespace.
INDEX_PATH = f"/apis/coredump-webhook.io/v1alpha1/namespaces/{NAMESPACE}/coredumps"
#: token -> namespaces its user may exec into ("" = every namespace: a cluster-wide reader)
GRANTS = {"payments-dev": {"payments"}, "shop-dev": {"shop"}, "admin": {"shop", "payments", ""}}


def authorize(token: str, namespace: str) -> bool:
    return namespace in GRANTS.get(token, set())


def page_view(cores: Path, token: str) -> tuple[str, Any]:
    app = create_page_app(str(cores), authorize).test_client()
    return app.get("/", headers={"Authorization": f"Bearer {token}"}).get_data(as_text=True), app


def crash_lines(agent: Agent) -> list[dict[str, Any]]:
    return [r for r in agent.crashes() if r.get("comm") == "sleep"]


FORGE = (f"export COREDUMP_POD_NAMESPACE={FORGED_NS} COREDUMP_POD_NAME={FORGED_POD} COREDUMP_PATTERN='|/forged'; "
         "for n in 1 2; do COREDUMP_CONTAINER_NAME=fresh-$n sleep 30 & p=$!; echo $p >> /pod/data/dump/pids; "
         "sleep 0.3; kill -SEGV $p; wait $p; done; exit 0")


@pytest.fixture
def events_agent(kernel, bin_dir, pod_api):  # noqa: F811
    """The agent with Events on (posted into whatever namespace a crash is filed under)."""
    pod_api.route_events(NAMESPACE, FORGED_NS)
    with running_agent(bin_dir, pod_api) as a:
        yield a


def test_forged_namespace_is_ignored_everywhere(events_agent, node_factory, pod_api):  # noqa: F811
    agent = events_agent
    node = node_factory("cgroupfs")
    pod, volumes, app = start_pod(node, forging_pod(FORGE))
    assert app.wait(30) == 0, app.output()
    true_name, uid = pod["metadata"]["name"], pod["metadata"]["uid"]
    wait_for(lambda: len(crash_lines(agent)) == 2, 20, "both crashes handled")
    first, second = sorted(crash_lines(agent), key=lambda r: r["global_pid"])
    # filed under the true namespace and pod, found through the cgroup and the pod watch
    cores = agent.host / "cores"
    assert not (cores / FORGED_NS).exists(), sorted(p.as_posix() for p in cores.rglob("*"))
    (core,) = core_files(cores / NAMESPACE / true_name / "app")
    assert (first["outcome"], first["destination"], first["path"]) == ("written", "node", str(core))
    assert (first["namespace"], first["pod"], first["container"]) == (NAMESPACE, true_name, "app")
    meta = json.loads(Path(str(core) + C.METADATA_SUFFIX).read_text())
    assert (meta["namespace"], meta["pod"], meta["pod_uid"], meta["container"]) == (NAMESPACE, true_name, uid, "app")
    assert meta["identity"] == "verified" and meta["identity_mismatches"] == ["container", "namespace", "pod"]
    assert FORGED_NS not in json.dumps(meta) and FORGED_POD not in json.dumps(meta)
    warned = [r for r in agent.records() if r.get("message", "").startswith("registration disagrees")]
    assert {r["field"] for r in warned} >= {"namespace", "pod", "container"}
    # a fresh container name changed nothing: the rate limit holds the container ID
    assert second["outcome"] == "rate_limited" and second["namespace"] == NAMESPACE, second
    assert len(core_files(cores, recursive=True)) == 1
    # the Event goes to the true pod only; nothing was ever posted into payments
    wait_for(lambda: pod_api.posted_events(), 15, "the CoreDumped Event")
    wait_for(lambda: any(r["path"] == INDEX_PATH for r in pod_api.server.requests), 15, "the CoreDump")
    time.sleep(0.5)
    posts = [r["path"] for r in pod_api.server.requests if r["method"] == "POST"]
    # one Event and one CoreDump (the crash index), both in the true namespace only
    assert sorted(posts) == sorted([f"/api/v1/namespaces/{NAMESPACE}/events", INDEX_PATH]), posts
    (event,) = pod_api.posted_events()
    assert event["involvedObject"]["name"] == true_name and event["involvedObject"]["uid"] == uid
    # the page: shop's users see it, payments' users do not (not even by downloading it)
    html, client = page_view(cores, "shop-dev")
    assert true_name in html and core.name in html and FORGED_POD not in html
    html, client = page_view(cores, "payments-dev")
    assert 'id="empty"' in html and core.name not in html
    rel = core.relative_to(cores).as_posix()
    assert client.get(f"/download/{rel}", headers={"Authorization": "Bearer payments-dev"}).status_code == 404
    assert client.get(f"/download/{rel}", headers={"Authorization": "Bearer shop-dev"}).status_code == 200
    assert agent.stop() == 0


# --- the API server is down at the crash: one test per rule ---------------------------------------
#: Two crashes while the agent cannot reach the API: one into the pod's volume (its true
#: registration), one sent to the node location (an unusable pattern); the container then stays
#: alive until the test lets it go.
DOWN_SCRIPT = ("sleep 30 & p=$!; sleep 0.3; kill -SEGV $p; wait $p; "
               "COREDUMP_PATTERN='|/unusable' COREDUMP_POD_NAMESPACE=payments sleep 30 & p=$!; sleep 0.3; "
               "kill -SEGV $p; wait $p; touch /pod/data/dump/crashed; "
               "while [ ! -e /pod/data/dump/done ]; do sleep 0.1; done; exit 0")


def _unverified_state(agent: Agent, vol: Path) -> dict[str, Any]:
    cores = agent.host / "cores"
    (node_core,) = core_files(cores, recursive=True)
    (pod_core,) = [p for p in core_files(vol) if p.name.startswith("core-eci")]
    return {
        "node_core": node_core,
        "node_meta": json.loads(Path(str(node_core) + C.METADATA_SUFFIX).read_text()),
        "pod_core": pod_core,
        "pod_meta": json.loads(Path(str(pod_core) + C.METADATA_SUFFIX).read_text()),
        "posts": [r["path"] for r in agent.api.server.requests if r["method"] == "POST"],
        "page": {token: page_view(cores, token)[0] for token in GRANTS},
        "scan": scan_directory(str(cores))[0],
        "lines": crash_lines(agent),
    }


@pytest.fixture(scope="module")
def api_down_at_the_crash(tmp_path_factory, bin_dir):
    """The scenario once for the tests below: state while the API is down, then after it is back."""
    from tests.e2e_support import ADMISSION, APP_IMAGE, NODE_NAME, SIDECAR_IMAGE
    from tests.kube_apiserver import FakeApiServer
    from tests.runc_support import Node, busybox_rootfs, kill_all, processes_rooted_under, single_binary_rootfs
    from tests.suite_support import kernel_settings_guard, which_or_fail

    tmp = tmp_path_factory.mktemp("apidown")
    images = {ADMISSION.image: single_binary_rootfs(bin_dir / "coredump-wrapper", C.IMAGE_WRAPPER_PATH),
              APP_IMAGE: busybox_rootfs, SIDECAR_IMAGE: busybox_rootfs}
    with kernel_settings_guard(), FakeApiServer() as server:
        api = PodApi(server)
        api.route_events(NAMESPACE, FORGED_NS)
        api.down = True
        node = Node(tmp / "node", which_or_fail("runc"), images, node_name=NODE_NAME, flavour="systemd",
                    on_start=api.container_started)
        try:
            with running_agent(bin_dir, api, "--rate-limit-count", "10") as agent:
                pod, volumes, app = start_pod(node, forging_pod(DOWN_SCRIPT))
                (mount,) = [m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["mountPath"] == "/pod/data/dump"]
                vol = volumes[mount["name"]]
                wait_for(lambda: (vol / "crashed").exists(), 30, "both crashes")
                wait_for(lambda: len(crash_lines(agent)) == 2, 20, "both crashes handled")
                wait_for(lambda: len(list(vol.glob("core-eci*.json"))) == 1, 10, "the pod core's metadata")
                started = time.monotonic()
                while time.monotonic() - started < 1.0:  # the agent keeps trying the API meanwhile
                    time.sleep(0.1)
                down = _unverified_state(agent, vol)
                api.down = False  # the API server is back: the watch lists the pod
                wait_for(lambda: any(r.get("message") == "pods listed" for r in agent.records()), 60, "a list")
                wait_for(lambda: len(api.posted_events()) == 2, 30, "the Events, once verified")
                wait_for(lambda: any(r["method"] == "POST" and r["path"] == INDEX_PATH for r in server.requests),
                         30, "the CoreDumps, once verified")
                pod_meta = json.loads(Path(str(down["pod_core"]) + C.METADATA_SUFFIX).read_text())
                moved = core_files(agent.host / "cores", recursive=True)
                up = {"pod_meta": pod_meta, "node_cores": moved, "events": api.posted_events(),
                      "posts": [r["path"] for r in server.requests if r["method"] == "POST"],
                      "page": {token: page_view(agent.host / "cores", token)[0] for token in GRANTS},
                      "left": list((agent.host / "unverified").iterdir())}
                (vol / "done").touch()
                assert app.wait(30) == 0, app.output()
                assert agent.stop() == 0
                # the agent's host dir goes with it: keep the node location for the checks
                kept = tmp / "cores"
                shutil.copytree(agent.host / "cores", kept, symlinks=True)
                scenario = {"pod": pod, "down": down, "up": up, "cores": agent.host / "cores", "kept": kept}
        finally:
            node.cleanup()
            kill_all(processes_rooted_under(tmp))
    # the kernel lock is released here: the other tests of this module take it themselves
    yield scenario


def test_api_down_the_crash_path_does_not_wait_and_the_core_is_written(api_down_at_the_crash):
    s = api_down_at_the_crash
    lines = s["down"]["lines"]
    assert [(r["outcome"], r["destination"]) for r in lines] == [("written", "pod"), ("written", "node")]
    assert all(r["duration"] < 5 for r in lines)  # no API call on the crash path
    assert s["down"]["pod_core"].stat().st_size == s["down"]["pod_meta"]["size"] > 0


def test_api_down_cores_are_labelled_by_pod_uid_and_container_id_only(api_down_at_the_crash):
    s = api_down_at_the_crash
    uid = s["pod"]["metadata"]["uid"]
    for meta in (s["down"]["pod_meta"], s["down"]["node_meta"]):
        assert meta["identity"] == "unverified"
        assert (meta["namespace"], meta["pod"], meta["container"]) == (None, None, None)
        assert meta["pod_uid"] == uid and len(meta["container_id"]) == 64
        names = json.dumps({k: v for k, v in meta.items() if k != "hostname"})  # %h: the kernel's, for naming
        assert FORGED_NS not in names and s["pod"]["metadata"]["name"] not in names, names
    rel = s["down"]["node_core"].relative_to(s["cores"]).parts
    assert rel[:3] == ("_unverified", f"pod-{uid}", s["down"]["node_meta"]["container_id"][:12]), rel
    assert all(r["namespace"] is None and r["pod"] is None for r in s["down"]["lines"])


def test_api_down_no_event_page_entry_or_listing_names_an_unverified_pod(api_down_at_the_crash):
    s = api_down_at_the_crash
    name = s["pod"]["metadata"]["name"]
    assert s["down"]["posts"] == []  # no Event while the names were unverified
    assert all(r.namespace == "" and r.pod == "" for r in s["down"]["scan"])
    for token in ("shop-dev", "payments-dev"):
        assert 'id="empty"' in s["down"]["page"][token], token
    admin = s["down"]["page"]["admin"]  # a reader of every namespace sees it, by pod UID
    assert UNVERIFIED_HEADING in admin and s["pod"]["metadata"]["uid"] in admin and name not in admin


def test_api_back_the_names_are_filled_in_and_the_core_moved(api_down_at_the_crash):
    s = api_down_at_the_crash
    name, uid = s["pod"]["metadata"]["name"], s["pod"]["metadata"]["uid"]
    (node_core,) = s["up"]["node_cores"]
    assert node_core.relative_to(s["cores"]).parts[:3] == (NAMESPACE, name, "app")
    kept = s["kept"]  # the node location as the agent left it
    assert node_core.name == s["down"]["node_core"].name
    assert not (kept / s["down"]["node_core"].relative_to(s["cores"])).exists()
    # the pod's directories went with it; the unverified build-id store stays for retention
    assert [p.name for p in (kept / "_unverified").iterdir()] == [".symbols"]
    meta = json.loads((kept / (str(node_core.relative_to(s["cores"])) + C.METADATA_SUFFIX)).read_text())
    # the core's sysroot moved with it, its links now into the namespace's store
    sysroot = kept / (str(node_core.relative_to(s["cores"])) + ".sysroot")
    assert meta["sysroot"] == str(node_core) + ".sysroot"
    assert meta["symbols_store"] == str(s["cores"] / NAMESPACE / ".symbols")
    links = [p for p in sysroot.rglob("*") if p.is_symlink() and "/buildid/" in os.readlink(p)]
    assert links and all(p.resolve().is_relative_to(kept / NAMESPACE / ".symbols") and p.resolve().is_file()
                         for p in links), [(p, os.readlink(p)) for p in links]
    assert (meta["identity"], meta["namespace"], meta["pod"], meta["container"]) == ("verified", NAMESPACE, name, "app")
    assert meta["path"] == str(node_core) and meta["digest"] == s["down"]["node_meta"]["digest"]
    assert meta["digest"].startswith("xxh128:")
    pod_meta = s["up"]["pod_meta"]  # rewritten through the container's live process
    assert (pod_meta["identity"], pod_meta["namespace"], pod_meta["pod"], pod_meta["container"]) == (
        "verified", NAMESPACE, name, "app")
    assert {e["involvedObject"]["name"] for e in s["up"]["events"]} == {name}
    # the Events and the crash index's CoreDumps, once verified, in the true namespace only
    assert set(s["up"]["posts"]) == {f"/api/v1/namespaces/{NAMESPACE}/events", INDEX_PATH}
    assert name in s["up"]["page"]["shop-dev"] and 'id="empty"' in s["up"]["page"]["payments-dev"]
    assert s["up"]["left"] == []  # nothing pending any more
    assert meta["pod_uid"] == uid


# --- issue 15 section 4: a spooled core keeps its pod ---------------------------------------------
def test_spooled_core_lands_in_the_pod_volume_while_the_container_lives(kernel, bin_dir, node_factory,  # noqa: F811
                                                                        pod_api, tmp_path):
    """Agent down: the helper spools, recording the pinned process's cgroup and registration.
    Agent up: the core is delivered into the pod's own volume, through a live process of the same
    container, under the names the pod watch verified."""
    import tempfile

    from webhook.agent import install
    from webhook.agent.settings import AgentSettings

    host = Path(tempfile.mkdtemp(prefix="cds-"))
    install.install(AgentSettings(host_dir=str(host), helper_binary=str(bin_dir / "coredump-helper"), metrics_bind=""))
    node = node_factory("cgroupfs")
    script = ("sleep 30 & p=$!; echo $p > /pod/data/dump/child.pid; sleep 0.3; kill -SEGV $p; wait $p; "
              "touch /pod/data/dump/crashed; while [ ! -e /pod/data/dump/done ]; do sleep 0.1; done; exit 0")
    pod, volumes, app = start_pod(node, forging_pod(script))
    (mount,) = [m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["mountPath"] == "/pod/data/dump"]
    vol = volumes[mount["name"]]
    wait_for(lambda: (vol / "crashed").exists(), 30, "the crash")
    (entry,) = wait_for(lambda: [p for p in (host / "spool").iterdir() if not p.name.endswith(".tmp")], 15, "spool")
    # the helper's record, taken while the process was pinned
    assert f"pod{pod['metadata']['uid']}" in (entry / "cgroup").read_text()
    env = (entry / "environ").read_bytes().split(b"\0")
    assert b"COREDUMP_PATTERN=/pod/data/dump/core-eci" in env and all(e.startswith(b"COREDUMP_") for e in env if e)
    assert (entry / "exe").read_text().endswith("/bin/busybox")
    assert not [p for p in vol.iterdir() if p.name.startswith("core-eci")]
    meta, nspid = _next_agent_delivers_the_spooled_core(bin_dir, pod_api, host, pod, vol, app)
    assert meta["path"] == f"/pod/data/dump/core-eci.{nspid}"
    assert "agent unreachable" in meta["spool_reason"]


def test_core_spooled_by_a_stopping_agent_lands_in_the_pod_volume(kernel, bin_dir, node_factory,  # noqa: F811
                                                                  pod_api, tmp_path):
    """A pod's crash waits for a dump slot when the agent is stopped (a rollout): the stopping
    agent spools it, recording the pinned process's cgroup and registration as the helper
    does, and the next agent delivers it into the pod's own volume under its verified names."""
    import tempfile
    import threading

    from tests.crash_support import reap, segv
    from tests.lifecycle_support import Agent as InProcessAgent
    from tests.lifecycle_support import Gate, agent_settings, start_sleepers

    host = Path(tempfile.mkdtemp(prefix="cdq-"))
    node = node_factory("cgroupfs")
    script = ("while [ ! -e /pod/data/dump/go ]; do sleep 0.05; done; "
              "sleep 30 & p=$!; echo $p > /pod/data/dump/child.pid; sleep 0.2; kill -SEGV $p; wait $p; "
              "touch /pod/data/dump/crashed; while [ ! -e /pod/data/dump/done ]; do sleep 0.1; done; exit 0")
    pod, volumes, app = start_pod(node, forging_pod(script))
    (mount,) = [m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["mountPath"] == "/pod/data/dump"]
    vol = volumes[mount["name"]]
    s = agent_settings(host, bin_dir, max_concurrent_dumps=1, restore_on_stop="never", stop_timeout_seconds=30)
    gate = Gate()
    first = InProcessAgent(s, gate.factory)
    try:
        (sleeper,) = start_sleepers(1)
        segv([sleeper])  # holds the one slot until the gate opens
        assert gate.entered.wait(10)
        (vol / "go").touch()
        wait_for(lambda: first.registry.get_sample_value("coredump_agent_dumps_queued") == 1, 20,
                 "the pod's core queued")
        stopper = threading.Thread(target=first.stop)
        stopper.start()
        (entry,) = wait_for(lambda: [p for p in (host / "spool").iterdir() if not p.name.endswith(".tmp")], 15,
                            "the stopping agent's spool entry")
        wait_for(lambda: (vol / "crashed").exists(), 15, "the pod's crash released")
        gate.release.set()
        stopper.join(60)
        assert not stopper.is_alive()
        reap([sleeper], timeout=10)
    finally:
        gate.release.set()
    # the agent's record, in the helper's layout, taken while the process was pinned
    assert "agent stopped before this core's turn" in (entry / "reason").read_text()
    assert f"pod{pod['metadata']['uid']}" in (entry / "cgroup").read_text()
    env = (entry / "environ").read_bytes().split(b"\0")
    assert b"COREDUMP_PATTERN=/pod/data/dump/core-eci" in env and all(e.startswith(b"COREDUMP_") for e in env if e)
    assert (entry / "exe").read_text().endswith("/bin/busybox")
    assert (entry / "root").read_text()  # its root as /proc shows it (the helper records the same)
    meta, _ = _next_agent_delivers_the_spooled_core(bin_dir, pod_api, host, pod, vol, app)
    assert "agent stopped before this core's turn" in meta["spool_reason"]


def _next_agent_delivers_the_spooled_core(bin_dir, pod_api, host: Path, pod: dict, vol: Path,
                                          app) -> tuple[dict, int]:
    """A new agent on ``host`` drains the spool at start: the core lands in the pod's volume
    under its verified names, nothing goes to cores/unknown and the spool is empty; then the
    pod finishes and the agent stops cleanly. Returns the core's metadata and the crashed PID."""
    from tests.crash_support import check_elf_core

    with running_agent(bin_dir, pod_api, host=host) as agent:
        nspid = int((vol / "child.pid").read_text())
        core = vol / f"core-eci.{nspid}"

        def verified() -> dict | None:
            try:
                meta = json.loads(Path(str(core) + C.METADATA_SUFFIX).read_text())
            except (OSError, ValueError):
                return None
            return meta if meta.get("identity") == "verified" else None

        meta = wait_for(verified, 30, "the spooled core in the pod's volume, its names verified")
        check_elf_core(core.read_bytes())
        assert (meta["namespace"], meta["pod"], meta["container"], meta["destination"]) == (
            NAMESPACE, pod["metadata"]["name"], "app", "pod")
        assert meta["exe"] == "/bin/busybox" and meta["pid"] == nspid
        assert not (agent.host / "cores" / "unknown").exists()
        assert not list((host / "spool").iterdir())
        (vol / "done").touch()
        assert app.wait(30) == 0, app.output()
        assert agent.stop() == 0
    return meta, nspid
