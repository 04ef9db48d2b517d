"""Helpers for the crash processor's tests: synthetic cores fed through pipes, settings and
requests, the webhook's environment, namespace apps in kubelet-shaped cgroups, crashes as uid
1000, retention fixtures on disk and an events/notifier sink."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from tests.process_support import descendants
from tests.runc_support import busybox_rootfs
from webhook import constants
from webhook.agent.crash import CrashProcessor
from webhook.agent.crash_request import CrashRequest
from webhook.agent.metrics import AgentMetrics
from webhook.agent.settings import AgentSettings


def synthetic_core(size_mib: int, seed: int = 1) -> bytes:
    """Mixed like a real core: text-ish pages, random pages, long zero runs, odd tail."""
    import random

    rnd = random.Random(seed)
    parts = []
    for i in range(size_mib * 4):  # 256 KiB pieces
        kind = i % 4
        if kind == 0:
            parts.append(bytes(256 << 10))
        elif kind == 1:
            parts.append(rnd.randbytes(256 << 10))
        elif kind == 2:
            parts.append((b"GLIBC_2.34 libstdc++ frame %d\n" % i) * ((256 << 10) // 30) + bytes((256 << 10) % 30))
        else:
            parts.append(bytes(128 << 10) + rnd.randbytes(128 << 10))
    return b"".join(parts) + b"tail" + bytes(10000)  # not a multiple of the block size, ends in zeros


def feed_pipe(data: bytes, *, close: bool = True) -> tuple[int, threading.Thread]:
    r, w = os.pipe()

    def writer() -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(w, view[:1 << 20]):]
        except BrokenPipeError:
            pass
        finally:
            if close:
                os.close(w)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    return r, t


UNIFIED = "/sys/fs/cgroup/unified"


def make_settings(tmp_path: Path, **kw) -> AgentSettings:
    values = dict(host_dir=str(tmp_path / "host"), node_name="node-1", keep_free_bytes=0, unregistered="node",
                  rate_limit_count=10)
    values.update(kw)
    return AgentSettings(**values)


def make_processor(settings: AgentSettings, previous: str | None = None, lookup=None) -> CrashProcessor:
    return CrashProcessor(settings, previous, events=False, notifier=False,
                          metrics=AgentMetrics(CollectorRegistry()), pod_lookup=lookup)


def known_pod(pod_uid: str, cid: str, *, name: str = "web-7d9c-abcde", namespace: str = "shop",
              container: str = "app"):
    """The pod watch's index holding one pod (a recorded pod with this test's UID, names and
    container ID): the agent's only source of namespace, pod and container names."""
    from webhook.agent.podwatch import PodIndex

    pod = json.loads((Path(__file__).parent / "recorded" / "agent" / "podlist-node-3.json").read_text())["items"][0]
    pod["metadata"].update(uid=pod_uid, name=name, namespace=namespace)
    status = pod["status"]["containerStatuses"][0]
    status.update(name=container, containerID=f"containerd://{cid}")
    status.pop("lastState", None)
    index = PodIndex()
    index.replace([pod])
    return index.lookup


def request_for(pid: int, *, nspid: int | None = None, sig: int = 11, rlimit: int = 2**64 - 1, uid: int = 0,
                gid: int = 0, hostname: str = "node", comm: str = "sleep", spooled: bool = False,
                t: int = 1700000000) -> CrashRequest:
    return CrashRequest(global_pid=pid, pid=nspid or pid, global_tid=pid, tid=nspid or pid, signal=sig, time=t,
                        rlimit_core=rlimit, dump_mode=1, cpu=0, uid=uid, gid=gid, hostname=hostname, comm=comm,
                        spooled=spooled)


def handle_bytes(processor: CrashProcessor, request: CrashRequest, data: bytes):
    r, t = feed_pipe(data)
    try:
        return processor.handle(request, r)
    finally:
        os.close(r)
        t.join(10)
        # the signature worker rewrites the metadata off the crash path: let it finish so the
        # files the test then looks at are settled
        if processor.signatures is not None:
            assert processor.signatures.flush(60)


def webhook_env(pattern: str, pod_uid: str, **extra: str) -> dict[str, str]:
    """The environment the webhook's mutation gives a container (downward API values filled)."""
    env = {
        constants.ENV_PATTERN: pattern,
        constants.ENV_POD_NAME: "web-7d9c-abcde",
        constants.ENV_POD_NAMESPACE: "shop",
        constants.ENV_POD_UID: pod_uid,
        constants.ENV_CONTAINER_NAME: "app",
        constants.ENV_NODE_NAME: "node-1",
    }
    env.update(extra)
    return env


def read_meta(core_path: Path) -> dict:
    return json.loads(Path(str(core_path) + ".json").read_text())


def nspid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    raise AssertionError("no NSpid")


def kill_cgroup(path: Path) -> None:
    """SIGKILL what is left in the cgroup (our test processes) and wait until it is empty."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = [int(p) for p in (path / "cgroup.procs").read_text().split()] if path.is_dir() else []
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def start_namespace_app(tmp_path: Path, vol: Path, env: dict[str, str], cgroup: Path) -> tuple[subprocess.Popen, int]:
    """A chrooted busybox ``sleep`` in its own mount+pid namespace, with ``vol`` bind-mounted at
    /pod/data/dump, the webhook's env, in ``cgroup``; returns (unshare, host pid), stopped."""
    rootfs = busybox_rootfs(tmp_path / "rootfs")
    os.makedirs(os.path.join(rootfs, "pod/data/dump"), exist_ok=True)
    exports = " ".join(f"{k}='{v}'" for k, v in env.items())
    script = (f"mount -t proc proc {rootfs}/proc && mount --bind {vol} {rootfs}/pod/data/dump && "
              f"echo $$ > {cgroup}/cgroup.procs && exec env -i {exports} {shutil.which('chroot')} {rootfs} /bin/sleep 60")
    proc = subprocess.Popen(["unshare", "-mpf", "--kill-child", "--propagation", "private", "sh", "-c", script])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for pid in descendants(proc.pid):
            try:
                if os.readlink(f"/proc/{pid}/exe").endswith("busybox") and \
                        b"COREDUMP_PATTERN" in Path(f"/proc/{pid}/environ").read_bytes():
                    os.kill(pid, signal.SIGSTOP)
                    return proc, pid
            except OSError:
                continue
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("namespace app did not start")


APP_UID, APP_GID = 1000, 3000


def app_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    os.chown(path, APP_UID, APP_GID)
    return path


def crash_as_app(exe: Path, args: list[str], cgroup: Path, pod_uid: str, pattern: str) -> int:
    """Run ``exe`` as uid 1000 in a kubelet-shaped cgroup with the webhook's env; it crashes."""
    env = {"PATH": "/usr/bin:/bin", constants.ENV_PATTERN: pattern, constants.ENV_POD_NAME: "web-0",
           constants.ENV_POD_NAMESPACE: "shop", constants.ENV_POD_UID: pod_uid, constants.ENV_CONTAINER_NAME: "app"}
    cmd = " ".join(["exec", "setpriv", f"--reuid={APP_UID}", f"--regid={APP_GID}", "--clear-groups", str(exe),
                    *[f"'{a}'" for a in args]])
    proc = subprocess.Popen(["sh", "-c", f"echo $$ > {cgroup}/cgroup.procs && {cmd}"], env=env,
                            stdout=subprocess.DEVNULL)
    rc = proc.wait(60)
    assert rc < 0, f"{exe} did not crash (exit {rc})"
    return proc.pid


class Recorder:
    """An events/notifier sink: ``submit(dict)``, remembered with the time it came."""

    def __init__(self) -> None:
        self.items: list[tuple[float, dict]] = []
        self.lock = threading.Lock()

    def submit(self, info: dict) -> bool:
        with self.lock:
            self.items.append((time.monotonic(), info))
        return True


SIG_A, SIG_B = "a" * 64, "b" * 64


def retained_core(d: Path, name: str, t: int, signature: str, **extra) -> None:
    (d / name).write_bytes(b"\x7fELF core " + name.encode())
    doc = {"file": name, "time": t, "signature": signature, "path": f"/cores/{name}", "namespace": "shop",
           "pod": "web-0", "pod_uid": "u-1", "registered": True, "identity": "verified",
           "digest": "xxh128:" + hashlib.md5(name.encode()).hexdigest(), **extra}
    (d / (name + ".json")).write_text(json.dumps(doc))
    sysroot = d / (name + ".sysroot") / "usr" / "lib"
    sysroot.mkdir(parents=True)
    (sysroot / "libc.so.6").symlink_to("../../../.symbols/buildid/abc/executable")
