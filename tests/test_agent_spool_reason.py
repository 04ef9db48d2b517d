"""Why a core was spooled reaches its metadata: the static helper writes the reason into the
spool entry, the agent's drain hands it to CrashProcessor, ``<core>.json`` says it.

The first test runs the real helper by hand (no agent listening, so it spools); the second
goes through the kernel's own core pipe (``kernel`` marker)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

import pytest
import xxhash
from prometheus_client import CollectorRegistry

from tests.crash_support import check_elf_core, spooled_crash
from tests.helper_support import ARGV, run_helper, settings_for, spool_entries
from tests.process_support import wait_for
from webhook.agent import install
from webhook.agent.crash import CrashProcessor
from webhook.agent.crash_request import CrashRequest
from webhook.agent.metrics import AgentMetrics
from webhook.agent.server import AgentServer, _with_spool_reason, crash_request

pytestmark = pytest.mark.timeout(120)


def processor_for(settings) -> CrashProcessor:
    return CrashProcessor(settings, None, events=False, notifier=False, signatures=False, metrics=AgentMetrics(CollectorRegistry()))


def metadata_files(cores: Path) -> list[Path]:
    """Committed ``<core>.json`` files (not the writer's hidden temporary ones)."""
    return [p for p in cores.rglob("*.json") if not p.name.startswith(".")]


def only_core(cores: Path) -> tuple[Path, dict]:
    (meta_path,) = metadata_files(cores)
    return meta_path.with_suffix(""), json.loads(meta_path.read_text())


@pytest.mark.parametrize("algorithm", ["xxh128", "sha256"])
def test_spool_reason_reaches_the_metadata(host, algorithm):
    """The agent delivering a spooled core hashes it with its ``digest`` setting, as a live one."""
    core = os.urandom(300_000) + bytes(200_000)
    argv = ["999999999", *ARGV[1:]]  # a PID that cannot exist: the process is long gone
    assert run_helper(host, core, argv).returncode == 0  # no agent: the helper spools
    (entry,) = spool_entries(host)
    reason = (entry / "reason").read_text().strip()
    assert reason.startswith("agent unreachable")
    settings = settings_for(host, keep_free_bytes=0, unregistered="skip", digest=algorithm)
    server = AgentServer(settings, processor_for(settings).handle, request_factory=crash_request,
                         registry=CollectorRegistry())
    try:
        assert dict(server.drain_spool()) == {entry.name: "delivered"}
    finally:
        server.stop()
    core_path, meta = only_core(Path(settings.node_cores_dir))
    assert core_path.read_bytes() == core
    assert meta["spool_reason"] == reason and meta["identification"] == "spooled"
    h = xxhash.xxh3_128() if algorithm == "xxh128" else hashlib.sha256()
    h.update(core)
    assert meta["digest"] == f"{algorithm}:{h.hexdigest()}" and not meta["truncated"]
    assert spool_entries(host) == []


def test_a_core_handed_over_live_has_no_spool_reason(tmp_path):
    request = CrashRequest.from_argv(list(ARGV))
    assert request.spool_reason == "" and not request.spooled
    # only spooled deliveries get one, and only requests with the field
    assert _with_spool_reason(request, "").spool_reason == ""
    assert _with_spool_reason(request, "no ACK").spool_reason == "no ACK"
    assert _with_spool_reason(("not", "a", "dataclass"), "no ACK") == ("not", "a", "dataclass")


@pytest.mark.kernel
def test_kernel_crash_while_the_agent_is_down_says_why_in_its_metadata(agent_env):  # noqa: F811
    host, settings, serve = agent_env
    s = settings(keep_free_bytes=0, unregistered="node")
    install.install(s)  # the pattern points at the helper, but no agent listens
    proc, entry = spooled_crash(host)
    reason = (entry / "reason").read_text().strip()
    serve(s, processor_for(s).handle)  # drains the spool at start
    wait_for(lambda: metadata_files(Path(s.node_cores_dir)))
    core_path, meta = only_core(Path(s.node_cores_dir))
    data = core_path.read_bytes()
    check_elf_core(data)
    assert meta["spool_reason"] == reason and "agent unreachable" in reason
    assert meta["global_pid"] == proc.pid and meta["signal"] == signal.SIGSEGV
    assert meta["digest"] == "xxh128:" + xxhash.xxh3_128(data).hexdigest() and meta["size"] == len(data)
    wait_for(lambda: not list((host / "spool").iterdir()))
