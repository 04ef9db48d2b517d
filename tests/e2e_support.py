"""Helpers for the end-to-end tests: the pod a ReplicaSet creates, the real admission, the
real ``coredump agent run`` subprocess, and the checks of what a crash left behind."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from tests.crash_support import check_elf_core, core_files
from tests.pod_api import PodApi
from tests.process_support import coredump_command, wait_for
from tests.runc_support import UNLIMITED, Node, processes_rooted_under
from tests.suite_support import KERNEL_SETTINGS
from webhook import constants as C
from webhook.admission.mutate import mutate_pod
from webhook.admission.patch import apply
from webhook.admission.settings import AdmissionSettings

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
    nspid = int(volume_file(run, "child.pid").read_text())
    assert meta["pid"] == nspid and meta["global_pid"] != nspid and nspid > 1
    assert run.started - 1 <= meta["time"] <= run.ended + 1
    assert meta["exe"] == "/bin/busybox"  # the container's view of the executable
    (line,) = [r for r in agent.crashes() if r.get("global_pid") == meta["global_pid"]]
    assert (line["outcome"], line["reason"], line["path"]) == ("written", "registered", container_path)
    assert line["pod"] == pod_meta["name"] and line["size"] == len(data)
    return meta


def volume_file(run: Run, name: str) -> Path:
    """A file the app wrote to the root of the volume holding its output dir."""
    for d in run.volume_dirs.values():
        if (d / name).exists():
            return d / name
    raise AssertionError(f"{name} not found in any volume")


def check_limits_raised(run: Run) -> None:
    """What the app's own shell saw in /proc/self/limits: soft raised from 0 to the hard limit."""
    assert core_limit_line(volume_file(run, "limits.txt").read_text()) == ["unlimited", "unlimited"]


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


def forging_pod(script: str) -> dict[str, Any]:
    """An ECI-annotated Deployment pod of ``shop`` whose app runs ``script`` (after mutation: the
    wrapper starts it with the webhook's true registration in its environment)."""
    pod = deployment_pod({C.ANN_PATTERN_ECI: "/pod/data/dump/core-eci"}, out_dir="/pod/data/dump")
    pod["spec"]["containers"][0]["command"] = ["/bin/sh", "-c", script]
    return mutated(pod)


def start_pod(node, pod: dict[str, Any]):
    """Admit, volumes, the wrapper's init container, then the app (left running)."""
    pod = node.admit(pod)
    volumes = node.prepare_volumes(pod)
    node.run_init_containers(pod)
    return pod, volumes, node.start(pod, "app")
