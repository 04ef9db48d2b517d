"""End to end on a pure cgroup v2 node: the pod identified from the ``0::`` line alone.

This host is hybrid (v1 controllers + v2 at /sys/fs/cgroup/unified). runc runs in a private
mount namespace where cgroup2 is mounted at /sys/fs/cgroup (tests/runtime_support.py), so it
places the container with the systemd driver's slice names in the v2 hierarchy only: the
crashing process's v1 lines are its parent's (no pod in them), its ``0::`` line is
``/kubepods.slice/.../cri-containerd-<id>.scope``. The agent runs in the host namespace, as the
DaemonSet does, and must name the right pod and container from that one line.
"""

from __future__ import annotations

import os
import re

import pytest

from tests.e2e_support import (
    ADMISSION,
    APP_IMAGE,
    NODE_NAME,
    SIDECAR_IMAGE,
    check_cgroups_gone,
    check_core,
    check_limits_raised,
    deployment_pod,
    mutated,
    run_pod,
    stop_and_check,
)
from tests.process_support import wait_for
from tests.runc_support import Node, busybox_rootfs, kill_all, processes_rooted_under, single_binary_rootfs
from tests.runtime_support import cgroup2_runc, cgroup_lines
from webhook import constants as C

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(120)]


def test_pure_cgroup_v2_pod_is_identified_from_the_v2_line_alone(agent, kernel, pod_api, bin_dir, tmp_path):  # noqa: F811
    images = {ADMISSION.image: single_binary_rootfs(bin_dir / "coredump-wrapper", C.IMAGE_WRAPPER_PATH),
              APP_IMAGE: busybox_rootfs, SIDECAR_IMAGE: busybox_rootfs}
    node = Node(tmp_path / "node", cgroup2_runc(tmp_path), images, node_name=NODE_NAME, flavour="systemd",
        on_start=pod_api.container_started)
    try:
        pattern = "/data/dump-a/core-%e-%p"
        pod = mutated(deployment_pod({C.ANN_PATTERN: pattern}, out_dir="/data/dump-a"))
        (mount,) = [m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["mountPath"] == "/data/dump-a"]
        run = run_pod(node, pod)
        vol = run.volume_dirs[mount["name"]]
        # the host's view of a process of this pod (its sidecar, still running): the pod and the
        # container are named in the v2 line only; the v1 lines are the runtime's parent's
        sidecar = node.start(run.pod, "log-shipper")
        pid = wait_for(lambda: node.pid_of(sidecar), 10, "the sidecar's pid")
        lines = {k.split(":")[0]: v for k, v in cgroup_lines(pid).items()}
        uid = run.pod["metadata"]["uid"]
        v2 = lines.pop("0")
        assert v2 == (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid.replace('-', '_')}.slice/"
                      f"cri-containerd-{sidecar.container_id}.scope")
        assert lines and not [p for p in lines.values() if "kubepods" in p or uid in p], lines
        v2_app = v2.replace(sidecar.container_id, run.app.container_id)
        nspid = int((vol / "child.pid").read_text())
        core = vol / f"core-sleep-{nspid}"
        assert core.exists(), sorted(os.listdir(vol))
        meta = check_core(run, agent, core, f"/data/dump-a/{core.name}")
        assert meta["runtime"] == "containerd"  # from the scope name's prefix
        assert re.fullmatch(r"[0-9a-f]{64}", meta["container_id"])
        check_limits_raised(run)
        # the cgroup lives in the v2 hierarchy only
        assert os.path.isdir("/sys/fs/cgroup/unified" + v2)
        assert not [h for h in os.listdir("/sys/fs/cgroup") if os.path.isdir(f"/sys/fs/cgroup/{h}{os.path.dirname(v2)}")
                    and h != "unified"], "a v1 hierarchy holds the pod"
        stop_and_check(agent, kernel, node, tmp_path)
        check_cgroups_gone(run, "systemd")
        assert not os.path.exists("/sys/fs/cgroup/unified" + v2_app)
    finally:
        node.cleanup()
        kill_all(processes_rooted_under(tmp_path))
