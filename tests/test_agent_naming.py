"""The kernel is the oracle for naming: a pattern with specifiers the kernel drops (issue 15
section 6) gets the same name from the agent as from the kernel, with real crashes.

First the kernel itself writes a core from a plain file pattern; then the same pattern, as a
pod's registration, goes through the real pipe, the static helper and the agent's crash path.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.agent_support import webhook_env
from tests.crash_support import check_elf_core, core_files
from tests.process_support import wait_for
from webhook.agent import install
from webhook.agent.crash import CrashProcessor
from webhook.agent.metrics import AgentMetrics

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(90)]

#: An unknown specifier and a trailing lone '%': both vanish in the kernel's expansion.
TEMPLATE = "unk.%z.%p.%"


def _crash(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, env=env)
    time.sleep(0.1)  # exec'd
    return proc


def _in_cgroup(proc: subprocess.Popen, cgroup: Path) -> None:
    wait_for(lambda: str(proc.pid) in (cgroup / "cgroup.procs").read_text().split(), 10, "the cgroup")


def test_agent_names_like_the_kernel_for_dropped_specifiers(agent_env, k8s_cgroup, tmp_path):  # noqa: F811
    host, settings, serve = agent_env
    pod_uid, _cid, cgroup = k8s_cgroup
    oracle = tmp_path / "kernel"
    oracle.mkdir()
    # 1. the kernel writes the core itself (a file pattern; RLIMIT_CORE raised for it)
    Path("/proc/sys/kernel/core_uses_pid").write_text("0")
    Path("/proc/sys/kernel/core_pattern").write_text(f"{oracle}/{TEMPLATE}")
    first = _crash(["sh", "-c", "ulimit -c unlimited; exec sleep 60"])
    os.kill(first.pid, signal.SIGSEGV)
    assert first.wait(30) == -signal.SIGSEGV
    kernel_name = wait_for(lambda: os.listdir(oracle), 10, "the kernel's core")[0]
    assert kernel_name == f"unk..{first.pid}."
    # 2. the same pattern as a registration, through the pipe, the helper and the agent
    dump = tmp_path / "dump"
    dump.mkdir()
    s = settings(node_name="node-1", keep_free_bytes=0)
    processor = CrashProcessor(s, previous_pattern="core", events=False, notifier=False, signatures=False,
                               metrics=AgentMetrics(__import__("prometheus_client").CollectorRegistry()))
    serve(s, processor.handle)
    install.install(s)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **webhook_env(f"{dump}/{TEMPLATE}", pod_uid)}
    second = _crash(["sh", "-c", f"echo $$ > {cgroup}/cgroup.procs && exec sleep 60"], env)
    _in_cgroup(second, cgroup)
    os.kill(second.pid, signal.SIGSEGV)
    assert second.wait(30) == -signal.SIGSEGV
    wait_for(lambda: [n for n in os.listdir(dump) if n.endswith(".json")], 15, "the agent's core")
    names = [p.name for p in core_files(dump)]
    # the same expansion as the kernel's, for this process's PID: nothing sent elsewhere
    assert names == [kernel_name.replace(str(first.pid), str(second.pid))]
    check_elf_core((dump / names[0]).read_bytes())
    assert not os.path.exists(s.node_cores_dir) or not any(os.scandir(s.node_cores_dir))
