"""Cores the kernel drops before any helper runs (issue 15 §1): read from /dev/kmsg, counted by
reason, logged, attributed to the pod when the process still resolves, and an Event posted.

The parsing tests use the kernel's own message shapes (fs/coredump.c, include/linux/coredump.h);
the kernel test crashes 40 real processes against a real core_pipe_limit of 32 while the agent
holds the first 32 pinned, exactly the burst that used to vanish without a trace.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from tests.crash_support import check_elf_core, reap, segv, start_sleepers
from tests.process_support import wait_for
from tests.runc_support import remove_cgroup_dirs
from webhook.agent import install
from webhook.agent.commands import remembering_requests
from webhook.agent.drop_candidates import Candidate, RecentPids, choose, find_candidates
from webhook.agent.events import build_event
from webhook.agent.kernellog import KernelLogWatcher, parse_drop, parse_record, unescape_comm
from webhook.agent.podwatch import PodIndex
from webhook.agent.procinfo import CgroupIdentity
from webhook.agent.server import ServerOutcome
from webhook.agent.settings import AgentSettings


# --- pure: the kernel's words ---------------------------------------------------------------------
def test_parse_record_and_the_coredump_failures():
    rec = parse_record(b"4,1234,5678901,-;coredump: 77(my app): over core_pipe_limit, skipping core dump\n"
                       b" SUBSYSTEM=x\n")
    assert rec == (4, 1234, 5678901, "coredump: 77(my app): over core_pipe_limit, skipping core dump")
    drop = parse_drop(rec[3], seq=rec[1], timestamp_us=rec[2])
    assert (drop.reason, drop.pid, drop.comm, drop.seq, drop.is_crash) == ("over_core_pipe_limit", 77, "my app", 1234,
                                                                          True)
    cases = {
        "coredump: 5(a): |/x/coredump-helper pipe failed": "pipe_spawn_failed",
        "coredump: 5(a): RLIMIT_CORE is set to 1, aborting core": "rlimit_core_one",
        "coredump: 5(a): format_corename failed, aborting core": "format_corename_failed",
        "coredump: 5(a): do_coredump failed to allocate memory": "no_memory",
        "coredump: 5(a): Core dump to |/x disabled": "helper_disabled",
        "coredump: 5(a): this process can only dump core to a fully qualified path, skipping core dump":
            "suid_needs_absolute_path",
        "coredump: 5(a): Core dump to core aborted: cannot preserve file owner": "file_owner_not_preserved",
        "coredump: 5(a): something new in 6.20": "other",
    }
    for message, reason in cases.items():
        assert parse_drop(message).reason == reason, message
    unsafe = parse_drop("coredump: 9(sysctl): Unsafe core_pattern used with fs.suid_dumpable=2: pipe handler ...")
    assert unsafe.reason == "unsafe_core_pattern" and not unsafe.is_crash
    sup = parse_drop("vfs_coredump: 12 callbacks suppressed")
    assert (sup.reason, sup.count, sup.pid) == ("suppressed", 12, 0)
    old = {  # kernels before 6.10 (most nodes today)
        "Pid 812(repro) over core_pipe_limit": ("over_core_pipe_limit", 812, "repro"),
        "Process 9(a b) has RLIMIT_CORE set to 1": ("rlimit_core_one", 9, "a b"),
        "Pid 3(x) can only dump core to fully qualified path!": ("suid_needs_absolute_path", 3, "x"),
        "Core dump to |/var/lib/coredump-webhook/coredump-helper pipe failed": ("pipe_spawn_failed", 0, ""),
        "format_corename failed": ("format_corename_failed", 0, ""),
    }
    for message, want in old.items():
        d = parse_drop(message)
        assert (d.reason, d.pid, d.comm) == want, message
    assert parse_drop("Skipping core dump") is None and parse_drop("Aborting core") is None
    assert parse_drop("segv[6285]: segfault at 0 ip 000055b05180c155") is None
    assert parse_drop("e1000: 3 callbacks suppressed") is None
    assert parse_record(b"garbage") is None
    assert unescape_comm(r"a\011b\\c") == "a\tb\\c"


def test_choose_excludes_what_the_agent_handled():
    a, b = Candidate(10, False, CgroupIdentity()), Candidate(11, True, CgroupIdentity())
    assert choose([a], lambda p: False) is a
    assert choose([a], lambda p: p == 10) is None
    assert choose([a, b], lambda p: p == 10) is b
    assert choose([a, b], lambda p: False) is b  # the dropped one is the zombie, the others are pinned
    c = Candidate(12, True, CgroupIdentity())
    assert choose([b, c], lambda p: False) is None  # ambiguous: counted, not attributed
    pids = RecentPids(max_age=10, max_size=2, clock=lambda: 0.0)
    for p in (1, 2, 3):
        pids.add(p)
    assert 1 not in pids and 2 in pids and 3 in pids


def test_auto_pipe_limit_follows_the_node():
    gib = 1024**3
    assert install.auto_pipe_limit(2, 24 * gib) == 32
    assert install.auto_pipe_limit(4, 24 * gib) == 64
    assert install.auto_pipe_limit(64, 512 * gib) == 128  # IBM's figure is the ceiling
    assert install.auto_pipe_limit(8, 1 * gib) == 16  # a small node pins less memory
    assert install.auto_pipe_limit(8, 0) == 128
    assert install.pipe_limit(AgentSettings(core_pipe_limit=40)) == 40
    assert install.pipe_limit(AgentSettings(core_pipe_limit=4)) == install.MIN_CORE_PIPE_LIMIT
    assert install.pipe_limit(AgentSettings()) == install.auto_pipe_limit(os.cpu_count() or 1,
                                                                          install.node_memory_bytes())


def test_dropped_event_says_why():
    body = build_event({"outcome": "dropped", "reason": "kernel: over core_pipe_limit, skipping core dump",
                        "namespace": "shop", "pod": "web-0", "pod_uid": "u", "container": "app", "pid": 7,
                        "comm": "sleep", "node": "n"}, 0)
    assert body["type"] == "Warning" and body["involvedObject"]["fieldPath"] == "spec.containers{app}"
    assert "no core was saved: kernel: over core_pipe_limit" in body["message"]


# --- the real kernel ------------------------------------------------------------------------------
def _pod(uid: str, cid: str) -> dict:
    return {"metadata": {"name": "web-0", "namespace": "shop", "uid": uid},
            "spec": {"nodeName": "node-1", "containers": [{"name": "app", "image": "busybox"}]},
            "status": {"containerStatuses": [{"name": "app", "containerID": f"containerd://{cid}"}]}}


@pytest.mark.kernel
def test_crashes_over_core_pipe_limit_are_counted_and_attributed(agent_env):  # noqa: F811
    host, settings, serve = agent_env
    s = settings(node_name="node-1", max_concurrent_dumps=4)
    release = threading.Event()
    cores: dict[int, bytes] = {}

    def held(request, fd):  # keeps every dump pinned until the test has seen the drops
        release.wait(60)
        data = b"".join(iter(lambda: os.read(fd, 1 << 20), b""))
        cores[request.global_pid] = data
        return ServerOutcome("written", "test", None, len(data))

    handled = RecentPids()
    serve(s, held, request_factory=remembering_requests(handled))  # as `coredump agent run` wires it
    pod_uid = str(uuid.uuid4())
    cid = hashlib.sha256(pod_uid.encode()).hexdigest()
    index = PodIndex()
    index.replace([_pod(pod_uid, cid)])
    registry = CollectorRegistry()
    reports, events = [], []

    class Events:
        def submit(self, info):
            events.append(info)
            return True

    watcher = KernelLogWatcher(registry, node="node-1", events=Events(), handled=handled, pod_lookup=index.lookup,
                               on_report=reports.append).start()
    rel = f"kubepods/besteffort/pod{pod_uid}/{cid}"
    cgroup = Path("/sys/fs/cgroup/unified") / rel
    cgroup.mkdir(parents=True)
    procs = []
    try:
        install.install(s)
        Path("/proc/sys/kernel/core_pipe_limit").write_text("32\n")  # the kernel fixture restores it
        procs = start_sleepers(40)
        for p in procs:
            (cgroup / "cgroup.procs").write_text(str(p.pid))
        ours = {p.pid for p in procs}
        started = time.monotonic()
        segv(procs)

        def mine():
            return [r for r in reports if r.drop.pid in ours]

        wait_for(lambda: len(mine()) >= 8, 30, "8 drops in the kernel log")
        time.sleep(0.5)  # nothing more may come: 32 are pinned, 8 dropped
        release.set()
        reap(procs, timeout=120)
        took = time.monotonic() - started
    finally:
        release.set()
        watcher.stop()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        remove_cgroup_dirs(rel)
    dropped = mine()
    assert len(dropped) == 8 and {r.drop.reason for r in dropped} == {"over_core_pipe_limit"}
    dropped_pids = {r.drop.pid for r in dropped}
    assert set(cores) == ours - dropped_pids  # every crash: either a core or a drop record
    for data in cores.values():
        check_elf_core(data)
    for r in dropped:  # attributed through the kernel's marks, the cgroup and the pod watch
        assert r.global_pid == r.drop.pid and r.candidates == 1
        assert (r.namespace, r.pod, r.pod_uid, r.container, r.container_id) == ("shop", "web-0", pod_uid, "app", cid)
    ev = [e for e in events if e["pid"] in dropped_pids]
    assert len(ev) == 8 and all(e["outcome"] == "dropped" and e["pod"] == "web-0" for e in ev)
    assert "over core_pipe_limit" in build_event(ev[0], 0)["message"]
    assert registry.get_sample_value("coredump_agent_kernel_dropped_cores_total",
                                     {"reason": "over_core_pipe_limit", "attributed": "yes"}) >= 8
    assert took < 120


@pytest.mark.root
def test_the_reader_starts_at_the_end_of_the_log():
    """Lines logged before the agent started are not reported again."""
    registry = CollectorRegistry()
    seen = []
    with open("/dev/kmsg", "w") as k:
        k.write("coredump: 4242424(old-line): over core_pipe_limit, skipping core dump\n")
    watcher = KernelLogWatcher(registry, on_report=seen.append).start()
    try:
        marker = f"faults-{uuid.uuid4().hex[:8]}"
        with open("/dev/kmsg", "w") as k:
            k.write(f"coredump: 4242425({marker}): over core_pipe_limit, skipping core dump\n")
        wait_for(lambda: any(r.drop.comm == marker for r in seen), 10)
    finally:
        watcher.stop()
    assert not [r for r in seen if r.drop.comm == "old-line"]
    (r,) = [r for r in seen if r.drop.comm == marker]
    assert r.global_pid is None and r.candidates == 0  # no such process: counted, not attributed
    assert find_candidates(4242425, marker) == []


def test_candidates_are_processes_the_kernel_marked_as_dumping():
    """A real process killed by SIGSEGV (RLIMIT_CORE 1: the kernel aborts its dump, whatever the
    pattern) is found by pid and comm while it is a zombie; one killed by SIGTERM is not."""
    import resource
    import signal
    import subprocess

    dumped = subprocess.Popen(["sleep", "60"], preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CORE, (1, 1)))
    plain = subprocess.Popen(["sleep", "60"])
    time.sleep(0.05)
    os.kill(dumped.pid, signal.SIGSEGV)
    os.kill(plain.pid, signal.SIGTERM)
    try:
        wait_for(lambda: find_candidates(dumped.pid, "sleep"), 10)
        (c,) = find_candidates(dumped.pid, "sleep")
        assert c.global_pid == dumped.pid and c.zombie
        assert find_candidates(dumped.pid, "other-name") == []
        wait_for(lambda: Path(f"/proc/{plain.pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z", 10)
        assert find_candidates(plain.pid, "sleep") == []
    finally:
        dumped.wait()
        plain.wait()


@pytest.mark.kernel
@pytest.mark.timeout(120)
def test_coredump_agent_run_reports_what_the_kernel_dropped(kernel, bin_dir, pod_api):
    """The kernel log reader as ``coredump agent run`` wires it (kernel log on, the default): the
    agent is stalled (SIGSTOP: a slow agent) while 24 processes crash against its pipe limit of
    16; the kernel drops the ones over it, and once the agent runs again its log has each drop
    with its reason and its metrics endpoint counts them."""
    import signal
    import urllib.request

    from tests.e2e_support import running_agent
    from tests.process_support import free_port

    port = free_port()
    ready_at = time.monotonic() + 5.5  # the kernel rate-limits these lines: 10 per 5 s (printk_ratelimited)
    with running_agent(bin_dir, pod_api, "--core-pipe-limit", "16", "--metrics-bind", f"127.0.0.1:{port}") as agent:
        assert Path("/proc/sys/kernel/core_pipe_limit").read_text().strip() == "16"
        procs = start_sleepers(24)
        ours = {p.pid for p in procs}
        time.sleep(max(0.0, ready_at - time.monotonic()))  # a burst of another test's drops is over
        agent.proc.send_signal(signal.SIGSTOP)
        try:
            segv(procs)
            time.sleep(1.0)  # 16 helpers hold their processes pinned; the kernel skips the rest
        finally:
            agent.proc.send_signal(signal.SIGCONT)

        def drops() -> list[dict]:
            return [r for r in agent.records()
                    if r.get("message") == "core dropped by the kernel" and r.get("pid") in ours]

        reap(procs, timeout=60)

        def handled() -> set[int]:
            return {r.get("global_pid") for r in agent.crashes()} & ours

        wait_for(lambda: len(drops()) + len(handled()) == len(ours), 30,
                 "every crash: a core the agent handled or a drop record in its log")
        dropped = drops()
        assert len(dropped) >= 8, dropped  # 24 crashes, 16 pinned at most
        assert {r["reason"] for r in dropped} == {"over_core_pipe_limit"}, dropped
        assert all("over core_pipe_limit" in r["kernel_message"] for r in dropped)
        assert not handled() & {r["pid"] for r in dropped}, "a drop record for a core the agent got"
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        samples = [line for line in body.splitlines()
                   if line.startswith("coredump_agent_kernel_dropped_cores_total{")
                   and 'reason="over_core_pipe_limit"' in line]
        assert samples and sum(float(line.rsplit(" ", 1)[1]) for line in samples) >= len(dropped), samples
        assert agent.stop() == 0
