"""End to end, everything real: admission -> kubelet-shaped runc containers -> kernel -> agent.

A Deployment-made pod (generateName, no name) goes through the real ``mutate_pod`` + ``apply``.
A small test node (tests/runc_support.py) runs the mutated pod the way kubelet + containerd
would: the injected init container installs the static wrapper from an image that holds only
that binary, the app container starts through the wrapper with the webhook's registration in
its environment (downward API resolved), RLIMIT_CORE soft 0 / hard unlimited, a kubelet-shaped
cgroup path, its volumes bind mounted from host directories. The app's shell starts a child
that is killed with SIGSEGV; the kernel pipes the core to the static helper, which hands it to
a real ``coredump agent run`` subprocess. The core must then be at the exact expanded path
inside the container, seen on the host through the volume's source directory.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.crash_support import check_elf_core, core_files
from tests.e2e_support import (
    ADMISSION,
    NAMESPACE,
    RUN_GID,
    RUN_UID,
    Agent,
    Run,
    check_cgroups_gone,
    check_core,
    check_limits_raised,
    core_limit_line,
    deployment_pod,
    mutated,
    run_pod,
    running_agent,
    stop_and_check,
    volume_file,
)
from tests.process_support import wait_for
from tests.runc_support import CGROUP_FLAVOURS
from webhook import constants as C
from webhook.admission.mutate import mutate_pod
from webhook.admission.patch import apply

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(120)]


# --- the scenarios ---------------------------------------------------------------------------------
@pytest.mark.parametrize("flavour", CGROUP_FLAVOURS)
def test_acs_pattern_core_lands_in_the_injected_volume(agent, kernel, node_factory, tmp_path, flavour):
    pattern = "/data/dump-a/core-%E-%p-%t"
    pod = mutated(deployment_pod({C.ANN_PATTERN: pattern}, out_dir="/data/dump-a"))
    app = pod["spec"]["containers"][0]
    (core_mount,) = [m for m in app["volumeMounts"] if m["mountPath"] == "/data/dump-a"]
    assert core_mount["name"].startswith(C.CORE_VOLUME)
    assert {"emptyDir": {}, "name": core_mount["name"]} in pod["spec"]["volumes"]
    # the app runs as non-root: an added SYS_RESOURCE would be lost at execve, so none is added
    # (Pod Security keeps admitting the pod) and the core is kept all the same
    assert "add" not in app["securityContext"]["capabilities"]
    node = node_factory(flavour)
    run = run_pod(node, pod)
    granted = run.app.config["process"]["capabilities"]["bounding"]
    assert "CAP_SYS_RESOURCE" not in granted
    vol = run.volume_dirs[core_mount["name"]]
    nspid = int((vol / "child.pid").read_text())
    cores = [p for p in core_files(vol) if p.name.startswith("core-")]
    assert len(cores) == 1, sorted(os.listdir(vol))
    m = re.fullmatch(r"core-!bin!busybox-(\d+)-(\d+)", cores[0].name)
    assert m, cores[0].name  # %E: the exe path with '/' as '!'; %p in the pod's pid namespace; %t
    meta = check_core(run, agent, cores[0], f"/data/dump-a/{cores[0].name}")
    assert cores[0].name == "core-{}-{}-{}".format(meta["exe"].replace("/", "!"), nspid, meta["time"])
    check_limits_raised(run)
    assert meta["pattern"] == pattern and meta["hostname"] == run.pod["metadata"]["name"]
    assert meta["runtime"] == ("containerd" if flavour == "systemd" else None)
    assert not (agent.host / "cores").exists() or not any((agent.host / "cores").rglob("core*"))
    stop_and_check(agent, kernel, node, tmp_path)
    check_cgroups_gone(run, flavour)


def test_a_pod_whose_limit_cannot_be_raised_keeps_its_full_core(agent, kernel, node_factory, tmp_path):
    """Issue 12: no SYS_RESOURCE (a non-root pod, as Pod Security restricted wants it) and a
    runtime whose hard RLIMIT_CORE is 0, so the wrapper cannot raise it: the kernel still pipes
    the core (%c = 0) and the agent keeps all of it for the registered pod, recording the limit."""
    pod = mutated(deployment_pod({C.ANN_PATTERN: "/data/dump-a/core.%p"}, out_dir="/data/dump-a"))
    app = pod["spec"]["containers"][0]
    assert "add" not in app["securityContext"]["capabilities"]
    node = node_factory("cgroupfs")
    node.core_limit = (0, 0)
    run = run_pod(node, pod)
    assert core_limit_line(volume_file(run, "limits.txt").read_text()) == ["0", "0"]  # not raised
    (core_mount,) = [m for m in app["volumeMounts"] if m["mountPath"] == "/data/dump-a"]
    vol = run.volume_dirs[core_mount["name"]]
    cores = [p for p in core_files(vol) if p.name.startswith("core.")]
    assert len(cores) == 1, sorted(os.listdir(vol))
    meta_path = Path(str(cores[0]) + C.METADATA_SUFFIX)
    wait_for(meta_path.exists, 10, f"{meta_path}")
    meta = json.loads(meta_path.read_text())
    data = cores[0].read_bytes()
    check_elf_core(data)
    assert meta["rlimit_core"] == 0 and meta["truncated"] is False and meta["size"] == len(data) > 4096
    assert meta["registered"] is True and meta["destination"] == "pod"
    stop_and_check(agent, kernel, node, tmp_path)
    check_cgroups_gone(run, "cgroupfs")


def test_read_only_core_mount_on_a_bare_pod_is_admitted_and_its_core_kept_on_the_node(kernel, bin_dir, pod_api,
                                                                                       node_factory, tmp_path):
    """Issue 12, 3: a read-only volume holds the pattern's directory. The pod is admitted with a
    warning and the reason recorded on it; the agent reads that reason from its pod watch and
    keeps the core in the node location without trying the pod (no failed attempt), and the
    metadata, its log line and the CoreDumped Event say why."""
    pod = deployment_pod({C.ANN_PATTERN: "/data/dump-a/core.%p"}, out_dir="/out",
                         volumes=[{"name": "data", "emptyDir": {}}, {"name": "out", "emptyDir": {}}],
                         app_mounts=[{"name": "data", "mountPath": "/data", "readOnly": True},
                                     {"name": "out", "mountPath": "/out"}])
    result = mutate_pod(pod, ADMISSION, namespace=NAMESPACE, deadline=time.monotonic() + 3)
    assert result.allowed and any("read-only at /data: no core can be written" in w for w in result.warnings)
    pod = apply(pod, result.patch)
    why = "container app: volume data is read-only at /data"
    assert pod["metadata"]["annotations"][C.ANN_UNWRITABLE] == why
    pod_api.route_events(NAMESPACE)
    with running_agent(bin_dir, pod_api) as agent:  # Events on
        node = node_factory("cgroupfs")
        run = run_pod(node, pod)
        assert not any(run.volume_dirs["data"].rglob("core*"))
        (line,) = [r for r in agent.crashes() if r.get("pod") == run.pod["metadata"]["name"]]
        assert line["outcome"] == "written" and line["destination"] == "node", line
        assert line["reason"] == "pod_volume_read_only", line
        core = Path(line["path"])
        assert core.is_relative_to(agent.host / "cores" / NAMESPACE / run.pod["metadata"]["name"] / "app")
        fell_back = [r for r in agent.records() if r.get("message") == "pod destination unusable, using the node location"]
        assert [(r["reason"], r["detail"], r["pod"], r["container"]) for r in fell_back] == [
            ("pod_volume_read_only", why, run.pod["metadata"]["name"], "app")], fell_back
        assert "Read-only file system" not in agent.log.read_text()  # the pod was never tried
        meta = json.loads(Path(str(core) + C.METADATA_SUFFIX).read_text())
        assert (meta["destination"], meta["registered"], meta["identification"]) == ("node", True, "pod_volume_read_only")
        assert (meta["fallback_reason"], meta["fallback_detail"]) == ("pod_volume_read_only", why)
        wait_for(pod_api.posted_events, 15, "the CoreDumped Event")
        (event,) = pod_api.posted_events()
        assert event["reason"] == C.EVENT_REASON and event["involvedObject"]["name"] == run.pod["metadata"]["name"]
        assert f"kept in the node location, not the pod: pod_volume_read_only ({why})" in event["message"], event
        assert str(core) in event["message"]
        stop_and_check(agent, kernel, node, tmp_path)
    check_cgroups_gone(run, "cgroupfs")


def test_eci_pattern_appends_the_namespace_pid(agent, kernel, node_factory, tmp_path):
    pod = mutated(deployment_pod({C.ANN_PATTERN_ECI: "/pod/data/dump/core-eci"}, out_dir="/pod/data/dump"))
    (core_mount,) = [m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["mountPath"] == "/pod/data/dump"]
    node = node_factory("systemd")
    run = run_pod(node, pod)
    vol = run.volume_dirs[core_mount["name"]]
    nspid = int((vol / "child.pid").read_text())
    core = vol / f"core-eci.{nspid}"  # no %p in the pattern: ".PID" appended, the ECI way
    assert core.exists(), sorted(os.listdir(vol))
    meta = check_core(run, agent, core, f"/pod/data/dump/core-eci.{nspid}")
    assert meta["pattern"] == "/pod/data/dump/core-eci"
    assert sorted(os.listdir(vol)) == sorted(["child.pid", "limits.txt", core.name, core.name + ".json",
                                              core.name + ".sysroot", ".symbols"])  # binaries by build-id
    check_limits_raised(run)
    stop_and_check(agent, kernel, node, tmp_path)
    check_cgroups_gone(run, "systemd")


def test_user_nas_volume_at_a_parent_receives_the_core(agent, kernel, node_factory, tmp_path):
    nas = tmp_path / "nas-export"  # stands in for the NFS export the pod mounts
    nas.mkdir()
    nas.chmod(0o777)
    (nas / "README").write_text("shared\n")
    volume = {"name": "nas", "nfs": {"server": "0a1b2c3d4e-abc12.cn-hangzhou.nas.aliyuncs.com", "path": "/share"}}
    pod = mutated(deployment_pod({C.ANN_PATTERN: "/data/dump-a/core-%E-%p-%t"}, out_dir="/data",
                                 volumes=[volume], app_mounts=[{"name": "nas", "mountPath": "/data"}]))
    ann = pod["metadata"]["annotations"]
    assert ann[C.ANN_CORE_VOLUME] == "nas@/data"  # the user's volume is reused...
    assert not [v for v in pod["spec"]["volumes"] if v["name"].startswith(C.CORE_VOLUME)]  # ...none added
    sidecar = pod["spec"]["containers"][1]
    assert {"name": "nas", "mountPath": "/data"} in sidecar["volumeMounts"]  # and given to the sidecar
    node = node_factory("cgroupfs", remote={"nas": nas})
    run = run_pod(node, pod)
    nspid = int((nas / "child.pid").read_text())
    dump = nas / "dump-a"  # made by the agent inside the pod's view, owned by the pod's user
    assert dump.is_dir() and (os.stat(dump).st_uid, os.stat(dump).st_gid) == (RUN_UID, RUN_GID)
    (core,) = core_files(dump)
    meta = check_core(run, agent, core, f"/data/dump-a/{core.name}")
    assert core.name == f"core-!bin!busybox-{nspid}-{meta['time']}"
    assert (nas / "README").read_text() == "shared\n"
    check_limits_raised(run)
    stop_and_check(agent, kernel, node, tmp_path)
    check_cgroups_gone(run, "cgroupfs")


ESCAPES = {
    "absolute": "/etc",
    "dotdot": "../../../../../../../../../../../../etc",  # on the host this path IS /etc
    "magic": "/proc/self/root/etc",
}


def _etc_listing() -> dict[str, tuple[int, float]]:
    out = {}
    for e in os.scandir("/etc"):
        st = e.stat(follow_symlinks=False)
        out[e.name] = (st.st_ino, st.st_mtime)
    return out


@dataclass
class Escape:
    run: Run
    line: dict[str, Any]
    found: list[str]  # files named after the pattern anywhere on the host
    rootfs: Path
    volume: Path
    nspid: int
    token: str


def run_escape(agent: Agent, node_factory, kind: str) -> Escape:
    """A pod (as uid 1000) whose pattern goes through ``/data/dump-a/x``, where the app itself,
    inside its own volume at /data, made ``x`` a symlink to /etc (absolute, by ``..``, or
    through a /proc magic link), then crashed."""
    token = secrets.token_hex(4)
    target = ESCAPES[kind]
    pattern = f"/data/dump-a/x/core-esc{token}-%p"
    volume = {"name": "scratch", "emptyDir": {}}
    pod = mutated(deployment_pod({C.ANN_PATTERN: pattern}, out_dir="/data",
                                 prep=f"mkdir -p /data/dump-a && ln -s {target} /data/dump-a/x; ",
                                 volumes=[volume], app_mounts=[{"name": "scratch", "mountPath": "/data"}]))
    assert pod["metadata"]["annotations"][C.ANN_CORE_VOLUME] == "scratch@/data"
    etc_before, root_before = _etc_listing(), sorted(os.listdir("/"))
    run = run_pod(node_factory("cgroupfs"), pod)
    vol = run.volume_dirs["scratch"]
    assert os.readlink(vol / "dump-a" / "x") == target  # the app's link, untouched by the agent
    if kind != "magic":  # a real trap: followed on the host, the link is the host's /etc
        assert os.path.realpath(vol / "dump-a" / "x") == "/etc"
    nspid = int((vol / "child.pid").read_text())
    name = run.pod["metadata"]["name"]
    wait_for(lambda: [r for r in agent.crashes() if r.get("pod") == name], 10, "the agent's crash line")
    (line,) = [r for r in agent.crashes() if r.get("pod") == name]
    assert line["pid"] == nspid
    # the host is untouched: /etc and / as they were, no file of that name outside the container
    assert _etc_listing() == etc_before and sorted(os.listdir("/")) == root_before
    found = subprocess.run(["find", "/", "/dev/shm", "-xdev", "-name", f"core-esc{token}*"],
                           capture_output=True, text=True).stdout.split()
    rootfs = run.app.bundle / "rootfs"
    outside = [f for f in found if not any(Path(f).is_relative_to(a) for a in (rootfs, vol))]
    assert outside == [], f"core written outside the container: {outside}"
    print(f"escape {kind}: {line['outcome']} {line['destination']} {line['reason']} -> {line['path']} {found}")
    return Escape(run, line, found, rootfs, vol, nspid, token)


@pytest.mark.parametrize("kind", sorted(ESCAPES))
def test_symlink_in_the_volume_never_writes_outside_the_container(agent, kernel, node_factory, tmp_path, kind):
    """The agent resolves the app's symlink inside the container (as the kernel would for the
    process) with the process's own credentials, or refuses it: a magic link is never followed
    (``directory_unusable``), the app's /etc is root's and uid 1000 may not create a file there
    (``permission_denied``). The node location gets the core; the reason is in the agent's log."""
    esc = run_escape(agent, node_factory, kind)
    line = esc.line
    assert line["outcome"] == "written", line
    assert line["destination"] == "node" and esc.found == [], (line, esc.found)
    expected = "directory_unusable" if kind == "magic" else "permission_denied"
    warn = [r for r in agent.records() if r.get("message") == "pod destination unusable, using the node location"]
    assert warn and warn[-1]["reason"] == line["reason"] == expected, (warn, line)
    f = line["path"]
    assert Path(f).is_relative_to(agent.host / "cores" / NAMESPACE / esc.run.pod["metadata"]["name"] / "app")
    check_elf_core(Path(f).read_bytes())
    assert json.loads(Path(f + C.METADATA_SUFFIX).read_text())["identification"] == line["reason"]
    stop_and_check(agent, kernel, esc.run.node, tmp_path)


def test_core_never_lands_where_the_crashing_user_could_not_write(agent, kernel, node_factory, tmp_path):
    esc = run_escape(agent, node_factory, "absolute")
    etc = esc.rootfs / "etc"
    assert (os.stat(etc).st_uid, os.stat(etc).st_mode & 0o022) == (0, 0)  # root's, 0755: not the app's
    planted = [x for x in esc.found if Path(x).parent == etc]
    stop_and_check(agent, kernel, esc.run.node, tmp_path)  # (cleanup problems must not pass as the xfail)
    assert planted == [], f"uid {RUN_UID} made the agent create {planted} in root's /etc"
