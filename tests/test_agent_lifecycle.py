"""Rollouts, evictions and uninstalls: what a stopping agent does with the node and its dumps.

The real agent (``run_agent``: install, socket server, crash processor writing to the node
location) against the real kernel and real crashes, under the ``kernel`` fixture. Whether the
agent's DaemonSet exists comes from a stand-in API server (tests/kube_apiserver.py) answering
with the recorded shapes of tests/recorded/agent/daemonset-*.json.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tests.crash_support import check_elf_core, reap, segv
from tests.kube_apiserver import FakeApiServer, recorded
from tests.lifecycle_support import Agent, Gate, agent_settings, start_sleepers
from tests.process_support import wait_for
from webhook.agent import install, lifecycle
from webhook.agent.settings import AgentSettings
from webhook.agent.sysctl import CORE_PATTERN, Sysctl

DS_PATH = "/apis/apps/v1/namespaces/coredump-webhook/daemonsets/coredump-webhook-agent"
DS = "coredump-webhook/coredump-webhook-agent"


def api_client_for(api: FakeApiServer, tmp: Path) -> Callable[[], Any]:
    from webhook.kubeclient import api_client

    kubeconfig = api.kubeconfig(tmp / "kubeconfig", namespace=None, token="t0ken")
    return lambda: api_client(str(kubeconfig))


# --- the decision (no kernel) ----------------------------------------------------------------


@pytest.mark.parametrize(("answer", "restore"), [
    ((200, "daemonset-get-200.json"), False),            # a rollout, drain or eviction
    ((200, "daemonset-get-200-deleting.json"), True),    # foreground deletion
    ((404, "daemonset-get-404.json"), True),             # helm uninstall, kubectl delete
])
def test_restore_only_when_the_daemonset_is_being_removed(tmp_path: Path, answer, restore) -> None:
    status, name = answer
    settings = AgentSettings(restore_on_stop="removed", daemonset=DS)
    with FakeApiServer() as api:
        api.route("GET", DS_PATH, (status, recorded(name, "agent")))
        assert lifecycle.should_restore(settings, api_factory=api_client_for(api, tmp_path)) is restore
        assert [s.path for s in api.seen()] == [DS_PATH]


def test_an_api_that_does_not_answer_keeps_the_helper(tmp_path: Path) -> None:
    """Cannot tell: keep (the helper spools; the backup stays for `coredump agent uninstall`)."""
    settings = AgentSettings(restore_on_stop="removed", daemonset=DS)
    with FakeApiServer() as api:
        api.route("GET", DS_PATH, (403, recorded("daemonset-get-403.json", "agent")))
        assert lifecycle.should_restore(settings, api_factory=api_client_for(api, tmp_path), pause=0) is False
        assert len(api.seen()) == lifecycle.API_ATTEMPTS
    # and with no API configuration at all
    assert lifecycle.should_restore(settings, api_factory=lambda: 1 / 0, pause=0) is False


def test_modes() -> None:
    assert AgentSettings().restore_on_stop == "always"  # an agent run by hand restores everything
    assert lifecycle.should_restore(AgentSettings(restore_on_stop="always")) is True
    assert lifecycle.should_restore(AgentSettings(restore_on_stop="never")) is False
    with pytest.raises(ValueError, match="NAMESPACE/NAME"):
        lifecycle.validate(AgentSettings(restore_on_stop="removed"))
    with pytest.raises(ValueError, match="restore_on_stop"):
        lifecycle.validate(AgentSettings(restore_on_stop="sometimes"))


# --- the real agent, the real kernel ---------------------------------------------------------


@pytest.fixture
def host(kernel, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cdl-"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    try:
        yield path
    finally:
        try:
            install.uninstall(AgentSettings(host_dir=str(path)))
        finally:
            shutil.rmtree(path, ignore_errors=True)


def node_cores(host: Path, pid: int) -> list[Path]:
    """The cores of ``pid`` in the node location, once their metadata is written (they are done)."""
    return [p for p in (host / "cores").rglob(f"*.{pid}.*")
            if p.is_file() and not p.name.endswith(".json") and p.with_name(p.name + ".json").exists()]


def metadata(core: Path) -> dict[str, Any]:
    return json.loads(core.with_name(core.name + ".json").read_text())


@pytest.mark.kernel
def test_restart_keeps_the_helper_and_a_crash_in_the_gap_is_delivered_then_removal_restores(
        host: Path, bin_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = Sysctl().read(CORE_PATTERN)
    with FakeApiServer() as api:
        from kubernetes.config import kube_config

        # what the kubernetes client reads KUBECONFIG into at import
        monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(api.kubeconfig(tmp_path / "kc", namespace=None, token="t0ken")))
        api.route("GET", DS_PATH, (200, recorded("daemonset-get-200.json", "agent")))
        s = agent_settings(host, bin_dir, restore_on_stop="removed", daemonset=DS)
        first = Agent(s)
        first.stop()  # a rollout: the DaemonSet is still there
        assert [r.path for r in api.seen("GET")] == [DS_PATH]
        assert Sysctl().read(CORE_PATTERN) == install.helper_pattern(s), "a restart restored the old pattern"
        assert (host / install.BACKUP_NAME).exists()

        # the gap: nobody listens, the static helper spools
        (proc,) = start_sleepers(1)
        segv([proc])
        reap([proc])
        wait_for(lambda: [p for p in (host / "spool").iterdir() if not p.name.endswith(".tmp")], 10)
        (entry,) = list((host / "spool").iterdir())
        assert "agent unreachable" in (entry / "reason").read_text()

        second = Agent(s)  # drains the spool at start
        wait_for(lambda: node_cores(host, proc.pid), what="the spooled core delivered")
        (core,) = node_cores(host, proc.pid)
        check_elf_core(core.read_bytes())
        doc = metadata(core)
        assert doc["truncated"] is False and "agent unreachable" in doc["spool_reason"]
        assert doc["size"] == core.stat().st_size
        wait_for(lambda: not list((host / "spool").iterdir()), what="spool emptied")

        api.route("GET", DS_PATH, (404, recorded("daemonset-get-404.json", "agent")))  # helm uninstall
        second.stop()
        assert Sysctl().read(CORE_PATTERN) == original
        assert not (host / install.BACKUP_NAME).exists()


@pytest.mark.kernel
def test_sigterm_with_dumps_in_flight_loses_nothing(host: Path, bin_dir: Path) -> None:
    """One dump in flight finishes before the agent exits; one waiting for a slot goes to the
    spool at once and the next agent delivers it; the kernel settings stay (a restart)."""
    s = agent_settings(host, bin_dir, max_concurrent_dumps=1, restore_on_stop="never", stop_timeout_seconds=30)
    gate = Gate()
    agent = Agent(s, gate.factory)
    a, b = start_sleepers(2)
    segv([a])
    assert gate.entered.wait(10)
    segv([b])
    wait_for(lambda: agent.registry.get_sample_value("coredump_agent_dumps_queued") == 1, timeout=10,
             what="second core queued")
    stopper = threading.Thread(target=agent.stop)
    stopper.start()
    # b is spooled by the stopping agent while a is still in flight
    wait_for(lambda: [p for p in (host / "spool").iterdir() if not p.name.endswith(".tmp")], 10)
    reap([b], timeout=10)
    assert stopper.is_alive() and a.poll() is None, "the agent must wait for the dump in flight"
    gate.release.set()
    stopper.join(60)
    assert not stopper.is_alive()
    reap([a], timeout=10)
    cores_a = node_cores(host, a.pid)
    assert len(cores_a) == 1, sorted(str(p) for p in host.rglob("*"))
    (core_a,) = cores_a
    check_elf_core(core_a.read_bytes())
    assert metadata(core_a)["truncated"] is False and metadata(core_a)["spool_reason"] is None
    (entry,) = list((host / "spool").iterdir())
    assert "agent stopped before this core's turn" in (entry / "reason").read_text()
    check_elf_core((entry / "core").read_bytes())
    assert (entry / "args").read_bytes().split(b"\0")[0] == str(b.pid).encode()
    assert Sysctl().read(CORE_PATTERN) == install.helper_pattern(s)  # never: kept

    nxt = Agent(s)
    wait_for(lambda: node_cores(host, b.pid), what="the core spooled at stop delivered")
    (core_b,) = node_cores(host, b.pid)
    check_elf_core(core_b.read_bytes())
    assert metadata(core_b)["truncated"] is False
    assert "agent stopped before this core's turn" in metadata(core_b)["spool_reason"]
    nxt.stop()


@pytest.mark.kernel
def test_a_dump_still_running_after_the_stop_timeout_is_cut_and_recorded(
        host: Path, bin_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Past stop_timeout_seconds the dump is cut: the process is released at once (not when
    the agent's process dies) and the crash is recorded with its outcome, not lost unmarked."""
    caplog.set_level(logging.INFO)
    s = agent_settings(host, bin_dir, restore_on_stop="never", stop_timeout_seconds=1)
    gate = Gate()
    agent = Agent(s, gate.factory)
    (a,) = start_sleepers(1)
    segv([a])
    assert gate.entered.wait(10)
    resume = threading.Timer(8.0, gate.release.set)  # the handler resumes long after the cut
    resume.start()
    stopper = threading.Thread(target=agent.stop)
    started = time.monotonic()
    stopper.start()
    reap([a], timeout=10)
    assert time.monotonic() - started < 6, "the cut did not release the crashing process"
    stopper.join(30)
    resume.cancel()
    gate.release.set()
    assert agent.registry.get_sample_value("coredump_agent_stop_cut_total") == 1
    wait_for(lambda: [r for r in caplog.records if r.getMessage() == "crash" and getattr(r, "global_pid", 0) == a.pid],
             timeout=10)
    (record,) = [r for r in caplog.records if r.getMessage() == "crash" and getattr(r, "global_pid", 0) == a.pid]
    assert record.outcome in ("failed", "partial"), record.__dict__
    # the reason is the stop, not a read error: the server says why it cut the pipe
    assert record.reason.startswith("agent_stopped"), record.reason


@pytest.mark.kernel
def test_the_real_process_on_sigterm_keeps_for_a_restart_and_restores_for_a_removal(
        host: Path, bin_dir: Path, tmp_path: Path) -> None:
    """`coredump agent run` as the DaemonSet runs it (the chart's environment variables), sent
    a real SIGTERM: the DaemonSet exists -> the pattern stays; it is gone -> restored."""
    import os
    import signal
    import sys

    original = Sysctl().read(CORE_PATTERN)
    s = agent_settings(host, bin_dir)
    pattern = install.helper_pattern(s)
    with FakeApiServer() as api:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "COREDUMP_"))}
        env.update(KUBECONFIG=str(api.kubeconfig(tmp_path / "kubeconfig", namespace=None, token="t0ken")),
                   COREDUMP_AGENT_RESTORE_ON_STOP="removed", COREDUMP_AGENT_DAEMONSET=DS,
                   COREDUMP_AGENT_HOST_DIR=str(host), COREDUMP_AGENT_HELPER_BINARY=str(bin_dir / "coredump-helper"),
                   COREDUMP_AGENT_METRICS_BIND="", COREDUMP_AGENT_WATCH_PODS="false", COREDUMP_AGENT_EVENTS="false",
                   COREDUMP_AGENT_SIGNATURES="false")
        cmd = [sys.executable, "-m", "webhook.cli", "agent", "run"]
        for answer, expected in (((200, "daemonset-get-200.json"), pattern), ((404, "daemonset-get-404.json"), original)):
            api.route("GET", DS_PATH, (answer[0], recorded(answer[1], "agent")))
            proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True)
            try:
                wait_for(lambda proc=proc: proc.poll() is not None or (
                    Sysctl().read(CORE_PATTERN) == pattern and (host / "agent.sock").exists()), what="agent serving")
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                proc.send_signal(signal.SIGTERM)
                _, err = proc.communicate(timeout=30)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            assert proc.returncode == 0, err
            assert Sysctl().read(CORE_PATTERN) == expected, err
            assert not (host / "agent.sock").exists()
        assert [s.path for s in api.seen("GET")] == [DS_PATH, DS_PATH]


def test_a_spooled_core_waiting_for_a_slot_at_stop_stays_in_the_spool(tmp_path: Path) -> None:
    """The drain does not count a stop as a failed delivery: the entry stays whole for the next
    agent (no attempts recorded, never set aside)."""
    from webhook.agent.server import AgentServer

    host = tmp_path / "h"
    entry = host / "spool" / "1795000000-4242"
    entry.mkdir(parents=True)
    (entry / "args").write_bytes(b"\0".join(b"4242 1 4242 1 11 1795000000 0 1 0 0 0 node sleep".split()) + b"\0")
    (entry / "core").write_bytes(b"\x7fELF" + b"\0" * 60)
    (entry / "reason").write_text("agent unreachable: connect: No such file or directory")
    handled: list[object] = []
    server = AgentServer(AgentSettings(host_dir=str(host), max_concurrent_dumps=1),
                         lambda request, fd: handled.append(request), registry=CollectorRegistry())
    assert server._slots.acquire(blocking=False)  # every slot busy: the drain waits for one
    server.start()
    wait_for(lambda: server.registry.get_sample_value("coredump_agent_dumps_queued") == 1, what="drain queued")
    server.stop(wait_seconds=1)
    wait_for(lambda: server.registry.get_sample_value("coredump_agent_dumps_queued") == 0, what="drain returned")
    assert handled == []
    assert sorted(p.name for p in entry.iterdir()) == ["args", "core", "reason"]  # no attempts, not set aside
    assert server.registry.get_sample_value("coredump_agent_spool_deliveries_total", {"result": "retry"}) == 1
