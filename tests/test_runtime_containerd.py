"""End to end with containerd: a webhook-mutated pod, run by a real containerd (``ctr``), crashes
through the kernel pipe into its own volume.

The daemon is the test module's own (tests/containerd_support.py); images are imported from tars
built here. Each container is created by containerd with the kubelet-shaped OCI config and cgroup
path, for both cgroup drivers' layouts (cgroupfs ``/kubepods/besteffort/pod<uid>/<id>``; systemd
``kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope``), and runs under the real
``containerd-shim-runc-v2``. The core must land at the pattern in the pod's volume, its metadata
name the pod and container, and the container ID the agent recorded be containerd's own.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.containerd_support import SHIM, ContainerdNode, containerd  # noqa: F401 - fixture
from tests.e2e_support import (
    ADMISSION,
    APP_IMAGE,
    NODE_NAME,
    SIDECAR_IMAGE,
    check_cgroups_gone,
    crash_into_dump_volume,
    stop_and_check,
)
from tests.process_support import wait_for
from tests.runc_support import CGROUP_FLAVOURS, kill_all, processes_rooted_under
from tests.runtime_support import cgroup_lines, parent_exe, parent_pid, pod_image_rootfs
from webhook import constants as C

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def imported(containerd, bin_dir, tmp_path_factory):  # noqa: F811
    """The three images the pod uses, imported once into the module's containerd."""
    base = tmp_path_factory.mktemp("images")
    for ref, rootfs in pod_image_rootfs(bin_dir, base, ADMISSION.image, (APP_IMAGE, SIDECAR_IMAGE)).items():
        containerd.import_image(rootfs, ref)
    listed = containerd.ctr("images", "ls", "-q").stdout.split()
    assert {ADMISSION.image, APP_IMAGE, SIDECAR_IMAGE} <= set(listed), listed
    return containerd


@pytest.mark.parametrize("flavour", CGROUP_FLAVOURS)
def test_containerd_pod_core_lands_in_its_volume(agent, kernel, pod_api, imported, tmp_path, flavour):  # noqa: F811
    daemon = imported
    node = ContainerdNode(tmp_path / "node", daemon, {}, node_name=NODE_NAME, flavour=flavour,
        on_start=pod_api.container_started)
    node.images = {ref: node.image_rootfs(ref) for ref in (ADMISSION.image, APP_IMAGE, SIDECAR_IMAGE)}
    try:
        run, meta = crash_into_dump_volume(node, agent)
        assert meta["runtime"] == ("containerd" if flavour == "systemd" else None)
        # containerd's own record of the container the agent named
        info = json.loads(daemon.ctr("containers", "info", meta["container_id"]).stdout)
        assert info["ID"] == meta["container_id"] == run.app.container_id
        assert info["Runtime"]["Name"] == "io.containerd.runc.v2"
        assert info["Spec"]["linux"]["cgroupsPath"] == run.app.cgroups_path
        assert info["Spec"]["process"]["args"][0] == C.WRAPPER_PATH
        # a process of this pod (the sidecar) as the host sees it: a child of the real shim,
        # in the kubelet-shaped cgroup containerd created for it
        sidecar = node.start(run.pod, "log-shipper")
        pid = wait_for(lambda: node.pid_of(sidecar), 10, "the sidecar's task")
        assert os.path.basename(parent_exe(pid)) == SHIM
        shim_cmd = open(f"/proc/{parent_pid(pid)}/cmdline", "rb").read().split(b"\0")
        assert sidecar.container_id.encode() in shim_cmd and str(daemon.socket).encode() in shim_cmd
        assert cgroup_lines(pid)["0:"] == sidecar.cgroups_path
        stop_and_check(agent, kernel, node, tmp_path)
        check_cgroups_gone(run, flavour)
        wait_for(lambda: not daemon.shims(), 10, "the pod's shims to exit once its containers are deleted")
    finally:
        node.cleanup()
        kill_all(processes_rooted_under(tmp_path))
