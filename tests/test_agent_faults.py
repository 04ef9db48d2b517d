"""Faults on the crash path that used to lose a core or its reason (issue 15 §2, §3), for real:
the kernel's pipe, the static helper, the agent, and a "container" (own mount and PID namespace,
chrooted busybox, kubelet-shaped cgroup, the webhook's environment) with a volume.

- a full volume: the core is cut, and its metadata still says why (space reserved before the
  core streams), visible through `coredump list`'s own reader;
- the agent SIGKILLed mid-dump: its successor turns the leftover temporary file into a
  ``.partial`` with ``truncated_reason: agent_restarted``; nothing temporary stays behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import xxhash
from prometheus_client import CollectorRegistry

from tests.agent_support import kill_cgroup, webhook_env
from tests.crash_support import RecordedEvents
from tests.process_support import descendants, stop_group, wait_for
from tests.runc_support import busybox_rootfs, remove_cgroup_dirs
from webhook.agent import install
from webhook.agent.crash import CrashProcessor
from webhook.agent.events import build_event
from webhook.agent.journal import JOURNAL_DIR
from webhook.agent.metrics import AgentMetrics
from webhook.agent.podwatch import PodIndex
from webhook.agent.sysctl import CORE_PATTERN, Sysctl, is_our_pattern
from webhook.inspect.listing import LISTING_SCRIPT, parse_listing

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(180)]

#: Fills N MiB with bytes that are never a zero page (so the core is not sparse), then waits.
BIGMEM = r"""
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    size_t n = (size_t)(argc > 1 ? atoi(argv[1]) : 32) << 20;
    unsigned char *p = malloc(n);
    for (size_t i = 0; i < n; i++) p[i] = (unsigned char)((i * 2654435761u) >> 13) | 1;
    for (;;) pause();
}
"""


def _bigmem(tmp_path: Path) -> Path:
    out = tmp_path / "prog"
    out.mkdir()
    gcc = shutil.which("gcc")
    assert gcc, "gcc: scripts/test.sh installs it"
    (out / "bigmem.c").write_text(BIGMEM)
    subprocess.run([gcc, "-static", "-O1", "-o", str(out / "bigmem"), str(out / "bigmem.c")], check=True)
    return out / "bigmem"


class Container:
    """busybox ``sleep`` as the namespace's init plus ``bigmem MB`` beside it, one cgroup."""

    def __init__(self, tmp_path: Path, vol: Path, mib: int) -> None:
        self.mib = mib
        self.pod_uid = str(uuid.uuid4())
        self.cid = hashlib.sha256(self.pod_uid.encode()).hexdigest()
        self.rel = f"kubepods/besteffort/pod{self.pod_uid}/{self.cid}"
        self.cgroup = Path("/sys/fs/cgroup/unified") / self.rel
        self.cgroup.mkdir(parents=True)
        self.unshare: subprocess.Popen | None = None
        rootfs = busybox_rootfs(tmp_path / "rootfs")
        shutil.copy(_bigmem(tmp_path), rootfs / "bin" / "bigmem")
        os.makedirs(rootfs / "pod/data/dump", exist_ok=True)
        if not (rootfs / "dev/null").exists():  # sh gives a background job /dev/null as stdin
            os.mknod(rootfs / "dev/null", 0o666 | 0o020000, os.makedev(1, 3))
        env = webhook_env("/pod/data/dump/core.%p", self.pod_uid)
        exports = " ".join(f"{k}='{v}'" for k, v in env.items())
        script = (f"mount -t proc proc {rootfs}/proc && mount --bind {vol} {rootfs}/pod/data/dump && "
                  f"echo $$ > {self.cgroup}/cgroup.procs && exec env -i {exports} {shutil.which('chroot')} "
                  f"{rootfs} /bin/sh -c '/bin/bigmem {mib} & exec /bin/sleep 600'")
        self.unshare = subprocess.Popen(["unshare", "-mpf", "--kill-child", "--propagation", "private",
                                         "sh", "-c", script])
        try:
            self.app = wait_for(self._app, 30, "bigmem filled")
        except BaseException:
            self.close()
            raise

    def _app(self) -> int | None:
        for pid in descendants(self.unshare.pid):
            try:
                if not os.readlink(f"/proc/{pid}/exe").endswith("bigmem"):
                    continue
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            rss = [int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS:")]
            want = self.mib * 1024
            if rss and rss[0] >= want:
                return pid
        return None

    @property
    def nspid(self) -> int:
        line = [x for x in Path(f"/proc/{self.app}/status").read_text().splitlines() if x.startswith("NSpid:")][0]
        return int(line.split()[-1])

    def pod(self) -> dict:
        """The pod as the API server lists it."""
        return {"metadata": {"name": "web-7d9c-abcde", "namespace": "shop", "uid": self.pod_uid},
                "spec": {"nodeName": "node-1", "containers": [{"name": "app", "image": "busybox"}]},
                "status": {"containerStatuses": [{"name": "app", "containerID": f"containerd://{self.cid}"}]}}

    def index(self) -> PodIndex:
        index = PodIndex()
        index.replace([self.pod()])
        return index

    def crash(self) -> None:
        os.kill(self.app, signal.SIGSEGV)

    def gone(self) -> bool:
        try:
            return Path(f"/proc/{self.app}/stat").read_text().rpartition(")")[2].split()[0] in ("Z", "X")
        except OSError:
            return True

    def close(self) -> None:
        if self.unshare is not None:
            self.unshare.kill()
            self.unshare.wait()
        kill_cgroup(self.cgroup)
        remove_cgroup_dirs(self.rel)


def _tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)


def _listing(vol: Path):
    out = subprocess.run(["sh", "-c", LISTING_SCRIPT, "coredump-list", str(vol)], check=True,
                         capture_output=True).stdout
    return parse_listing(out)


def test_a_full_volume_keeps_the_reason_with_the_cut_core(agent_env, tmp_path):  # noqa: F811
    host, settings, serve = agent_env
    vol = tmp_path / "vol"
    _tmpfs(vol, "8m")
    box = None
    try:
        box = Container(tmp_path, vol, 32)
        s = settings(node_name="node-1", keep_free_bytes=0, signatures=False)
        events = RecordedEvents()
        processor = CrashProcessor(s, previous_pattern="core", events=events, notifier=False,
                                   metrics=AgentMetrics(CollectorRegistry()), pod_lookup=box.index().lookup)
        serve(s, processor.handle)
        install.install(s)
        nspid = box.nspid
        box.crash()
        wait_for(box.gone, 60, "the crashed process released")
        wait_for(lambda: events.seen, 30, "the crash reported")
        records, warnings = _listing(vol)
    finally:
        if box is not None:
            box.close()
        subprocess.run(["umount", str(vol)], check=False)
    assert not warnings
    (rec,) = records  # through `coredump list`'s reader: the cut core and why
    assert rec.path == f"/pod/data/dump/core.{nspid}.partial" and rec.present
    assert rec.truncated and rec.truncated_reason == "no_space"
    assert (rec.namespace, rec.pod, rec.container) == ("shop", "web-7d9c-abcde", "app")
    assert 4 << 20 < rec.size < 32 << 20  # the volume's worth (and its sparse holes), not the whole core
    (summary,) = events.seen
    assert summary["outcome"] == "partial" and summary["truncated_reason"] == "no_space"
    assert "core cut short (no_space)" in build_event(summary, 0)["message"]


def _agent(host: Path, helper: Path, log: Path, kubeconfig: Path | None = None) -> subprocess.Popen:
    """``coredump agent run``; with ``kubeconfig``, its pod watch on that API server."""
    cli = Path(sys.executable).with_name("coredump")
    cmd = [str(cli), "agent", "run", "--host-dir", str(host), "--helper-binary", str(helper), "--metrics-bind", "",
           "--node-name", "node-1", "--no-events", "--keep-free-bytes", "0", "--no-signatures",
           "--no-kernel-log", "--rate-limit-count", "10"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE")}
    if kubeconfig is None:
        cmd.append("--no-watch-pods")
    else:
        env["KUBECONFIG"] = str(kubeconfig)
    return subprocess.Popen(cmd, stderr=open(log, "ab"), start_new_session=True, env=env)


def _serving(host: Path) -> bool:
    return (host / "agent.sock").exists() and is_our_pattern(Sysctl().read(CORE_PATTERN))


def _listed(log: Path, n: int) -> bool:
    return log.read_text(errors="replace").count('"pods listed"') >= n


@pytest.mark.parametrize("known", ["known_at_the_crash", "listed_after_the_kill"])
def test_agent_killed_mid_dump_leaves_a_partial_with_metadata(agent_env, tmp_path, bin_dir, pod_api,  # noqa: F811
                                                              known):
    """The pod watch on: a pod it knew at the crash keeps its verified names in the recovered
    metadata; one it learns of only after the kill is recovered unverified (no names) and
    filled in through the pending store once the successor's watch lists it."""
    host, settings, _serve = agent_env
    vol = tmp_path / "vol"
    _tmpfs(vol, "1g")
    log = tmp_path / "agent.log"
    kubeconfig = pod_api.server.kubeconfig(tmp_path / "kubeconfig")
    box = agent = None
    try:
        box = Container(tmp_path, vol, 256)
        if known == "known_at_the_crash":
            pod_api.set_pod(box.pod())
        agent = _agent(host, bin_dir / "coredump-helper", log, kubeconfig)
        wait_for(lambda: _serving(host) and _listed(log, 1), 30, "the agent serving, its pods listed")
        nspid = box.nspid
        box.crash()

        def streaming():
            for p in vol.iterdir():
                if p.name.startswith(".coredump-tmp.") and not p.name.endswith(".meta") and p.stat().st_size > 0:
                    return p
            return None

        leftover = wait_for(streaming, 30, "the core streaming into the volume")
        os.kill(agent.pid, signal.SIGKILL)  # mid-dump
        agent.wait(10)
        wait_for(box.gone, 30, "the kernel released the process when the agent's fd closed")
        (entry,) = list((host / JOURNAL_DIR).glob("*.json"))  # recorded before the write
        recorded = json.loads(entry.read_text())
        assert recorded["tmp_name"] == leftover.name and recorded["container_id"] == box.cid
        assert leftover.exists() and leftover.stat().st_size < 256 << 20
        if known == "known_at_the_crash":
            assert recorded["identity"] == "verified" and (recorded["namespace"], recorded["pod"]) == (
                "shop", "web-7d9c-abcde")
        else:
            assert recorded["identity"] == "unverified" and recorded["namespace"] is None and recorded["pod"] is None
            pod_api.set_pod(box.pod())  # the API server answers again, or the pod was just created
        agent = _agent(host, bin_dir / "coredump-helper", log, kubeconfig)  # the successor recovers it

        def recovered() -> dict | None:
            try:
                doc = json.loads((vol / f"core.{nspid}.partial.json").read_text())
            except (OSError, ValueError):
                return None
            return doc if doc.get("identity") == "verified" else None

        wait_for(recovered, 60, "the leftover recovered under verified names")
        wait_for(lambda: not list((host / JOURNAL_DIR).glob("*.json")), 10, "the journal cleared")
    finally:
        if agent is not None:
            stop_group(agent)
        if box is not None:
            box.close()
        names = sorted(os.listdir(vol))
        data = (vol / f"core.{nspid}.partial").read_bytes() if f"core.{nspid}.partial" in names else b""
        meta = json.loads((vol / f"core.{nspid}.partial.json").read_text()) if data else {}
        subprocess.run(["umount", str(vol)], check=False)
    assert names == [f"core.{nspid}.partial", f"core.{nspid}.partial.json"], names  # no temporary file left
    assert data[:4] == b"\x7fELF" and 0 < len(data) < 256 << 20
    assert meta["truncated"] is True and meta["truncated_reason"] == "agent_restarted"
    assert meta["size"] == len(data) and meta["digest"] == "xxh128:" + xxhash.xxh3_128(data).hexdigest()
    assert (meta["pod_uid"], meta["container_id"], meta["pid"], meta["path"]) == (
        box.pod_uid, box.cid, nspid, f"/pod/data/dump/core.{nspid}.partial")
    assert meta["identity"] == "verified"
    assert (meta["namespace"], meta["pod"], meta["container"]) == ("shop", "web-7d9c-abcde", "app")
    assert "kept as partial" in log.read_text()  # the successor's log line
