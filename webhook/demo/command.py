"""``coredump demo``: the whole product on this machine, no cluster needed.

It runs the real parts end to end: certificates, the webhook served by gunicorn over TLS, the
seed scenarios sent as AdmissionReviews, and, as root, the node agent with the static kernel
helper receiving a real crash of a process inside a container-like sandbox (its own mount and PID
namespaces, a busybox root, a kubelet-shaped cgroup, the registration env the webhook injected).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from importlib import resources
from pathlib import Path

import click

from webhook import constants
from webhook.cli_options import settings_options
from webhook.demo.settings import DemoSettings

CGROUP_V2_ROOTS = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _coredump_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("coredump")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "webhook.cli"]


def _stop_group(proc: subprocess.Popen, timeout: float) -> bool:
    """SIGTERM the process group of ``proc``, SIGKILL it after ``timeout`` seconds.

    False when it had to be killed (it had no chance to clean up after itself).
    """
    if proc.poll() is not None:
        return True
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return False


def _heading(text: str) -> None:
    click.secho(f"\n== {text}", bold=True)


def load_scenarios() -> list[dict]:
    """The seed scenarios shipped with the package (AdmissionReview requests)."""
    text = resources.files("webhook.demo").joinpath("scenarios.json").read_text()
    return json.loads(text)


class WebhookServer:
    """`coredump serve` as a child process, over TLS on 127.0.0.1."""

    def __init__(self, cert_dir: Path, stack: ExitStack) -> None:
        self.port = _free_port()
        self.cert_dir = cert_dir
        log = open(cert_dir.parent / "webhook.log", "wb")
        stack.callback(log.close)
        self.proc = subprocess.Popen(
            _coredump_cmd() + ["serve", "--cert-dir", str(cert_dir), "--bind", f"127.0.0.1:{self.port}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        stack.callback(self.stop)
        self.context = ssl.create_default_context(cafile=str(cert_dir / "ca.crt"))

    def url(self, path: str) -> str:
        return f"https://localhost:{self.port}{path}"

    def wait_ready(self, timeout: float = 20.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise click.ClickException("the webhook exited; see webhook.log")
            try:
                with urllib.request.urlopen(self.url("/readyz"), context=self.context, timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise click.ClickException("the webhook did not become ready")

    def review(self, review: dict) -> dict:
        req = urllib.request.Request(
            self.url("/mutate"), data=json.dumps(review).encode(),
            headers={"Content-Type": "application/json"}, method="POST",
        )
        with urllib.request.urlopen(req, context=self.context, timeout=10) as r:
            return json.load(r)

    def stop(self) -> None:
        _stop_group(self.proc, 10)


def run_scenarios(server: WebhookServer) -> dict[str, tuple[str, dict]]:
    """Send every scenario; return name -> (namespace, mutated object) for admitted pods."""
    from webhook.admission.patch import apply
    from webhook.admission.review import decoded_patch
    from webhook.admission.summary import summarize

    results: dict[str, tuple[str, dict]] = {}
    for scenario in load_scenarios():
        review = scenario["review"]
        response = server.review(review)
        resp = response["response"]
        obj = review["request"]["object"]
        meta = obj.get("metadata", {})
        who = f'{review["request"].get("kind", {}).get("kind", "?")} {review["request"].get("namespace", "")}/' \
              f'{meta.get("name") or (meta.get("generateName", "") + "*")}'
        _heading(f'{scenario["name"]}: {who}')
        click.echo(f'   {scenario.get("description", "")}')
        if not resp.get("allowed", False):
            click.secho(f'   REFUSED: {resp.get("status", {}).get("message", "")}', fg="red")
            continue
        patch = decoded_patch(response)
        warnings = resp.get("warnings", [])
        click.echo(summarize(obj, patch, warnings))
        if patch and review["request"].get("kind", {}).get("kind") == "Pod":
            results[scenario["name"]] = (review["request"].get("namespace", "default"),
                                         apply(obj, patch))
    return results


# --- the crash part (root only) ------------------------------------------------------------------

def _registration_env(container: dict, namespace: str, pod_name: str, pod_uid: str, node: str) -> dict[str, str]:
    """The container env as the kubelet would resolve it (downward API values filled in)."""
    field_values = {"metadata.name": pod_name, "metadata.namespace": namespace,
                    "metadata.uid": pod_uid, "spec.nodeName": node}
    env: dict[str, str] = {"PATH": "/bin:/sbin:/usr/bin:/usr/sbin"}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "valueFrom" in var and "fieldRef" in var["valueFrom"]:
            env[var["name"]] = field_values.get(var["valueFrom"]["fieldRef"]["fieldPath"], "")
    return env


def _make_cgroup(pod_uid: str, container_id: str) -> Path | None:
    for root in CGROUP_V2_ROOTS:
        if os.path.exists(os.path.join(root, "cgroup.procs")):
            path = Path(root, "kubepods", "besteffort", f"pod{pod_uid}", container_id)
            path.mkdir(parents=True, exist_ok=True)
            return path
    return None


def _remove_cgroup(path: Path | None, wait: float = 5.0) -> None:
    """Remove the demo's cgroup and its empty parents. The container's cgroup, whose last
    process was just reaped, can still count as populated for a moment (EBUSY): it is retried
    for up to ``wait`` s; a parent that is busy holds other cgroups and stays."""
    deadline = time.monotonic() + wait
    leaf = path
    while path is not None and path.name and "kubepods" in str(path):
        try:
            path.rmdir()
        except OSError as exc:
            if exc.errno == errno.EBUSY and path == leaf and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            return
        if path.name == "kubepods":
            return
        path = path.parent


def crash_demo(mutated: dict, namespace: str, bin_dir: Path, work: Path, stack: ExitStack) -> None:
    """Run the agent, crash a process of the mutated pod's first container, show the core."""
    busybox = _crash_prerequisites()
    if busybox is None:
        return
    host_dir, volume, rootfs = _make_rootfs(work, busybox)
    container = mutated["spec"]["containers"][0]
    mount_path = _core_mount_path(container)
    if mount_path is None:
        click.echo("   (skipped: the first container has no injected core volume)")
        return
    (rootfs / mount_path.lstrip("/")).mkdir(parents=True, exist_ok=True)
    _install_wrapper(bin_dir, rootfs)
    stop_agent = _start_agent(work, host_dir, bin_dir, stack)
    _crash_in_sandbox(mutated, container, namespace, volume, rootfs, mount_path, stack)
    for core in _wait_for_cores(volume, work):
        _show_core(core, volume, mount_path)
    stop_agent()
    click.echo(f"   agent stopped; kernel.core_pattern restored to "
               f"{Path('/proc/sys/kernel/core_pattern').read_text().strip()!r}")


def _crash_prerequisites() -> str | None:
    """busybox's path when the crash demo can run here (root, unshare, busybox, the agent), else None."""
    busybox = shutil.which("busybox")
    if os.geteuid() != 0 or not shutil.which("unshare") or not busybox:
        click.echo("   (skipped: the crash demo needs root, unshare and busybox-static)")
        return None
    try:
        from webhook.agent import crash  # noqa: F401  (the agent is part of this build)
    except ImportError:
        click.echo("   (skipped: the node agent is not part of this build)")
        return None
    return busybox


def _make_rootfs(work: Path, busybox: str) -> tuple[Path, Path, Path]:
    """(the agent's host dir, the pod's volume, the container's root with a busybox shell)."""
    host_dir = work / "agent"
    volume = work / "volumes" / "dump-a"      # the pod's volume as the node sees it
    rootfs = work / "rootfs"                  # the container's root filesystem
    for d in (host_dir, volume, rootfs / "bin", rootfs / "proc", rootfs / "tmp", rootfs / "dev"):
        d.mkdir(parents=True, exist_ok=True)
    (rootfs / "dev" / "null").touch()  # /dev/null is bind-mounted over it inside the sandbox
    shutil.copy2(busybox, rootfs / "bin" / "busybox")
    for applet in ("sh", "sleep", "kill", "ls"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    return host_dir, volume, rootfs


def _core_mount_path(container: dict) -> str | None:
    """Where the container mounts the core volume the webhook injected (None: it has none)."""
    volume_mount = next((m for m in container.get("volumeMounts", [])
                         if m["name"].startswith(constants.CORE_VOLUME)), None)
    return None if volume_mount is None else volume_mount["mountPath"]


def _install_wrapper(bin_dir: Path, rootfs: Path) -> None:
    """The init container's job: install the wrapper into the shared emptyDir."""
    wrapper_dir = rootfs / constants.WRAPPER_DIR.lstrip("/")
    subprocess.run([str(bin_dir / "coredump-wrapper"), constants.WRAPPER_INSTALL_FLAG,
                    str(wrapper_dir / "coredump-wrapper")], check=True)


def _start_agent(work: Path, host_dir: Path, bin_dir: Path, stack: ExitStack) -> Callable[[], None]:
    """``coredump agent run``, once the kernel pipes cores to its helper; returns its stop (also
    on the stack)."""
    agent_log = open(work / "agent.log", "wb")
    stack.callback(agent_log.close)
    env = dict(os.environ, COREDUMP_AGENT_METRICS_BIND="", COREDUMP_AGENT_EVENTS="false")
    agent = subprocess.Popen(
        _coredump_cmd() + ["agent", "run", "--host-dir", str(host_dir), "--node-name", "demo-node",
                           "--helper-binary", str(bin_dir / "coredump-helper")],
        stdout=agent_log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )

    def stop_agent() -> None:
        if not _stop_group(agent, 20):  # killed: it could not restore core_pattern itself
            subprocess.run(_coredump_cmd() + ["agent", "uninstall", "--host-dir", str(host_dir)])

    stack.callback(stop_agent)
    _wait_for_helper(agent, host_dir, work)
    return stop_agent


def _wait_for_helper(agent: subprocess.Popen, host_dir: Path, work: Path) -> None:
    """Ready once the kernel pipes cores to our helper (the agent listens first, then sets it)."""
    core_pattern = Path("/proc/sys/kernel/core_pattern")
    ours = f"|{host_dir / 'coredump-helper'} "
    end = time.monotonic() + 20
    while not core_pattern.read_text().startswith(ours):
        if agent.poll() is not None or time.monotonic() > end:
            raise click.ClickException(f"the agent did not start; see {work / 'agent.log'}")
        time.sleep(0.1)
    click.echo(f"   agent running; kernel.core_pattern = {core_pattern.read_text().strip()}")


def _crash_in_sandbox(mutated: dict, container: dict, namespace: str, volume: Path, rootfs: Path,
                      mount_path: str, stack: ExitStack) -> None:
    """A process of the pod's container, in its own mount and PID namespaces, a kubelet-shaped
    cgroup and the registration env, started through the wrapper and killed by SIGSEGV."""
    pod_name = (mutated["metadata"].get("name")
                or mutated["metadata"].get("generateName", "pod-") + uuid.uuid4().hex[:5])
    pod_uid = str(uuid.uuid4())
    container_id = uuid.uuid4().hex + uuid.uuid4().hex
    cenv = _registration_env(container, namespace, pod_name, pod_uid, "demo-node")
    cgroup = _make_cgroup(pod_uid, container_id)
    stack.callback(_remove_cgroup, cgroup)

    command = container["command"] + container.get("args", [])
    inner = (f'mount --bind {volume} {rootfs}{mount_path} && mount -t proc proc {rootfs}/proc && '
             f'mount --bind /dev/null {rootfs}/dev/null && '
             f'exec chroot {rootfs} /bin/sh -c "{" ".join(command[:1])} /bin/sleep 30 & '
             f'sleep 0.3; kill -SEGV \\$!; wait; true"')
    click.echo(f"   pod {namespace}/{pod_name} container {container['name']}: "
               f"{constants.WRAPPER_PATH} /bin/sleep 30, then SIGSEGV")

    def enter_cgroup() -> None:
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    subprocess.run(["unshare", "-mpf", "--propagation", "private", "sh", "-c", inner],
                   env=cenv, preexec_fn=enter_cgroup, check=False, timeout=60)


def _wait_for_cores(volume: Path, work: Path) -> list[Path]:
    """The cores that landed in the pod's volume (waits up to 20 s for the first)."""
    deadline = time.monotonic() + 20
    cores: list[Path] = []
    while time.monotonic() < deadline:
        # a core is a file with its metadata beside it (not the build-id store, not a sysroot link)
        cores = sorted(Path(str(m)[: -len(constants.METADATA_SUFFIX)]) for m in volume.rglob("*" + constants.METADATA_SUFFIX)
                       if ".symbols" not in m.parts and Path(str(m)[: -len(constants.METADATA_SUFFIX)]).is_file())
        if cores:
            break
        time.sleep(0.1)
    if not cores:
        raise click.ClickException(f"no core arrived; see {work / 'agent.log'}")
    return cores


def _show_core(core: Path, volume: Path, mount_path: str) -> None:
    """Where the core landed, as the pod and as the node see it, and its metadata's main keys."""
    rel = core.relative_to(volume)
    meta = json.loads(Path(str(core) + constants.METADATA_SUFFIX).read_text())
    click.secho(f"   core landed at {mount_path}/{rel} inside the pod's volume", fg="green")
    click.echo(f"   (on this node: {core}, {core.stat().st_size} bytes)")
    if meta.get("identity") != "verified":
        click.echo("     (no API server in this demo: the agent names no pod it has not verified through "
                   "its pod watch, so the core is labelled by pod UID and container ID)")
    for key in ("namespace", "pod", "pod_uid", "container", "container_id", "signal_name", "exe", "size",
                "digest", "truncated"):
        if key in meta:
            click.echo(f"     {key}: {meta[key]}")


@click.command()
@settings_options(DemoSettings, show_envvar=False)
def demo(bin_dir: Path, work_dir: Path | None, crash: bool) -> None:
    """Run the webhook and the agent on this machine and show what the seed scenarios get."""
    with ExitStack() as stack:
        if work_dir is None:
            work = Path(tempfile.mkdtemp(prefix="coredump-demo-"))
            stack.callback(shutil.rmtree, work, True)
        else:
            work = work_dir
            work.mkdir(parents=True, exist_ok=True)
        cert_dir = work / "certs"
        _heading("certificates")
        subprocess.run(_coredump_cmd() + ["certs", "generate", "--out", str(cert_dir), "--service",
                                          "coredump-webhook", "--namespace", "coredump-webhook"],
                       check=True)
        click.echo(f"   CA and serving certificate in {cert_dir}")
        server = WebhookServer(cert_dir, stack)
        server.wait_ready()
        click.echo(f"   webhook serving over TLS on https://localhost:{server.port}/mutate")
        results = run_scenarios(server)
        if crash:
            _heading("a real crash, captured by the node agent")
            name, (namespace, mutated) = next(iter(results.items()))
            click.echo(f"   using the pod of scenario {name!r} as the webhook mutated it")
            crash_demo(mutated, namespace, bin_dir, work, stack)
        _heading("done")
