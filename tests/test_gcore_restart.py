"""Issue 15 section 5 for real: a gcore request is taken once, across an agent restart.

A mutated pod runs in a runc container (kubelet-shaped cgroup, the webhook's registration); the
user's ``coredump gcore`` annotation appears on it in the API server (tests/pod_api.py); the real
``coredump agent run`` sees it through its pod watch and snapshots the process into the pod's
volume. The agent is stopped and a new one starts on the same host dir: its first list shows the
same annotation (the agent may not patch pods), and it must not freeze the process again.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import pytest

from tests.crash_support import core_files
from tests.e2e_support import NAMESPACE, forging_pod, running_agent, start_pod
from tests.process_support import wait_for
from tests.suite_support import which_or_fail
from webhook import constants as C

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(150)]

SCRIPT = "touch /pod/data/dump/up; while [ ! -e /pod/data/dump/done ]; do sleep 0.1; done; exit 0"


def test_a_pending_gcore_request_is_taken_once_across_an_agent_restart(kernel, bin_dir, node_factory,  # noqa: F811
                                                                       pod_api):  # noqa: F811
    which_or_fail("gcore")
    pod_api.route_events(NAMESPACE)
    node = node_factory("cgroupfs")
    pod, volumes, app = start_pod(node, forging_pod(SCRIPT))
    (mount,) = [m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["mountPath"] == "/pod/data/dump"]
    vol = volumes[mount["name"]]
    wait_for(lambda: (vol / "up").exists(), 20, "the app")
    request = {"id": "gc-restart-e2e", "container": "app", "pid": None,
               "requestedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    host = Path(tempfile.mkdtemp(prefix="cdg-"))

    def snapshots() -> list[Path]:
        return [p for p in core_files(vol) if p.name.startswith("core-eci")]

    def snapshot_events() -> list[dict]:
        return [e for e in pod_api.posted_events() if e.get("reason") == C.EVENT_REASON_SNAPSHOT]

    with running_agent(bin_dir, pod_api, host=host, keep_host=True) as first:
        with pod_api._cond:  # the annotation lands on the pod the API server already has
            current = pod_api._pods[pod["metadata"]["uid"]][2]
        current = json.loads(json.dumps(current))
        current["metadata"]["annotations"][C.ANN_GCORE_REQUEST] = json.dumps(request)
        pod_api.set_pod(current)
        wait_for(lambda: snapshot_events(), 60, "the first agent's snapshot")
        assert len(snapshots()) == 1
        assert first.stop() == 0
    taken = (host / "gcore-taken").read_text() if (host / "gcore-taken").exists() else None
    with running_agent(bin_dir, pod_api, host=host) as second:  # lists the pod, annotation and all
        wait_for(lambda: any(r.get("message") == "pods listed" for r in second.records()), 15, "the list")
        time.sleep(2.0)  # time enough for a second snapshot, were it taken
        assert len(snapshots()) == 1, sorted(p.name for p in vol.iterdir())
        assert len(snapshot_events()) == 1
        assert not [r for r in second.records() if r.get("message") == "gcore taken"]
        (vol / "done").touch()
        assert app.wait(30) == 0, app.output()
        assert second.stop() == 0
    assert taken == "gc-restart-e2e\n"  # the durable record in the agent's host dir
    meta = json.loads(Path(str(snapshots()[0]) + C.METADATA_SUFFIX).read_text())
    assert meta["gcore_request"] == "gc-restart-e2e" and meta["namespace"] == NAMESPACE
