"""The static kernel helper and the agent's socket server, driven by hand (no core_pattern).

The helper is run exactly as the kernel would run it (absolute argv[0], the 13 arguments,
its stdin the core), against the real AgentServer; the kernel's own pipe is in
test_agent_kernel.py.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from tests.helper_support import (
    ARGV,
    CORE,
    Recorder,
    Req,
    log_lines,
    make_request,
    run_helper,
    settings_for,
    spool_entries,
)
from tests.suite_support import which_or_fail
from webhook.agent import install
from webhook.agent.endpoints import HealthServer, parse_bind
from webhook.agent.server import AgentServer, ServerOutcome
from webhook.agent.settings import AgentSettings


def write_config(settings: AgentSettings) -> None:
    Path(settings.host_dir, install.HELPER_CONFIG_NAME).write_text(install.helper_config(settings))


def test_hand_over_to_the_agent(host, serve):
    rec = Recorder()
    serve(settings_for(host), rec)
    res = run_helper(host, CORE)
    assert res.returncode == 0
    assert len(rec.seen) == 1
    req, data = rec.seen[0]
    assert req.argv == ARGV  # spaces inside an argument survive (one argv element each)
    assert not req.spooled
    assert data == CORE
    (line,) = log_lines(host)
    assert "result=handed pid=4242" in line and 'comm="crash me"' in line
    assert f"outcome=written size={len(CORE)} path=/cores/4242" in line
    assert spool_entries(host) == []


def test_agent_down_spools_then_drain_delivers(host, serve):
    res = run_helper(host, CORE)
    assert res.returncode == 0
    (entry,) = spool_entries(host)
    assert entry.name.endswith("-4242") and not entry.name.endswith(".tmp")
    assert (entry / "args").read_bytes() == b"\0".join(a.encode() for a in ARGV) + b"\0"
    assert (entry / "core").read_bytes() == CORE
    assert "agent unreachable: connect: No such file or directory" in (entry / "reason").read_text()
    assert "result=spooled pid=4242" in log_lines(host)[-1]
    # an incomplete entry (a helper still writing) is never delivered
    (host / "spool" / "1-99.tmp").mkdir()
    rec = Recorder()
    server = serve(settings_for(host), rec)
    deadline = time.monotonic() + 10
    while not rec.seen and time.monotonic() < deadline:  # the start-up drain
        time.sleep(0.05)
    assert server.drain_spool() == []
    req, data = rec.seen[0]
    assert req.spooled and req.argv == ARGV and data == CORE
    assert [p.name for p in spool_entries(host)] == ["1-99.tmp"]


def test_stale_socket_is_replaced_and_live_agent_refused(host, serve):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stale.bind(str(host / "agent.sock"))
    stale.close()  # left behind by a killed agent
    rec = Recorder()
    serve(settings_for(host), rec)
    assert oct((host / "agent.sock").stat().st_mode & 0o777) == "0o600"
    with pytest.raises(RuntimeError, match="already listening"):
        AgentServer(settings_for(host), rec, request_factory=make_request, registry=CollectorRegistry()).start()
    (host / "not-a-socket").write_text("x")
    with pytest.raises(RuntimeError, match="not a socket"):
        AgentServer._bind(str(host / "not-a-socket"))
    assert run_helper(host, b"abc").returncode == 0
    assert rec.seen[0][1] == b"abc"


def test_silent_agent_makes_the_helper_spool(host):
    """An agent that accepts but never ACKs: the helper spools after ack_timeout, core intact."""
    settings = settings_for(host, helper_timeout_seconds=0.5)
    write_config(settings)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(settings.socket_path)
    listener.listen(4)
    try:
        started = time.monotonic()
        res = run_helper(host, CORE)
        took = time.monotonic() - started
        assert res.returncode == 0
        conn, _ = listener.accept()
        # the hello arrived, then the helper gave up: the connection holds no fd, only EOF
        msg, fds, _, _ = socket.recv_fds(conn, 8192, 1)
        assert msg.startswith(b"CDH/1\0") and fds == []
        assert socket.recv_fds(conn, 8192, 1)[:2] == (b"", [])
        conn.close()
    finally:
        listener.close()
    assert 0.4 < took < 10
    (entry,) = spool_entries(host)
    assert (entry / "core").read_bytes() == CORE
    assert "no ACK from the agent: timed out" in (entry / "reason").read_text()


def test_the_spool_splices_then_punches_the_zero_blocks_after_the_release(host):
    """Agent unreachable: the helper splices the pipe into the spool, lets stdin go, then turns
    the zero 4 KiB blocks into holes: the same bytes, less disk (spool_usage counts blocks)."""
    zeros_between = os.urandom(4096) + bytes(2 << 20) + os.urandom(5000) + bytes(8192)
    core = CORE + zeros_between  # ends in zeros, not on a block boundary before them
    res = run_helper(host, core)
    assert res.returncode == 0
    (entry,) = spool_entries(host)
    spooled = entry / "core"
    assert spooled.read_bytes() == core
    zero_bytes = (1 << 20) + (2 << 20) + 8192 - 4096  # whole zero blocks (some straddle data)
    assert spooled.stat().st_blocks * 512 <= len(core) - zero_bytes + (64 << 10)
    assert "result=spooled " in log_lines(host)[-1]


def test_spool_limits_cut_or_skip_the_core(host):
    settings = settings_for(host, spool_max_bytes=1 << 20, spool_keep_free_bytes=0)
    write_config(settings)
    run_helper(host, CORE)
    (entry,) = spool_entries(host)
    core = (entry / "core").read_bytes()
    assert 0 < len(core) <= 1 << 20 and CORE.startswith(core)
    assert "core truncated at" in (entry / "reason").read_text() and "spool limit" in (entry / "reason").read_text()
    assert "result=spooled-truncated" in log_lines(host)[-1]
    # the spool is now full: the next crash keeps its args and the reason, not its core
    run_helper(host, CORE, argv=["5000", *ARGV[1:]])
    second = [e for e in spool_entries(host) if e.name.endswith("-5000")][0]
    assert not (second / "core").exists()
    assert (second / "args").read_bytes().startswith(b"5000\0")
    assert "spool full" in (second / "reason").read_text()
    assert "result=spooled-without-core" in log_lines(host)[-1]


def test_keep_free_floor_skips_the_core(host):
    write_config(settings_for(host, spool_keep_free_bytes=1 << 62))
    run_helper(host, CORE)
    (entry,) = spool_entries(host)
    assert not (entry / "core").exists() and "spool full" in (entry / "reason").read_text()


def test_concurrent_spools_get_distinct_entries(host):
    procs = [
        subprocess.Popen([str(host / "coredump-helper"), *ARGV], stdin=subprocess.PIPE, cwd="/", env={})
        for _ in range(4)
    ]
    for i, p in enumerate(procs):
        p.communicate(bytes([i]) * 1000, timeout=30)
    entries = spool_entries(host)
    assert len(entries) == 4
    assert sorted((e / "core").read_bytes()[0] for e in entries) == [0, 1, 2, 3]


def test_helper_log_rotates(host):
    write_config(settings_for(host, helper_log_max_bytes=300))
    for _ in range(6):
        run_helper(host, b"x")
    assert (host / "helper.log.1").exists()
    assert (host / "helper.log").stat().st_size < 1000
    assert all(line.count("result=spooled") == 1 for line in log_lines(host))


def test_drain_retries_then_sets_aside_and_rejects_bad_entries(host, serve):
    run_helper(host, b"core-bytes")
    bad = host / "spool" / "2-1"
    bad.mkdir()
    (bad / "args").write_bytes(b"only\0three\0args\0")
    noargs = host / "spool" / "3-1"
    noargs.mkdir()
    rec = Recorder(result="failed")
    server = AgentServer(settings_for(host), rec, request_factory=make_request, registry=CollectorRegistry())
    results = dict(server.drain_spool())
    assert results["2-1"] == "retry" and results["3-1"] == "bad"
    good = [n for n in results if n not in ("2-1", "3-1")][0]
    assert results[good] == "retry"
    assert dict(server.drain_spool())[good] == "retry"
    assert dict(server.drain_spool())[good] == "failed"
    names = {p.name for p in spool_entries(host)}
    assert names == {good + ".failed", "2-1.failed", "3-1.failed"}
    assert server.drain_spool() == []
    server.stop()


def test_dump_timeout_cuts_a_hung_handler_and_drops_the_pipe(host, serve):
    """The handler never reads: the agent drops its copy of the pipe, the writer sees EPIPE."""
    settings = settings_for(host, dump_timeout_seconds=1.0)
    write_config(settings)
    release = threading.Event()
    errors: list[str] = []

    def hung(request, fd):
        release.wait(30)
        try:
            os.read(fd, 10)
        except OSError as exc:
            errors.append(exc.strerror)
        return ServerOutcome("partial", "cut")

    server = serve(settings, hung, cut_margin_seconds=0, cut_grace_seconds=0.5)
    r, w = os.pipe()
    helper = subprocess.Popen([str(host / "coredump-helper"), *ARGV], stdin=r, cwd="/", env={})
    os.close(r)
    os.set_blocking(w, False)
    started = time.monotonic()
    broken = False
    while time.monotonic() - started < 15:
        try:
            os.write(w, b"x" * 65536)
        except BlockingIOError:
            time.sleep(0.05)
        except BrokenPipeError:
            broken = True  # no reader left: what the kernel sees, so it releases the process
            break
    took = time.monotonic() - started
    os.close(w)
    assert broken and 0.8 < took < 10
    assert helper.wait(30) == 0
    assert "outcome=failed" in log_lines(host)[-1] and "dump timeout (1s)" in log_lines(host)[-1]
    assert server.metrics.dump_timeouts._value.get() == 1
    release.set()
    deadline = time.monotonic() + 5
    while not errors and time.monotonic() < deadline:
        time.sleep(0.05)
    assert errors == ["Is a directory"]  # a clean error, never a short read taken for EOF


def test_concurrency_is_bounded(host, serve):
    rec = Recorder(delay=0.3)
    serve(settings_for(host, max_concurrent_dumps=2), rec)
    procs = [
        subprocess.Popen([str(host / "coredump-helper"), *ARGV], stdin=subprocess.PIPE, cwd="/", env={})
        for _ in range(5)
    ]
    # Every core is complete before waiting on any helper: the two slots may go to any two of
    # them, and a handler reads its core to EOF while the others queue for a slot.
    for i, p in enumerate(procs):
        p.stdin.write(bytes([i]) * 100)
        p.stdin.close()
    for p in procs:
        p.wait(timeout=60)
    assert len(rec.seen) == 5
    assert rec.max_active == 2
    assert sorted(d[0] for _, d in rec.seen) == [0, 1, 2, 3, 4]


def test_a_released_dump_frees_its_slot_while_it_finishes(host, serve):
    """The handler lets go of the pipe once the core is in the file (release_now): the server
    swaps the fd for a directory (the kernel would reap the process) and frees the dump slot,
    so the next queued core is read while the first is still being hashed."""
    from webhook.agent.release import release_now

    gate = threading.Event()
    seen: list[tuple[str, bool, str]] = []

    def handler(request: Req, fd: int) -> ServerOutcome:
        while os.read(fd, 1 << 20):
            pass
        released = release_now()
        try:
            os.read(fd, 1)
            after = "still the pipe"
        except IsADirectoryError:
            after = "directory"
        seen.append((request.argv[0], released, after))
        gate.wait(30)  # "hashing": the slot must not be held through this
        return ServerOutcome("written", "test", None, 0)

    serve(settings_for(host, max_concurrent_dumps=1), handler)
    procs = [subprocess.Popen([str(host / "coredump-helper"), str(4000 + i), *ARGV[1:]], stdin=subprocess.PIPE,
                              cwd="/", env={}) for i in range(2)]
    for p in procs:
        p.stdin.write(b"core")
        p.stdin.close()
    try:
        deadline = time.monotonic() + 15
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sorted(seen) == [("4000", True, "directory"), ("4001", True, "directory")]
    finally:
        gate.set()
        for p in procs:
            p.wait(timeout=30)


def test_garbage_from_a_client_does_not_hurt_the_server(host, serve, caplog):
    caplog.set_level(logging.INFO, logger="webhook.agent")
    rec = Recorder()
    server = serve(settings_for(host), rec)
    for payload in (b"hello", b"CDH/1\0no-terminator", b""):
        c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        c.connect(str(host / "agent.sock"))
        if payload:
            c.send(payload)
        c.close()
    # ACKed but then sends something else than the fd
    c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    c.connect(str(host / "agent.sock"))
    c.send(b"CDH/1\0" + b"\0".join(a.encode() for a in ARGV) + b"\0")
    assert c.recv(16) == b"ACK"
    c.send(b"NOPE")
    c.close()
    time.sleep(0.3)
    assert server.healthy
    assert run_helper(host, b"ok").returncode == 0
    assert rec.seen[-1][1] == b"ok"
    assert server.metrics.handovers.labels("protocol_error")._value.get() >= 2
    # each is the warning it should be, with what was received, never a failed connection's traceback
    unknown = [r for r in caplog.records if r.getMessage() == "unknown message from a helper; closing"]
    assert {r.received for r in unknown} >= {b"hello".hex(), b"CDH/1\0no-terminator".hex()}, caplog.text
    assert not [r for r in caplog.records if r.getMessage() == "helper connection failed"], caplog.text


def test_health_and_metrics_endpoint(host, serve):
    server = serve(settings_for(host), Recorder())
    http = HealthServer("127.0.0.1:0", lambda: server.healthy, server.registry)
    http.start()
    try:
        base = f"http://127.0.0.1:{http.port}"
        assert urllib.request.urlopen(base + "/healthz").read() == b"ok\n"
        run_helper(host, b"abc")
        body = urllib.request.urlopen(base + "/metrics").read().decode()
        assert 'coredump_agent_handovers_total{result="accepted"} 1.0' in body
        server.stop()
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + "/healthz")
        assert err.value.code == 503
    finally:
        http.stop()
    assert parse_bind(":9402") == ("0.0.0.0", 9402)
    with pytest.raises(ValueError):
        parse_bind("nope")


@pytest.mark.root
def test_helper_in_an_empty_chroot(host, serve, tmp_path):
    """No /proc, no /dev, no shell, no libc: only the static helper and the agent's socket."""
    chroot = which_or_fail("chroot")
    root = Path(tempfile.mkdtemp(prefix="cdr-"))
    try:
        hd = root / "hd"
        hd.mkdir()
        shutil.copy2(host / "coredump-helper", hd / "coredump-helper")
        core = tmp_path / "core"
        core.write_bytes(CORE)
        with open(core, "rb") as f:  # agent down: spools inside the chroot
            res = subprocess.run([chroot, str(root), "/hd/coredump-helper", *ARGV], stdin=f, env={}, timeout=60)
        assert res.returncode == 0
        (entry,) = spool_entries(hd)
        assert (entry / "core").read_bytes() == CORE
        assert sorted(p.name for p in root.iterdir()) == ["hd"]
        rec = Recorder()
        serve(settings_for(hd), rec)  # delivers the spooled core, then takes the next one live
        deadline = time.monotonic() + 10
        while len(rec.seen) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        with open(core, "rb") as f:
            res = subprocess.run([chroot, str(root), "/hd/coredump-helper", *ARGV], stdin=f, env={}, timeout=60)
        assert res.returncode == 0
        assert [(r.spooled, d == CORE) for r, d in rec.seen] == [(True, True), (False, True)]
        assert "result=handed" in log_lines(hd)[-1]
    finally:
        shutil.rmtree(root, ignore_errors=True)
