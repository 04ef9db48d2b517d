"""The kernel's own core pipe -> the static helper -> the agent's server -> the handler.

Every test here sets the real, host-global kernel.core_pattern through the agent's own install
code, under the ``kernel`` fixture (exclusive, restores every setting whatever happens), and
crashes real processes with SIGSEGV.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import xxhash

from tests.crash_support import check_elf_core, reap, segv, spooled_crash, start_sleepers
from tests.process_support import wait_for
from tests.suite_support import which_or_fail
from webhook import constants
from webhook.agent import install
from webhook.agent.server import ServerOutcome
from webhook.agent.sysctl import CORE_PATTERN, CORE_PIPE_LIMIT, Sysctl, is_our_pattern

pytestmark = pytest.mark.kernel


@dataclass
class Seen:
    request: object
    data: bytes
    proc_before: str
    proc_after: str


@dataclass
class KernelRecorder:
    """Reads the core to EOF; reads /proc/<%P>/status before and after (the process is pinned)."""

    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    delay: float = 0.0

    def __call__(self, request, fd: int) -> ServerOutcome:
        status = f"/proc/{request.global_pid}/status"
        before = _read_or(status)
        time.sleep(self.delay)
        chunks = []
        while b := os.read(fd, 1 << 20):
            chunks.append(b)
        after = _read_or(status)
        data = b"".join(chunks)
        with self.lock:
            self.seen.append(Seen(request, data, before, after))
        return ServerOutcome("written", "test", None, len(data))


def _metadata_of(root: Path, pid: int) -> list[Path]:
    """Metadata files of this PID's cores (os.walk: other files may come and go meanwhile)."""
    return [Path(d, n) for d, _, names in os.walk(root) for n in names
            if n.endswith(".json") and f".{pid}." in n and not n.startswith(".")]


def _read_or(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        return f"error: {exc}"


def test_install_sets_the_kernel_and_restores_it(agent_env):
    host, settings, _ = agent_env
    s = settings()
    sysctl = Sysctl()
    before = sysctl.read_all()
    install.install(s)
    assert sysctl.read(CORE_PATTERN) == install.helper_pattern(s)
    assert int(sysctl.read(CORE_PIPE_LIMIT)) >= 16
    install.uninstall(s)
    assert sysctl.read_all() == before


def test_kernel_pipe_hands_the_full_core_to_the_agent(agent_env):
    host, settings, serve = agent_env
    s = settings()
    rec = KernelRecorder()
    serve(s, rec)
    install.install(s)
    # a comm with spaces stays ONE argument: the kernel splits the pattern before expanding %e
    # (comm is the name the program was executed by)
    named = host / "crash me now"
    named.symlink_to(shutil.which("sleep"))
    proc = subprocess.Popen([str(named), "60"])
    segv([proc])
    reap([proc])
    assert len(rec.seen) == 1
    seen = rec.seen[0]
    req = seen.request
    assert (req.global_pid, req.pid, req.signal, req.comm) == (proc.pid, proc.pid, signal.SIGSEGV, "crash me now")
    assert req.hostname == os.uname().nodename
    assert req.uid == os.getuid() and not req.spooled
    check_elf_core(seen.data)
    # the kernel kept the process (and /proc/<pid>) while the agent held the pipe
    assert f"Pid:\t{proc.pid}\n" in seen.proc_before and f"Pid:\t{proc.pid}\n" in seen.proc_after
    log = (host / "helper.log").read_text().splitlines()
    assert f"result=handed pid={proc.pid}" in log[-1] and f"size={len(seen.data)}" in log[-1]
    assert not list((host / "spool").iterdir())


def test_agent_down_spools_and_a_later_agent_delivers(agent_env):
    host, settings, serve = agent_env
    s = settings()
    install.install(s)  # the pattern points at the helper, but no agent listens
    proc, entry = spooled_crash(host)
    assert entry.name.endswith(f"-{proc.pid}")
    assert "agent unreachable" in (entry / "reason").read_text()
    check_elf_core((entry / "core").read_bytes())
    rec = KernelRecorder()
    serve(s, rec)  # drains the spool at start
    wait_for(lambda: rec.seen)
    req = rec.seen[0].request
    assert req.spooled and req.global_pid == proc.pid and req.signal == signal.SIGSEGV
    check_elf_core(rec.seen[0].data)
    wait_for(lambda: not list((host / "spool").iterdir()))


def test_sixteen_crashes_at_once_are_all_captured(agent_env):
    host, settings, serve = agent_env
    s = settings(core_pipe_limit=16, max_concurrent_dumps=4)
    rec = KernelRecorder(delay=0.1)
    serve(s, rec)
    install.install(s)
    procs = start_sleepers(16)
    segv(procs)
    reap(procs, timeout=120)
    assert sorted(x.request.global_pid for x in rec.seen) == sorted(p.pid for p in procs)
    for x in rec.seen:
        check_elf_core(x.data)
    assert not list((host / "spool").iterdir())


def test_a_hung_handler_is_cut_and_the_process_released(agent_env):
    """After the hand-over only the agent's copy of the pipe pins the process: the helper has
    exited, the process is still there; the agent's dump timeout releases it."""
    host, settings, serve = agent_env
    s = settings(dump_timeout_seconds=3.0)
    release = threading.Event()
    got: list[str] = []

    def hung(request, fd):
        got.append(_read_or(f"/proc/{request.global_pid}/status"))
        release.wait(60)
        return ServerOutcome("partial", "released")

    server = serve(s, hung, cut_margin_seconds=0, cut_grace_seconds=0.5)
    install.install(s)
    # the helper waits only 0.3 s for the outcome, so it is gone long before the timeout
    conf = host / install.HELPER_CONFIG_NAME
    conf.write_text(conf.read_text().replace(
        f"outcome_timeout_ms={int((s.dump_timeout_seconds + install.OUTCOME_GRACE_SECONDS) * 1000)}",
        "outcome_timeout_ms=300"))
    (proc,) = start_sleepers(1)
    started = time.monotonic()
    segv([proc])
    wait_for(lambda: (host / "helper.log").exists() and "no outcome: timed out" in (host / "helper.log").read_text(),
             timeout=10)
    assert got and proc.poll() is None, "the helper exited but the agent's fd still pins the process"
    assert Path(f"/proc/{proc.pid}").exists()
    reap([proc], timeout=30)
    took = time.monotonic() - started
    assert 2.5 < took < 15, took
    assert server.metrics.dump_timeouts._value.get() == 1
    release.set()


def test_end_to_end_registered_process_in_namespaces(agent_env, tmp_path):
    """A 'container' (unshare -mpf, chroot, kubelet-shaped cgroup, the webhook's env) crashes;
    CrashProcessor writes its core at the expanded pattern inside its own mount."""
    from webhook.agent.crash import CrashProcessor

    unshare = which_or_fail("unshare")
    busybox = which_or_fail("busybox")
    host, settings, serve = agent_env
    s = settings(node_name="node-1")
    pod_uid = str(uuid.uuid4())
    cid = uuid.uuid4().hex + uuid.uuid4().hex
    cgroup = Path("/sys/fs/cgroup/unified/kubepods/besteffort") / f"pod{pod_uid}" / cid
    rootfs = tmp_path / "rootfs"
    src = tmp_path / "volume"  # the volume's source as the host sees it
    for d in ("bin", "data/dump-a", "tmp"):
        (rootfs / d).mkdir(parents=True)
    src.mkdir()
    shutil.copy2(busybox, rootfs / "bin/busybox")
    for applet in ("sh", "sleep"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    env = {
        "PATH": "/bin:/usr/bin:/sbin:/usr/sbin",
        constants.ENV_PATTERN: "/data/dump-a/core-%e-%p-%t",
        constants.ENV_POD_NAME: "web-0",
        constants.ENV_POD_NAMESPACE: "shop",
        constants.ENV_POD_UID: pod_uid,
        constants.ENV_CONTAINER_NAME: "app",
        constants.ENV_NODE_NAME: "node-1",
    }
    from tests.agent_support import known_pod

    processor = CrashProcessor(s, previous_pattern="core", events=False, notifier=False,
                               pod_lookup=known_pod(pod_uid, cid, name="web-0"))
    serve(s, processor.handle)
    install.install(s)
    created = [d for d in (cgroup, *cgroup.parents) if str(d).startswith("/sys/fs/cgroup/unified/") and not d.exists()]
    cgroup.mkdir(parents=True)
    outer = None
    try:
        script = (
            f"echo $$ > {cgroup}/cgroup.procs && mount --bind {src} {rootfs}/data/dump-a && "
            f"exec chroot {rootfs} /bin/sh -c 'sleep 60; true'"  # sleep is not the namespace's init
        )
        outer = subprocess.Popen([unshare, "-mpf", "--mount-proc", "--kill-child", "sh", "-c", script], env=env)
        # find the sleeper's host pid: the process in our cgroup whose comm is sleep
        def sleeper() -> int | None:
            for pid in (cgroup / "cgroup.procs").read_text().split():
                if Path(f"/proc/{pid}/comm").read_text().strip() == "sleep":
                    return int(pid)
            return None

        wait_for(lambda: sleeper() is not None, 15)
        gpid = sleeper()
        (nspid_line,) = [x for x in Path(f"/proc/{gpid}/status").read_text().splitlines() if x.startswith("NSpid:")]
        nspid = int(nspid_line.split()[-1])  # the pid inside its own namespace
        assert nspid != gpid
        os.kill(gpid, signal.SIGSEGV)
        wait_for(lambda: not Path(f"/proc/{gpid}").exists(), 30)
        wait_for(lambda: any(p.suffix == ".json" for p in src.iterdir()), 15)
    finally:
        for pid in (cgroup / "cgroup.procs").read_text().split():
            os.kill(int(pid), signal.SIGKILL)  # the namespace's init: takes the rest with it
        if outer is not None:
            outer.kill()
            outer.wait(10)
        wait_for(lambda: not (cgroup / "cgroup.procs").read_text().split(), 10)
        for d in created:  # deepest first
            d.rmdir()
    (meta_path,) = [p for p in src.iterdir() if p.suffix == ".json"]
    core_path = meta_path.with_suffix("")
    assert core_path.name.startswith(f"core-sleep-{nspid}-")  # %e, %p in its namespace, %t
    assert not core_path.name.endswith(f".{nspid}")  # the pattern has %p: nothing appended
    data = core_path.read_bytes()
    check_elf_core(data)
    meta = json.loads(meta_path.read_text())
    assert meta["digest"] == "xxh128:" + xxhash.xxh3_128(data).hexdigest()
    assert meta["size"] == len(data)
    assert (meta["namespace"], meta["pod"], meta["pod_uid"], meta["container"]) == ("shop", "web-0", pod_uid, "app")
    assert meta["container_id"] == cid
    # the helper logs the outcome once the agent answered, after the metadata is written
    wait_for(lambda: "outcome=" in _read_or(str(host / "helper.log")), 15)
    log = (host / "helper.log").read_text().splitlines()[-1]
    assert "outcome=written" in log and f"/data/dump-a/{core_path.name}" in log
    assert is_our_pattern(Sysctl().read(CORE_PATTERN))


def test_the_process_is_released_before_the_hash_which_metadata_never_shows_early(agent_env, monkeypatch):
    """The agent lets the kernel reap the crashing process as soon as the core is in the file:
    the parent's waitpid returns while the digest pass is still held back, and at that moment
    no metadata exists (it is written once, with the computed hash). Then the metadata's hash
    is the file's, and the zero pages the splice copied as data are holes."""
    from webhook.agent import capture
    from webhook.agent.crash import CrashProcessor

    host, settings, serve = agent_env
    s = settings(unregistered="node", rate_limit_count=100)
    reaped = threading.Event()
    seen: dict = {}
    real_finish = capture.finish_core

    def held_finish(fd, result, limits, algorithm):
        seen["digest_before"] = result.digest
        seen["reaped_first"] = reaped.wait(30)  # never set if the process waited for the hash
        return real_finish(fd, result, limits, algorithm)

    monkeypatch.setattr(capture, "finish_core", held_finish)
    processor = CrashProcessor(s, None, events=False, notifier=False, signatures=False)
    serve(s, processor.handle)
    install.install(s)
    script = ("import os, signal, sys; z = bytearray(24 << 20); r = os.urandom(4 << 20); "
              "[z.__setitem__(i, 0) for i in range(0, len(z), 4096)]; "
              "sys.stdout.write('ready\\n'); sys.stdout.flush(); signal.pause()")
    import resource
    import sys

    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,  # %c is honoured
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CORE, (-1, -1)))
    assert proc.stdout.readline() == b"ready\n"
    os.kill(proc.pid, signal.SIGSEGV)
    proc.wait(30)
    metas_at_release = _metadata_of(host / "cores", proc.pid)
    reaped.set()
    proc.stdout.close()
    wait_for(lambda: _metadata_of(host / "cores", proc.pid), 30)
    assert seen == {"digest_before": "", "reaped_first": True}
    assert metas_at_release == []
    (meta_path,) = _metadata_of(host / "cores", proc.pid)
    doc = json.loads(meta_path.read_text())
    core = meta_path.with_suffix("")
    data = core.read_bytes()
    check_elf_core(data)
    assert doc["digest"] == "xxh128:" + xxhash.xxh3_128(data).hexdigest() and doc["size"] == len(data)
    assert not doc["truncated"] and doc["global_pid"] == proc.pid
    assert doc["disk_size"] == core.stat().st_blocks * 512 < len(data) - (16 << 20)


@pytest.mark.parametrize(("algorithm", "tool"), [("xxh128", "xxh128sum"), ("sha256", "sha256sum")])
def test_the_recorded_digest_is_what_the_standard_tool_prints(agent_env, algorithm, tool):
    """A user checks a core with the standard tool its metadata names: a real crash through the
    kernel and a real agent (the ``digest`` setting, xxh128 by default), then the real
    ``xxh128sum`` (Debian's xxhash) or ``sha256sum`` over the core file gives the recorded hex."""
    from webhook.agent.crash import CrashProcessor

    binary = which_or_fail(tool)
    host, settings, serve = agent_env
    s = settings(unregistered="node", rate_limit_count=100, **({} if algorithm == "xxh128" else {"digest": algorithm}))
    assert s.digest == algorithm
    processor = CrashProcessor(s, None, events=False, notifier=False, signatures=False)
    serve(s, processor.handle)
    install.install(s)
    import resource

    procs = [subprocess.Popen(["sleep", "60"], preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CORE, (-1, -1)))]
    segv(procs)  # unregistered: its soft RLIMIT_CORE must allow a core (the node location's rule)
    reap(procs)
    pid = procs[0].pid
    wait_for(lambda: _metadata_of(host / "cores", pid), 30)
    (meta_path,) = _metadata_of(host / "cores", pid)
    doc = json.loads(meta_path.read_text())
    core = meta_path.with_suffix("")
    check_elf_core(core.read_bytes())
    out = subprocess.run([binary, str(core)], capture_output=True, text=True, check=True, timeout=30).stdout
    printed, _, name = out.strip().partition("  ")
    assert name == str(core) and len(printed) == {"xxh128": 32, "sha256": 64}[algorithm]
    assert doc["digest"] == f"{algorithm}:{printed}" and "sha256" not in doc
