"""Crash signatures in the agent: a small C program compiled here crashes for real, the kernel's
pipe hands its core to the agent, the binaries are saved while it is pinned, and the unwinder's
backtrace and signature land in ``<core>.json`` off the crash path; the Event waits for them."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import xxhash
from prometheus_client import CollectorRegistry

from tests.agent_support import Recorder, known_pod
from tests.crash_support import build_programs, check_elf_core
from tests.process_support import wait_for
from webhook import constants
from webhook.agent import install
from webhook.agent.analysis import SignatureJob, SignatureWorker
from webhook.agent.crash import CrashProcessor
from webhook.agent.events import build_event
from webhook.agent.metrics import AgentMetrics

CRASHER_C = r"""
#include <stdio.h>
__attribute__((noinline)) void crash_here(volatile int *p) { *p = 42; }
__attribute__((noinline)) void middle(volatile int *p) { crash_here(p); }
int main(int argc, char **argv) { middle(argc > 5 ? (int *)&argc : (int *)0); puts("no crash"); return 0; }
"""

OTHER_C = r"""
#include <stdlib.h>
__attribute__((noinline)) void other_bug(int n) { if (n < 100) abort(); }
int main(int argc, char **argv) { other_bug(argc); return 0; }
"""


@pytest.fixture(scope="module")
def programs(tmp_path_factory) -> dict[str, Path]:
    return build_programs(tmp_path_factory.mktemp("crashers"), {"crasher": CRASHER_C, "other": OTHER_C})


def registered_crash(exe: Path, cgroup: Path, pod_uid: str, pattern: str) -> int:
    """Run ``exe`` as a registered 'container' process (the webhook's env, a kubelet-shaped
    cgroup) and let it crash through the kernel; returns its pid once it is reaped."""
    env = {
        "PATH": "/usr/bin:/bin",
        constants.ENV_PATTERN: pattern,
        constants.ENV_POD_NAME: "web-0",
        constants.ENV_POD_NAMESPACE: "shop",
        constants.ENV_POD_UID: pod_uid,
        constants.ENV_CONTAINER_NAME: "app",
    }
    proc = subprocess.Popen(["sh", "-c", f"echo $$ > {cgroup}/cgroup.procs && exec {exe}"], env=env,
                            stdout=subprocess.DEVNULL)
    rc = proc.wait(60)
    assert rc < 0, f"{exe} did not crash (exit {rc})"
    return proc.pid


def metadata_with(path: Path, key: str, timeout: float = 60.0) -> dict:
    def ready() -> bool:
        try:
            return key in json.loads(path.read_text())
        except (OSError, ValueError):
            return False

    wait_for(ready, timeout)
    return json.loads(path.read_text())


@pytest.mark.kernel
def test_signatures_of_real_crashes_through_the_kernel(agent_env, k8s_cgroup, programs, tmp_path):
    host, settings, serve = agent_env
    pod_uid, cid, cgroup = k8s_cgroup
    dump = tmp_path / "dump"
    s = settings(node_name="node-1", rate_limit_count=10, keep_free_bytes=0, save_binaries=True,
                 save_binaries_budget_bytes=64 << 20, signature_event_wait_seconds=60)
    events = Recorder()
    processor = CrashProcessor(s, previous_pattern="core", events=events, notifier=False,
                               metrics=AgentMetrics(CollectorRegistry()),
                               pod_lookup=known_pod(pod_uid, cid, name="web-0"))
    assert processor.signatures is not None
    serve(s, processor.handle)
    install.install(s)
    pattern = f"{dump}/core.%e.%p.%t"
    first = registered_crash(programs["crasher"], cgroup, pod_uid, pattern)
    second = registered_crash(programs["crasher"], cgroup, pod_uid, pattern)
    third = registered_crash(programs["other"], cgroup, pod_uid, pattern)
    docs = {}
    for pid in (first, second, third):
        wait_for(lambda pid=pid: [p for p in dump.glob(f"core.*.{pid}.*.json")], 30)
        (meta_path,) = dump.glob(f"core.*.{pid}.*.json")
        docs[pid] = metadata_with(meta_path, "signature")
        core = meta_path.with_suffix("")
        check_elf_core(core.read_bytes())
        assert docs[pid]["digest"] == "xxh128:" + xxhash.xxh3_128(core.read_bytes()).hexdigest()
        assert docs[pid]["path"] == str(core)
    a, b, c = docs[first], docs[second], docs[third]
    # the right function names, innermost first, addresses nowhere
    assert a["signature_frames"][:3] == ["crash_here", "middle", "main"], a["backtrace"]
    assert any("crash_here" in line and "crasher.c:" in line for line in a["backtrace"])
    assert not any("0x" in f for f in a["signature_frames"])
    assert a["signature_source"] == "mapped_files"
    # the same bug twice (other PID, other addresses): the same signature; another bug: another
    assert a["signature"] == b["signature"] and len(a["signature"]) == 64
    assert c["signature"] != a["signature"] and "other_bug" in c["signature_frames"], (c["backtrace"], c.get("binaries"), c.get("signature_source"))
    assert "abort" not in c["signature_frames"][:1]  # the abort machinery is skipped
    # the binaries were saved next to the core, inside the volume, while the process was pinned
    bdir = Path(a["binaries_dir"])
    assert bdir.parent == dump and bdir.name.endswith(".d")
    saved_exe = bdir / str(programs["crasher"]).lstrip("/")
    assert saved_exe.read_bytes() == programs["crasher"].read_bytes()
    assert str(programs["crasher"]) in a["binaries"] and any("libc" in p for p in a["binaries"])
    assert not list((host / "staging").glob("*")), "staging left behind"
    # the metadata kept every key of the crash path, and nothing else was rewritten
    assert (a["namespace"], a["pod"], a["container"], a["container_id"]) == ("shop", "web-0", "app", cid)
    assert not [p for p in dump.iterdir() if p.name.startswith(".coredump-tmp")]
    # the Event (sent once per crash) waited for the signature and names the top frames
    processor.signatures.flush(30)
    sent = {info["global_pid"]: info for _, info in events.items}
    assert len(events.items) == 3 and set(sent) == {first, second, third}
    body = build_event(sent[first], time.time())
    assert "top frames: crash_here < middle < main" in body["message"], body["message"]
    assert body["reason"] == constants.EVENT_REASON


def test_event_is_sent_without_frames_when_the_analysis_is_too_slow(tmp_path):
    """A stuck unwinder delays the Event only up to event_wait; the Event then goes without frames."""
    slow = tmp_path / "unwind"
    slow.write_text("#!/bin/sh\nsleep 5\n")
    slow.chmod(0o755)
    sink = Recorder()
    worker = SignatureWorker(lambda: [sink], unwinder=[str(slow)], timeout=3, event_wait=0.3)
    d = tmp_path / "d"
    d.mkdir()
    (d / "core.1").write_bytes(b"\x7fELF\x02\x01\x01" + bytes(9) + b"\x04\x00" + bytes(86))  # an ELF core header
    (d / "core.1.json").write_text("{}")
    doc = {"schema": 1, "stored_size": 104, "path": str(d / "core.1")}
    job = SignatureJob(os.open(d, os.O_RDONLY | os.O_DIRECTORY), "core.1", "core.1.json", doc,
                       summary={"namespace": "shop", "pod": "p", "outcome": "written"})
    started = time.monotonic()
    assert worker.submit(job)
    wait_for(lambda: sink.items, 10)
    took = sink.items[0][0] - started
    assert 0.2 < took < 2.5, took
    assert "signature_frames" not in sink.items[0][1]
    assert worker.flush(20)
    assert len(sink.items) == 1  # once per crash, even when the analysis finishes later
    updated = json.loads((d / "core.1.json").read_text())
    assert "took more than 3s" in updated["signature_error"] and updated["stored_size"] == 104
    worker.close()


@pytest.mark.kernel
def test_without_kept_binaries_the_executable_still_names_the_frames(agent_env, k8s_cgroup, programs, tmp_path):
    """Nothing kept (no store, no copies, no mapped files): the unwinder gets the executable
    through the fd taken while pinned, and no library (never the node's own)."""
    host, settings, serve = agent_env
    pod_uid, _cid, cgroup = k8s_cgroup
    dump = tmp_path / "dump"
    s = settings(node_name="node-1", keep_free_bytes=0, symbols=False)
    processor = CrashProcessor(s, previous_pattern="core", events=False, notifier=False,
                               metrics=AgentMetrics(CollectorRegistry()))
    processor.pinned.keep_binaries = lambda *a, **k: ([], {})  # as when the mapped files cannot be opened
    serve(s, processor.handle)
    install.install(s)
    pid = registered_crash(programs["crasher"], cgroup, pod_uid, f"{dump}/core.%p")
    doc = metadata_with(dump / f"core.{pid}.json", "signature")
    assert doc["signature_source"] == "exe"
    assert doc["signature_frames"][:3] == ["crash_here", "middle", "main"], doc["backtrace"]
    assert "binaries_dir" not in doc and not [p for p in dump.iterdir() if p.name.endswith(".d")]
