"""End to end with podman + crun: a webhook-mutated pod, run by podman with crun as its OCI
runtime on a pure cgroup v2 view, crashes through the kernel pipe into its own volume.

See tests/podman_support.py for what it takes on these machines (a cgroup2-only mount namespace
for crun 1.8, no device cgroup). The pod's cgroup is the kubelet-shaped cgroupfs parent; podman
names the container ``libpod-<id>`` under it, which the agent must read from the ``0::`` line
(the process's v1 lines are its parent's). The ID the agent records must be podman's own.
"""

from __future__ import annotations

import os

import pytest

from tests.e2e_support import ADMISSION, APP_IMAGE, NODE_NAME, SIDECAR_IMAGE, crash_into_dump_volume, stop_and_check
from tests.podman_support import PodmanNode, podman  # noqa: F401 - fixture
from tests.process_support import wait_for
from tests.runc_support import kill_all, processes_rooted_under
from tests.runtime_support import cgroup_lines, docker_loaded, parent_exe
from webhook import constants as C

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(180)]
IMAGES = (ADMISSION.image, APP_IMAGE, SIDECAR_IMAGE)


@pytest.fixture(scope="module")
def loaded(podman, bin_dir, tmp_path_factory):  # noqa: F811
    return docker_loaded(podman, bin_dir, tmp_path_factory.mktemp("images"), IMAGES[0], IMAGES[1:])


def test_podman_crun_pod_core_lands_in_its_volume(agent, kernel, pod_api, loaded, tmp_path):  # noqa: F811
    node = PodmanNode(tmp_path / "node", loaded, list(IMAGES), node_name=NODE_NAME, flavour="cgroupfs",
        on_start=pod_api.container_started)
    try:
        run, meta = crash_into_dump_volume(node, agent)
        assert meta["runtime"] == "podman"  # libpod-<id>
        info = node.inspect(meta["container_id"])
        assert info["Id"] == meta["container_id"] == run.app.container_id
        assert info["OCIRuntime"] == str(loaded.crun) and info["Path"] == C.WRAPPER_PATH
        assert info["Config"]["Labels"]["io.kubernetes.pod.uid"] == meta["pod_uid"]
        # a process of this pod as the host sees it: under conmon, named in the v2 line only
        sidecar = node.start(run.pod, "log-shipper")
        pid = wait_for(lambda: node.pid_of(sidecar), 20, "the sidecar's pid")
        assert os.path.basename(parent_exe(pid)) == "conmon"
        lines = {k.split(":")[0]: v for k, v in cgroup_lines(pid).items()}
        assert lines.pop("0") == f"{node.pod_cgroup(run.pod)}/libpod-{sidecar.container_id}"
        assert not [p for p in lines.values() if "kubepods" in p], lines
        stop_and_check(agent, kernel, node, tmp_path)
        assert not os.path.exists(f"/sys/fs/cgroup/unified{node.pod_cgroup(run.pod)}"), "the pod's cgroup is left"
    finally:
        node.cleanup()
        kill_all(processes_rooted_under(tmp_path))
