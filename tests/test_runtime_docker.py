"""End to end with docker: a webhook-mutated pod, run by a real dockerd, crashes through the kernel
pipe into its own volume.

The daemon is the module's own (tests/docker_support.py: no iptables, no bridge, its own roots and
socket); images are ``docker load``ed from tars built here. Each container is a ``docker run`` of
the kubelet-shaped container with the pod's cgroup as ``--cgroup-parent`` (cgroupfs driver, with
the cgroupfs and the systemd driver's slice-shaped parent): docker chooses the container ID, the
agent must record that one. (Docker's systemd driver, which names ``docker-<id>.scope``, needs
systemd as PID 1, absent on these machines: its names are covered by the parser's unit tests.)
"""

from __future__ import annotations

import os

import pytest

from tests.docker_support import DockerNode, dockerd  # noqa: F401 - fixture
from tests.e2e_support import ADMISSION, APP_IMAGE, NODE_NAME, SIDECAR_IMAGE, crash_into_dump_volume, stop_and_check
from tests.process_support import wait_for
from tests.runc_support import CGROUP_FLAVOURS, kill_all, processes_rooted_under
from tests.runtime_support import cgroup_lines, docker_loaded, parent_exe, parent_pid
from webhook import constants as C

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(180)]
IMAGES = (ADMISSION.image, APP_IMAGE, SIDECAR_IMAGE)


@pytest.fixture(scope="module")
def loaded(dockerd, bin_dir, tmp_path_factory):  # noqa: F811
    return docker_loaded(dockerd, bin_dir, tmp_path_factory.mktemp("images"), IMAGES[0], IMAGES[1:])


@pytest.mark.parametrize("flavour", CGROUP_FLAVOURS)
def test_docker_pod_core_lands_in_its_volume(agent, kernel, pod_api, loaded, tmp_path, flavour):  # noqa: F811
    daemon = loaded
    node = DockerNode(tmp_path / "node", daemon, list(IMAGES), node_name=NODE_NAME, flavour=flavour,
        on_start=pod_api.container_started)
    try:
        run, meta = crash_into_dump_volume(node, agent)
        # docker's own record of the container the agent named
        info = node.inspect(meta["container_id"])
        assert info["Id"] == meta["container_id"] == run.app.container_id
        assert info["HostConfig"]["CgroupParent"] == node.pod_cgroup(run.pod)
        assert info["Config"]["Labels"]["io.kubernetes.pod.uid"] == meta["pod_uid"]
        assert info["Config"]["Labels"]["io.kubernetes.container.name"] == meta["container"] == "app"
        assert info["Path"] == C.WRAPPER_PATH and info["State"]["ExitCode"] == 0
        # a process of this pod as the host sees it: under docker's shim, in the pod's cgroup
        sidecar = node.start(run.pod, "log-shipper")
        pid = wait_for(lambda: node.pid_of(sidecar), 20, "the sidecar's pid")
        assert os.path.basename(parent_exe(pid)) == "containerd-shim-runc-v2"
        shim_cmd = open(f"/proc/{parent_pid(pid)}/cmdline", "rb").read().split(b"\0")
        assert b"moby" in shim_cmd and sidecar.container_id.encode() in shim_cmd
        assert cgroup_lines(pid)["0:"] == f"{node.pod_cgroup(run.pod)}/{sidecar.container_id}"
        stop_and_check(agent, kernel, node, tmp_path)
        uid = run.pod["metadata"]["uid"]
        assert not [h for h in os.listdir("/sys/fs/cgroup")
                    if os.path.isdir(f"/sys/fs/cgroup/{h}{node.pod_cgroup(run.pod)}")], f"pod {uid} cgroup left"
    finally:
        node.cleanup()
        kill_all(processes_rooted_under(tmp_path))
