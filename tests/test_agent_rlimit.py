"""A registered pod loses nothing by not getting SYS_RESOURCE (issue 12, section 1).

The kernel does not enforce RLIMIT_CORE on pipe dumps; it only passes the soft limit as ``%c``.
Where the wrapper could not raise the limit (no capability, a low hard limit), the agent still
keeps a registered pod's core, within the pod's and the node's size caps, and records the limit
it saw; ``%c`` keeps deciding for unregistered processes. A real process in a kubelet-shaped
cgroup with the webhook's registration environment, its core fed through a real pipe.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.agent_support import handle_bytes, make_processor, make_settings, read_meta, request_for, webhook_env

pytestmark = pytest.mark.timeout(60)


def _registered_app(dump: Path, pod_uid: str, cgroup: Path, **extra: str) -> subprocess.Popen:
    env = {"PATH": "/usr/bin:/bin", **webhook_env(f"{dump}/core.%p", pod_uid, **extra)}
    app = subprocess.Popen(["sh", "-c", f"echo $$ > {cgroup}/cgroup.procs && exec sleep 60"], env=env)
    deadline = time.monotonic() + 10
    while str(app.pid) not in (cgroup / "cgroup.procs").read_text().split():
        assert time.monotonic() < deadline, "the app did not join its cgroup"
        time.sleep(0.02)
    return app


@pytest.mark.root
@pytest.mark.parametrize("rlimit", [0, 4096, 1 << 16])
def test_registered_core_is_kept_whatever_the_soft_limit(tmp_path, k8s_cgroup, rlimit):
    pod_uid, _cid, cgroup = k8s_cgroup
    dump = tmp_path / "dump"
    app = _registered_app(dump, pod_uid, cgroup)
    try:
        data = os.urandom(300_000)  # far above every limit the wrapper could not raise
        out = handle_bytes(make_processor(make_settings(tmp_path)), request_for(app.pid, rlimit=rlimit), data)
        assert out.outcome == "written" and out.destination == "pod", out
        assert Path(out.path).read_bytes() == data
        meta = read_meta(Path(out.path))
        assert meta["rlimit_core"] == rlimit and meta["truncated"] is False and meta["registered"] is True
        # the node's cap still holds (and says it is the node's, not the limit)
        capped = handle_bytes(make_processor(make_settings(tmp_path, max_core_bytes=64 << 10)),
                              request_for(app.pid, rlimit=rlimit, t=1700000001), data)
        assert capped.outcome == "partial" and capped.reason.startswith("size_limit"), capped
        assert Path(capped.path).read_bytes() == data[: 64 << 10]
    finally:
        app.kill()
        app.wait()


@pytest.mark.root
def test_the_pods_own_cap_still_holds_with_a_zero_limit(tmp_path, k8s_cgroup):
    pod_uid, _cid, cgroup = k8s_cgroup
    dump = tmp_path / "dump"
    app = _registered_app(dump, pod_uid, cgroup, COREDUMP_MAX_SIZE=str(100 << 10))
    try:
        data = os.urandom(300_000)
        out = handle_bytes(make_processor(make_settings(tmp_path)), request_for(app.pid, rlimit=0), data)
        assert out.outcome == "partial" and out.reason.startswith("size_limit"), out
        assert Path(out.path).read_bytes() == data[: 100 << 10] and read_meta(Path(out.path))["rlimit_core"] == 0
    finally:
        app.kill()
        app.wait()
