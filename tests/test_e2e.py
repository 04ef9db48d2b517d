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

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import xxhash

from tests.conftest import KERNEL_SETTINGS, which_or_fail
from tests.crash_support import check_elf_core, core_files
from tests.pod_api import PodApi
from tests.process_support import coredump_command, wait_for
from tests.runc_support import (
    CGROUP_FLAVOURS,
    UNLIMITED,
    Node,
    busybox_rootfs,
    kill_all,
    processes_rooted_under,
    single_binary_rootfs,
)
from webhook import constants as C
from webhook.admission.mutate import apply, mutate_pod
from webhook.admission.settings import AdmissionSettings

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(120)]

NAMESPACE = "shop"
NODE_NAME = "node-e2e-1"
APP_IMAGE = "registry.example.com/shop/web:1.4.2"
SIDECAR_IMAGE = "registry.example.com/library/busybox:1.36"
ADMISSION = AdmissionSettings()
RUN_UID, RUN_GID = 1000, 3000

#: The app's shell (PID 1 of its pid namespace, which would ignore a SIGSEGV it sent itself)
#: records its core limit, starts a child, crashes it and exits 0 once the child is reaped.
APP_SCRIPT = ("{prep}cat /proc/self/limits > {out}/limits.txt; sleep 30 & echo $! > {out}/child.pid; "
              "sleep 0.2; kill -SEGV $!; wait; exit 0")


# --- the pod a ReplicaSet creates -----------------------------------------------------------------
def deployment_pod(annotations: dict[str, str], *, out_dir: str, prep: str = "",
                   volumes: list[dict[str, Any]] | None = None,
                   app_mounts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A pod as the ReplicaSet controller sends it to admission: generateName, no name, no uid,
    the ServiceAccount admission's projected token volume already there."""
    token = {"name": "kube-api-access-x7k2p", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
             "readOnly": True}
    drop_all = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "web-7d9c5b6f4-",
            "namespace": NAMESPACE,
            "labels": {"app": "web", "pod-template-hash": "7d9c5b6f4"},
            "annotations": dict(annotations),
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9c5b6f4",
                                 "uid": "5f0d1c2e-8a4b-4c1e-9d3f-2b7a6e0c4d11", "controller": True,
                                 "blockOwnerDeletion": True}],
        },
        "spec": {
            "securityContext": {"runAsUser": RUN_UID, "runAsGroup": RUN_GID, "runAsNonRoot": True},
            "containers": [
                {
                    "name": "app",
                    "image": APP_IMAGE,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["/bin/sh", "-c", APP_SCRIPT.format(prep=prep, out=out_dir)],
                    "env": [{"name": "LOG_LEVEL", "value": "info"}],
                    "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                    "resources": {},
                    "securityContext": dict(drop_all),
                    "volumeMounts": [*(app_mounts or []), token],
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File",
                },
                {
                    "name": "log-shipper",
                    "image": SIDECAR_IMAGE,
                    "command": ["/bin/sh", "-c"],
                    "args": ["exec sleep 3600"],
                    "resources": {},
                    "securityContext": dict(drop_all),
                    "volumeMounts": [dict(token)],
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File",
                },
            ],
            "volumes": [
                *(volumes or []),
                {"name": "kube-api-access-x7k2p", "projected": {"defaultMode": 420, "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace",
                                                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
                ]}},
            ],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "enableServiceLinks": True,
            "schedulerName": "default-scheduler",
            "priority": 0,
        },
    }


def mutated(pod: dict[str, Any]) -> dict[str, Any]:
    result = mutate_pod(pod, ADMISSION, namespace=NAMESPACE, deadline=time.monotonic() + 3)
    assert result.allowed, result.message
    assert result.patch, "an annotated pod must be patched"
    out = apply(pod, result.patch)
    assert out["metadata"]["annotations"][C.ANN_STATUS] == C.STATUS_INJECTED
    assert mutate_pod(out, ADMISSION, namespace=NAMESPACE).patch == []  # idempotent
    assert json.loads(out["metadata"]["annotations"][C.ANN_TARGETS]) == ["app", "log-shipper"]
    return out


# --- the agent, as the DaemonSet runs it -----------------------------------------------------------
def read_kernel() -> dict[str, str]:
    return {p: Path(p).read_text() for p in KERNEL_SETTINGS}


@dataclass
class Agent:
    proc: subprocess.Popen
    host: Path
    log: Path
    #: The API server the agent's pod watch (and Events) talk to.
    api: PodApi | None = None

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def crashes(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("message") == "crash"]

    def stop(self) -> int:
        """SIGTERM, as the kubelet stops the DaemonSet pod."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


@contextlib.contextmanager
def running_agent(bin_dir: Path, api: PodApi, *extra: str, host: Path | None = None, keep_host: bool = False):
    """``coredump agent run`` (metrics and gdb signatures off; the pod watch on ``api``), ready
    once the kernel pipes cores to its helper; killed and uninstalled if still running at the end.
    ``host``: an existing host dir (e.g. one whose helper spooled while no agent ran), kept
    afterwards with ``keep_host`` (for the next agent on the node)."""
    host = host or Path(tempfile.mkdtemp(prefix="cde-"))  # short: the socket path has a length limit
    log = host.parent / (host.name + ".log")
    kubeconfig = api.server.kubeconfig(host.parent / (host.name + ".kubeconfig"))
    cmd = [*coredump_command(), "agent", "run", "--host-dir", str(host),
           "--helper-binary", str(bin_dir / "coredump-helper"), "--node-name", NODE_NAME,
           "--metrics-bind", "", "--no-signatures",
           "--keep-free-bytes", "0", "--spool-drain-interval-seconds", "3600", *extra]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE")}
    env["KUBECONFIG"] = str(kubeconfig)
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                cwd=str(host.parent), env=env)
    a = Agent(proc, host, log, api)
    helper = f"|{host}/coredump-helper "
    try:
        wait_for(lambda: proc.poll() is not None or Path(KERNEL_SETTINGS[0]).read_text().startswith(helper),
                 20, "the agent to set core_pattern")
        assert proc.poll() is None, f"agent exited {proc.returncode}: {log.read_text()}"
        wait_for(lambda: any(r.get("message") == "agent serving" for r in a.records()), 10, "agent serving")
        if not api.down:  # a pod crashing before the first list would be (rightly) unverified
            wait_for(lambda: any(r.get("message") == "pods listed" for r in a.records()), 15, "the pod list")
        yield a
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
            subprocess.run([*coredump_command(), "agent", "uninstall", "--host-dir", str(host)], capture_output=True)
        if not keep_host:
            shutil.rmtree(host, ignore_errors=True)
        log.unlink(missing_ok=True)
        kubeconfig.unlink(missing_ok=True)


@pytest.fixture
def agent(kernel, bin_dir, pod_api):
    """The agent with its pod watch (Events off); stopped (SIGTERM) and checked by the tests."""
    with running_agent(bin_dir, pod_api, "--no-events") as a:
        yield a


@pytest.fixture
def node_factory(tmp_path, bin_dir, pod_api):
    """Factory for a test node; every container is deleted and its cgroups removed afterwards."""
    runc = which_or_fail("runc")
    which_or_fail("busybox")
    nodes: list[Node] = []
    images = {
        ADMISSION.image: single_binary_rootfs(bin_dir / "coredump-wrapper", C.IMAGE_WRAPPER_PATH),
        APP_IMAGE: busybox_rootfs,
        SIDECAR_IMAGE: busybox_rootfs,
    }

    def make(flavour: str = "cgroupfs", remote: dict[str, Path] | None = None) -> Node:
        n = Node(tmp_path / f"node{len(nodes)}", runc, images, node_name=NODE_NAME, flavour=flavour,
                 remote=remote or {}, on_start=pod_api.container_started)
        nodes.append(n)
        return n

    yield make
    for n in nodes:
        n.cleanup()
    kill_all(processes_rooted_under(tmp_path))


# --- checks ---------------------------------------------------------------------------------------
def core_limit_line(limits_txt: str) -> list[str]:
    (line,) = [x for x in limits_txt.splitlines() if x.startswith("Max core file size")]
    return line.split()[4:6]


@dataclass
class Run:
    node: Node
    pod: dict[str, Any]
    app: Any
    volume_dirs: dict[str, Path]
    started: float
    ended: float


def run_pod(node: Node, pod: dict[str, Any]) -> Run:
    """Admit, install the wrapper (the init container), run the app until it exits."""
    pod = node.admit(pod)
    volume_dirs = node.prepare_volumes(pod)
    (init,) = node.run_init_containers(pod)
    assert init.name.startswith(C.INSTALLER_CONTAINER)
    assert init.config["process"]["args"] == [C.IMAGE_WRAPPER_PATH, C.WRAPPER_INSTALL_FLAG, C.WRAPPER_PATH]
    installed = volume_dirs[C.WRAPPER_VOLUME] / Path(C.WRAPPER_PATH).name
    assert installed.is_file() and os.stat(installed).st_mode & 0o777 == 0o755
    assert os.stat(installed).st_uid == 65532  # copied by the non-root installer
    started = time.time()
    app = node.start(pod, "app")
    rc = app.wait(30)
    ended = time.time()
    assert rc == 0, f"app exited {rc}: {app.output()}"
    assert app.config["process"]["args"][0] == C.WRAPPER_PATH
    return Run(node, pod, app, volume_dirs, started, ended)


def check_core(run: Run, agent: Agent, host_file: Path, container_path: str) -> dict[str, Any]:
    """Everything about one written core: bytes, metadata, owner, identity, the agent's log line."""
    meta_path = Path(str(host_file) + C.METADATA_SUFFIX)
    wait_for(meta_path.exists, 10, f"{meta_path}")
    meta = json.loads(meta_path.read_text())
    data = host_file.read_bytes()
    check_elf_core(data)
    assert meta["size"] == len(data) and meta["digest"] == "xxh128:" + xxhash.xxh3_128(data).hexdigest()
    assert meta["truncated"] is False and meta["compression"] == "none"
    assert meta["path"] == container_path and meta["destination"] == "pod" and meta["registered"] is True
    pod_meta = run.pod["metadata"]
    assert (meta["namespace"], meta["pod"], meta["pod_uid"], meta["container"]) == (
        NAMESPACE, pod_meta["name"], pod_meta["uid"], "app")
    assert re.fullmatch(r"[0-9a-f]{64}", meta["container_id"]) and meta["container_id"] == run.app.container_id
    assert meta["node"] == NODE_NAME == run.pod["spec"]["nodeName"]
    assert meta["signal"] == signal.SIGSEGV and meta["signal_name"] == "SIGSEGV"
    assert (meta["uid"], meta["gid"]) == (RUN_UID, RUN_GID)
    st = os.stat(host_file)
    assert (st.st_uid, st.st_gid) == (RUN_UID, RUN_GID), "the core belongs to the crashing process's user"
    assert st.st_mode & 0o777 == 0o600
    # the process got RLIMIT_CORE soft 0 from the runtime; the wrapper raised it to the hard limit
    assert {"type": "RLIMIT_CORE", "hard": UNLIMITED, "soft": 0} in run.app.config["process"]["rlimits"]
    assert meta["rlimit_core"] == UNLIMITED  # %c, as the kernel saw it at the crash
    # the pid inside the pod's pid namespace, as the shell saw it ($!)
    nspid = int(_volume_file(run, "child.pid").read_text())
    assert meta["pid"] == nspid and meta["global_pid"] != nspid and nspid > 1
    assert run.started - 1 <= meta["time"] <= run.ended + 1
    assert meta["exe"] == "/bin/busybox"  # the container's view of the executable
    (line,) = [r for r in agent.crashes() if r.get("global_pid") == meta["global_pid"]]
    assert (line["outcome"], line["reason"], line["path"]) == ("written", "registered", container_path)
    assert line["pod"] == pod_meta["name"] and line["size"] == len(data)
    return meta


def _volume_file(run: Run, name: str) -> Path:
    """A file the app wrote to the root of the volume holding its output dir."""
    for d in run.volume_dirs.values():
        if (d / name).exists():
            return d / name
    raise AssertionError(f"{name} not found in any volume")


def check_limits_raised(run: Run) -> None:
    """What the app's own shell saw in /proc/self/limits: soft raised from 0 to the hard limit."""
    assert core_limit_line(_volume_file(run, "limits.txt").read_text()) == ["unlimited", "unlimited"]


def crash_into_dump_volume(node: Node, agent: Agent) -> tuple[Run, dict[str, Any]]:
    """The runtimes' common first act: a mutated pod with the pattern ``/data/dump-a/core-%e-%p-%t``
    runs on ``node`` until its app crashes; its one core (named for the crashed ``sleep``) is
    checked (:func:`check_core`, :func:`check_limits_raised`). Returns the run and the metadata."""
    pod = mutated(deployment_pod({C.ANN_PATTERN: "/data/dump-a/core-%e-%p-%t"}, out_dir="/data/dump-a"))
    (mount,) = [m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["mountPath"] == "/data/dump-a"]
    run = run_pod(node, pod)
    vol = run.volume_dirs[mount["name"]]
    nspid = int((vol / "child.pid").read_text())
    (core,) = [p for p in core_files(vol) if p.name.startswith("core-")]
    assert re.fullmatch(rf"core-sleep-{nspid}-\d+", core.name), core.name
    meta = check_core(run, agent, core, f"/data/dump-a/{core.name}")
    check_limits_raised(run)
    return run, meta


def stop_and_check(agent: Agent, kernel: dict[str, str], node: Node, tmp_path: Path) -> None:
    """SIGTERM the agent: kernel settings restored; containers deleted; cgroups and processes gone."""
    assert agent.stop() == 0, agent.log.read_text()
    assert read_kernel() == kernel, "kernel settings not restored on SIGTERM"
    assert any(r.get("message") == "kernel settings restored on stop" for r in agent.records())
    assert not (agent.host / "agent.sock").exists()
    problems = node.cleanup()
    assert problems == []
    assert processes_rooted_under(tmp_path) == []
    helper = str(agent.host / "coredump-helper")
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                assert not os.readlink(f"/proc/{entry}/exe").startswith(helper), f"helper {entry} still runs"
            except OSError:
                continue
    assert not list((agent.host / "spool").iterdir()), "nothing may be left spooled"


def check_cgroups_gone(run: Run, flavour: str) -> None:
    uid = run.pod["metadata"]["uid"]
    needle = f"pod{uid}" if flavour == "cgroupfs" else f"pod{uid.replace('-', '_')}.slice"
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        for parent in ("kubepods/besteffort", "kubepods.slice/kubepods-besteffort.slice"):
            d = hierarchy / parent
            if d.is_dir():
                assert not [p for p in os.listdir(d) if needle in p], f"{d} keeps the pod's cgroup"


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
    assert core_limit_line(_volume_file(run, "limits.txt").read_text()) == ["0", "0"]  # not raised
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
