"""Kernel settings: backup once, apply, restore exactly; install/uninstall; the agent's CLI.

Pure tests run against a sysctl tree in a temp dir (same file layout as /proc/sys); the ones
marked ``kernel`` use the real /proc/sys through the ``kernel`` fixture, which restores it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from tests.process_support import free_port, wait_for
from webhook.agent import install
from webhook.agent.commands import agent as agent_cli
from webhook.agent.commands import run_agent
from webhook.agent.settings import AgentSettings
from webhook.agent.sysctl import (
    CORE_PATTERN,
    CORE_PIPE_LIMIT,
    CORE_USES_PID,
    KERNEL_DEFAULT_PATTERN,
    SETTINGS,
    SUID_DUMPABLE,
    KernelSettings,
    Sysctl,
    SysctlError,
    is_our_pattern,
)

REPO = Path(__file__).resolve().parent.parent
ORIGINALS = {
    CORE_PATTERN: "|/usr/lib/systemd/systemd-coredump %P %u %g %s %t %c %h",
    CORE_PIPE_LIMIT: "0",
    CORE_USES_PID: "1",
    SUID_DUMPABLE: "2",
}


def fake_proc_sys(root: Path, values: dict[str, str] = ORIGINALS) -> Sysctl:
    for name, value in values.items():
        path = root.joinpath(*name.split("."))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
    return Sysctl(str(root))


def current(sysctl: Sysctl) -> dict[str, str]:
    return {name: sysctl.read(name) for name in SETTINGS}


@pytest.fixture
def short_tmp():
    """A short temp dir: the helper path goes into the 127-character core_pattern."""
    d = tempfile.mkdtemp(prefix="cdh-")
    yield Path(d)
    subprocess.run(["rm", "-rf", d], check=False)


def agent_settings(host: Path, sysctl_root: str, helper: Path, **kw) -> AgentSettings:
    return AgentSettings(
        host_dir=str(host), sysctl_root=sysctl_root, helper_binary=str(helper), metrics_bind="", **kw
    )


# --- sysctl ---------------------------------------------------------------------------------
def test_read_write_roundtrip_keeps_spaces_and_empty(tmp_path):
    s = fake_proc_sys(tmp_path)
    assert s.read(CORE_PATTERN) == ORIGINALS[CORE_PATTERN]
    s.write(CORE_PATTERN, "core.%p ")
    assert s.read(CORE_PATTERN) == "core.%p "
    s.write(CORE_PATTERN, "")
    assert s.read(CORE_PATTERN) == ""
    with pytest.raises(SysctlError, match="newline"):
        s.write(CORE_PATTERN, "a\nb")
    with pytest.raises(SysctlError, match="not a setting"):
        s.read("kernel.hostname")


def test_missing_sysctl_is_a_clear_error(tmp_path):
    with pytest.raises(SysctlError, match="cannot read kernel.core_pattern"):
        Sysctl(str(tmp_path)).read(CORE_PATTERN)


def test_is_our_pattern():
    assert is_our_pattern("|/var/lib/coredump-webhook/coredump-helper %P %p")
    assert is_our_pattern("|/other/dir/coredump-helper")
    assert not is_our_pattern("|/usr/lib/systemd/systemd-coredump %P")
    assert not is_our_pattern("/var/lib/coredump-webhook/coredump-helper")
    assert not is_our_pattern("core")


def test_backup_written_once_then_restored_exactly(tmp_path):
    s = fake_proc_sys(tmp_path / "sys")
    ks = KernelSettings(s, str(tmp_path / "host" / "sysctl-backup.json"))
    with pytest.raises(SysctlError, match="backed up"):
        ks.apply({CORE_PIPE_LIMIT: "16"})
    ks.save()
    ks.apply({CORE_PATTERN: "|/h/coredump-helper %P", CORE_PIPE_LIMIT: "32", SUID_DUMPABLE: "1"})
    # a restarted agent saves again: the originals stay, not our own pattern
    again = KernelSettings(s, ks.backup_path).save()
    assert again.values == ORIGINALS
    assert json.loads(Path(ks.backup_path).read_text())["values"] == ORIGINALS
    assert oct(os.stat(ks.backup_path).st_mode & 0o777) == "0o600"
    assert ks.restore() == ORIGINALS
    assert current(s) == ORIGINALS
    assert not os.path.exists(ks.backup_path)
    assert ks.restore() is None  # idempotent (preStop, then the agent's own stop)


def test_our_pattern_without_backup_is_never_saved_as_original(tmp_path):
    s = fake_proc_sys(tmp_path / "sys", {**ORIGINALS, CORE_PATTERN: "|/old/coredump-helper %P %p"})
    ks = KernelSettings(s, str(tmp_path / "b.json"))
    backup = ks.save()
    assert backup.values[CORE_PATTERN] == KERNEL_DEFAULT_PATTERN
    assert backup.pattern_guessed
    ks.restore()
    assert s.read(CORE_PATTERN) == KERNEL_DEFAULT_PATTERN


def test_restore_leaves_a_pattern_someone_else_set(tmp_path):
    s = fake_proc_sys(tmp_path / "sys")
    ks = KernelSettings(s, str(tmp_path / "b.json"))
    ks.save()
    ks.apply({CORE_PATTERN: "|/h/coredump-helper %P", CORE_PIPE_LIMIT: "32"})
    s.write(CORE_PATTERN, "|/usr/share/apport/apport %p")  # another tool took over meanwhile
    restored = ks.restore()
    assert CORE_PATTERN not in restored
    assert s.read(CORE_PATTERN) == "|/usr/share/apport/apport %p"
    assert s.read(CORE_PIPE_LIMIT) == ORIGINALS[CORE_PIPE_LIMIT]


def test_corrupt_backup_is_a_clear_error_and_kept(tmp_path):
    s = fake_proc_sys(tmp_path / "sys")
    path = tmp_path / "b.json"
    path.write_text("{not json")
    with pytest.raises(SysctlError, match="not a valid backup"):
        KernelSettings(s, str(path)).restore()
    assert path.exists()
    path.write_text(json.dumps({"version": 1, "values": {"kernel.hostname": "x"}}))
    with pytest.raises(SysctlError, match="unknown settings"):
        KernelSettings(s, str(path)).save()


def test_failed_restore_keeps_the_backup(tmp_path):
    s = fake_proc_sys(tmp_path / "sys")
    ks = KernelSettings(s, str(tmp_path / "b.json"))
    ks.save()
    os.unlink(s.path(SUID_DUMPABLE))
    os.mkdir(s.path(SUID_DUMPABLE))  # writing it now fails
    with pytest.raises(SysctlError, match="fs.suid_dumpable"):
        ks.restore()
    assert os.path.exists(ks.backup_path)
    assert s.read(CORE_PATTERN) == ORIGINALS[CORE_PATTERN]  # the others were still restored


# --- install ---------------------------------------------------------------------------------
def test_helper_pattern_fits_and_fails_clearly(short_tmp):
    s = AgentSettings(host_dir=str(short_tmp))
    pattern = install.helper_pattern(s)
    assert pattern.startswith(f"|{short_tmp}/coredump-helper %P %p ")
    assert pattern.split(" ")[1:] == list(install.helper_args())
    assert len(pattern) <= 127
    with pytest.raises(install.InstallError, match="allows 127"):
        install.helper_pattern(AgentSettings(host_dir="/" + "x" * 100))
    with pytest.raises(install.InstallError, match="space"):
        install.helper_pattern(AgentSettings(host_dir="/var/lib/my dir"))
    with pytest.raises(install.InstallError, match="absolute"):
        install.helper_pattern(AgentSettings(host_dir="rel"))
    on_host = AgentSettings(host_dir="/host/var/lib/cw", host_dir_on_host="/var/lib/cw")
    assert install.helper_pattern(on_host).startswith("|/var/lib/cw/coredump-helper ")


def test_helper_config_values():
    cfg = install.helper_config(
        AgentSettings(helper_timeout_seconds=2.5, dump_timeout_seconds=10, spool_max_bytes=123, helper_log_max_bytes=9)
    )
    lines = dict(line.split("=", 1) for line in cfg.splitlines() if "=" in line and not line.startswith("#"))
    assert lines["ack_timeout_ms"] == "2500"
    assert lines["outcome_timeout_ms"] == str((10 + install.OUTCOME_GRACE_SECONDS) * 1000)
    assert lines["spool_max_bytes"] == "123"
    assert lines["log_max_bytes"] == "9"


def test_install_and_uninstall_against_a_fake_tree(short_tmp, bin_dir):
    s = fake_proc_sys(short_tmp / "sys")
    settings = agent_settings(short_tmp / "host", str(short_tmp / "sys"), bin_dir / "coredump-helper",
                              core_pipe_limit=4, suid_dumpable=2)
    (short_tmp / "host").mkdir()
    (short_tmp / "host" / "agent.sock").write_text("")  # removed by uninstall
    done = install.install(settings)
    assert done.previous_pattern == ORIGINALS[CORE_PATTERN]
    helper = Path(settings.helper_path)
    assert helper.read_bytes() == (bin_dir / "coredump-helper").read_bytes()
    assert helper.stat().st_mode & 0o777 == 0o755
    assert (short_tmp / "host" / "helper.conf").read_text().startswith("#")
    assert s.read(CORE_PATTERN) == install.helper_pattern(settings)
    assert s.read(CORE_PIPE_LIMIT) == "16"  # raised to the floor
    assert s.read(SUID_DUMPABLE) == "2"
    assert s.read(CORE_USES_PID) == ORIGINALS[CORE_USES_PID]
    assert not list((short_tmp / "host").glob("*.tmp*"))
    install.install(settings)  # a second install (restart) keeps the originals
    assert install.uninstall(settings) == ORIGINALS
    assert current(s) == ORIGINALS
    assert not (short_tmp / "host" / "agent.sock").exists()
    assert install.uninstall(settings) is None


def test_install_fails_before_changing_anything(short_tmp):
    s = fake_proc_sys(short_tmp / "sys")
    settings = agent_settings(short_tmp / "host", str(short_tmp / "sys"), short_tmp / "missing-helper")
    with pytest.raises(install.InstallError, match="not found"):
        install.install(settings)
    assert current(s) == ORIGINALS
    assert not (short_tmp / "host" / install.BACKUP_NAME).exists()


# --- the agent's commands ---------------------------------------------------------------------
def test_uninstall_command_is_idempotent(short_tmp):
    s = fake_proc_sys(short_tmp / "sys")
    ks = KernelSettings(s, str(short_tmp / "host" / "sysctl-backup.json"))
    ks.save()
    ks.apply({CORE_PATTERN: "|/h/coredump-helper %P"})
    runner = CliRunner()
    args = ["uninstall", "--host-dir", str(short_tmp / "host"), "--sysctl-root", str(short_tmp / "sys")]
    first = runner.invoke(agent_cli, args)
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout.splitlines()[-1])["restored"] == ORIGINALS
    assert current(s) == ORIGINALS
    second = runner.invoke(agent_cli, args)
    assert second.exit_code == 0 and json.loads(second.stdout.splitlines()[-1]) == {"restored": None}
    env = {"COREDUMP_AGENT_HOST_DIR": str(short_tmp / "nothing"), "COREDUMP_AGENT_SYSCTL_ROOT": str(short_tmp / "sys")}
    assert runner.invoke(agent_cli, ["uninstall"], env=env).exit_code == 0


def _noop_handler_factory(settings, previous):
    def handle(request, fd):
        while os.read(fd, 1 << 20):
            pass
        return type("O", (), {"outcome": "written", "reason": "", "path": None, "size": 0})()

    return handle


@contextlib.contextmanager
def agent_thread(settings: AgentSettings) -> Iterator[threading.Thread]:
    """``run_agent`` (no-op handler, its own registry) in a thread; stopped when the block ends."""
    stop = threading.Event()
    t = threading.Thread(
        target=run_agent,
        args=(settings, stop),
        kwargs={"handler_factory": _noop_handler_factory, "registry": CollectorRegistry()},
    )
    t.start()
    try:
        yield t
    finally:
        stop.set()
        t.join(30)


def test_run_agent_restores_on_stop(short_tmp, bin_dir):
    s = fake_proc_sys(short_tmp / "sys")
    settings = agent_settings(short_tmp / "host", str(short_tmp / "sys"), bin_dir / "coredump-helper")
    with agent_thread(settings) as t:
        wait_for(lambda: s.read(CORE_PATTERN) == install.helper_pattern(settings), 15)
        assert os.path.exists(settings.socket_path)
        assert os.stat(settings.socket_path).st_mode & 0o777 == 0o600
    assert not t.is_alive()
    assert current(s) == ORIGINALS
    assert not os.path.exists(settings.socket_path)


def test_a_second_agent_on_the_same_host_dir_changes_nothing(short_tmp, bin_dir):
    s = fake_proc_sys(short_tmp / "sys")
    settings = agent_settings(short_tmp / "host", str(short_tmp / "sys"), bin_dir / "coredump-helper")
    with agent_thread(settings):
        wait_for(lambda: s.read(CORE_PATTERN) == install.helper_pattern(settings), 15)
        with pytest.raises(RuntimeError, match="already listening"):
            run_agent(settings, threading.Event(), handler_factory=_noop_handler_factory, registry=CollectorRegistry())
        # the live agent's pattern, backup and socket are untouched
        assert s.read(CORE_PATTERN) == install.helper_pattern(settings)
        assert Path(settings.host_dir, install.BACKUP_NAME).exists()
        assert os.path.exists(settings.socket_path)
    assert current(s) == ORIGINALS


def agent_process(settings: AgentSettings, log_path: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    """``coredump agent run`` as a real process (its own signal handling, its own finally);
    its JSON log goes to ``log_path``."""
    env = dict(os.environ)
    env.update(extra_env or {})
    args = [
        sys.executable, "-m", "webhook.cli", "agent", "run",
        "--host-dir", settings.host_dir,
        "--sysctl-root", settings.sysctl_root,
        "--helper-binary", settings.helper_binary,
        "--metrics-bind", settings.metrics_bind,
        "--node-name", "test-node",
    ]
    with open(log_path, "wb") as log:
        return subprocess.Popen(args, env=env, cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=log)


def serving(log_path: Path) -> bool:
    return log_path.exists() and '"agent serving"' in log_path.read_text()


def _kill9_then_restart_then_stop(s: Sysctl, originals: dict[str, str], settings: AgentSettings) -> None:
    ours = install.helper_pattern(settings)
    logs_dir = Path(settings.host_dir).parent
    first = agent_process(settings, logs_dir / "first.log")
    try:
        wait_for(lambda: serving(logs_dir / "first.log"), 60)
        assert s.read(CORE_PATTERN) == ours
    finally:
        first.kill()
        first.wait(timeout=30)
    # killed: nothing restored, the backup still holds the originals
    assert s.read(CORE_PATTERN) == ours
    backup = json.loads(Path(settings.host_dir, install.BACKUP_NAME).read_text())
    assert backup["values"] == originals
    second = agent_process(settings, logs_dir / "second.log")
    try:
        wait_for(lambda: serving(logs_dir / "second.log"), 60)
        assert s.read(CORE_PATTERN) == ours
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=60)
    err = (logs_dir / "second.log").read_text()
    assert second.returncode == 0, err
    logs = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(entry["message"] == "kernel settings restored on stop" for entry in logs)
    assert current(s) == originals
    assert not Path(settings.host_dir, install.BACKUP_NAME).exists()


def test_agent_process_kill9_restart_stop_restores_originals_fake_tree(short_tmp, bin_dir):
    s = fake_proc_sys(short_tmp / "sys")
    settings = agent_settings(short_tmp / "host", str(short_tmp / "sys"), bin_dir / "coredump-helper")
    _kill9_then_restart_then_stop(s, ORIGINALS, settings)


@pytest.mark.kernel
def test_agent_process_kill9_restart_stop_restores_real_kernel(kernel, short_tmp, bin_dir):
    s = Sysctl("/proc/sys")
    originals = current(s)
    assert not is_our_pattern(originals[CORE_PATTERN])
    settings = agent_settings(short_tmp / "host", "/proc/sys", bin_dir / "coredump-helper")
    _kill9_then_restart_then_stop(s, originals, settings)


def test_run_agent_serves_health_metrics_and_trims_the_node_location(short_tmp, bin_dir):
    import urllib.request

    s = fake_proc_sys(short_tmp / "sys")
    port = free_port()
    settings = AgentSettings(
        host_dir=str(short_tmp / "host"), sysctl_root=str(short_tmp / "sys"),
        helper_binary=str(bin_dir / "coredump-helper"), metrics_bind=f"127.0.0.1:{port}",
        retention_max_age_seconds=3600,
    )
    old = Path(settings.node_cores_dir) / "host" / "core.sleep.1.1"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"old core")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    with agent_thread(settings):
        wait_for(lambda: s.read(CORE_PATTERN) == install.helper_pattern(settings), 15)
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read() == b"ok\n"
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "coredump_agent_dumps_in_progress 0.0" in body
        wait_for(lambda: not old.exists(), 15)
    assert current(s) == ORIGINALS
