"""A host directory the kernel cannot execute from (noexec), for real: a noexec tmpfs mounted at
the test's default host directory.

First the failure it prevents, performed: the kernel pointed at a helper on a noexec mount never
runs it (the core is lost without a trace). Then the real ``coredump agent run`` against such a
directory: it refuses to install, names the fix, changes nothing (kernel settings, the directory),
reports not ready on /healthz (live on /livez) and, stopped, restores nothing.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.crash_support import reap, segv, start_sleepers
from tests.e2e_support import read_kernel
from tests.process_support import coredump_command, free_port, wait_for
from tests.suite_support import KERNEL_SETTINGS
from webhook.agent import hostdir

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]


def _mount_tmpfs(path: Path, *options: str) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(["size=64m", "mode=0755", *options]), "cdw-test", str(path)],
                   check=True)


@pytest.fixture
def noexec_dir() -> Iterator[Path]:
    """A short temporary directory (the test's default host dir) with a noexec tmpfs on it."""
    d = Path(tempfile.mkdtemp(prefix="cdx-"))
    _mount_tmpfs(d, "noexec", "nosuid", "nodev")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def exec_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="cdy-"))
    _mount_tmpfs(d)
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)
        shutil.rmtree(d, ignore_errors=True)


def tree(d: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(d)), p.stat().st_mode, p.stat().st_size) for p in d.rglob("*"))


# --- the failure the check prevents ------------------------------------------------------------
@pytest.mark.kernel
def test_the_kernel_never_runs_a_helper_on_a_noexec_mount(kernel, bin_dir, noexec_dir, exec_dir):
    """Same helper, same pattern, two tmpfs mounts: only the exec one ever receives a core."""
    got = {}
    for d in (noexec_dir, exec_dir):
        shutil.copy2(bin_dir / "coredump-helper", d / "coredump-helper")
        Path(KERNEL_SETTINGS[1]).write_text("4")
        Path(KERNEL_SETTINGS[0]).write_text(f"|{d}/coredump-helper %P %p %I %i %s %t %c %d %C %u %g %h %e")
        procs = start_sleepers(1)
        segv(procs)
        reap(procs)
        if d == exec_dir:  # the helper spools it (no agent listens)
            wait_for(lambda d=d: [p for p in (d / "spool").glob("*") if not p.name.endswith(".tmp")], 10, "a spool entry")
        else:
            time.sleep(0.5)
        got[d] = sorted(p.name for p in d.iterdir())
    assert got[noexec_dir] == ["coredump-helper"], "the kernel ran a helper from a noexec mount"
    assert {"helper.log", "spool"} <= set(got[exec_dir])


# --- the agent refuses it ----------------------------------------------------------------------
def test_check_finds_the_noexec_mount_for_a_directory_still_to_be_made(noexec_dir, exec_dir, tmp_path):
    found = hostdir.check_executable(str(noexec_dir / "sub" / "coredump-webhook"), host_root=str(tmp_path))
    assert found is not None and found.mount_point == str(noexec_dir) and found.os_id == ""
    assert hostdir.check_executable(str(exec_dir / "sub")) is None
    assert not (noexec_dir / "sub").exists()  # looking creates nothing
    generic = found.message()
    assert "noexec mount" in generic and "--host-dir" in generic
    assert "values-gke-cos.yaml" in generic and "values-bottlerocket.yaml" in generic
    # the node's OS (its os-release through /proc/1/root with hostPID) picks the one overlay to use
    for os_id, overlay, other in (("cos", "values-gke-cos.yaml", "values-bottlerocket.yaml"),
                                  ("bottlerocket", "values-bottlerocket.yaml", "values-gke-cos.yaml")):
        root = tmp_path / os_id
        (root / "etc").mkdir(parents=True)
        (root / "etc" / "os-release").write_text(f'NAME="x"\nID={os_id}\nVERSION_ID="1"\n')
        found = hostdir.check_executable(str(noexec_dir), host_root=str(root))
        assert found.os_id == os_id
        assert overlay in found.message() and other not in found.message()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.mark.kernel
def test_agent_refuses_a_noexec_host_dir_reports_not_ready_and_changes_nothing(kernel, bin_dir, noexec_dir):
    Path(KERNEL_SETTINGS[0]).write_text("core-before-%p")  # a distinctive original to keep
    before_kernel = read_kernel()
    (noexec_dir / "keep.txt").write_text("someone else's file\n")
    before_tree = tree(noexec_dir)
    port = free_port()
    log = noexec_dir.parent / (noexec_dir.name + ".log")
    cmd = [*coredump_command(), "agent", "run", "--host-dir", str(noexec_dir), "--helper-binary",
           str(bin_dir / "coredump-helper"), "--node-name", "node-noexec", "--metrics-bind", f"127.0.0.1:{port}",
           "--no-events", "--no-watch-pods", "--no-signatures"]
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: proc.poll() is not None or _ready_answer(port), 20, "the agent's /healthz")
        assert proc.poll() is None, log.read_text()
        code, body = _get(f"http://127.0.0.1:{port}/healthz")
        assert code == 503
        assert body.startswith("not ready: host directory ") and f"noexec mount ({noexec_dir})" in body
        assert "Nothing was installed and the kernel settings are unchanged" in body
        assert _get(f"http://127.0.0.1:{port}/livez") == (200, "ok\n")  # up: a restart would not help
        records = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
        (err,) = [r for r in records if r.get("message") == "helper not installed: host directory not executable"]
        assert err["levelname" if "levelname" in err else "level"].lower() == "error"
        assert "values-gke-cos.yaml" in err["reason"] and err["host_dir"] == str(noexec_dir)
        assert read_kernel() == before_kernel
        assert tree(noexec_dir) == before_tree  # no helper, no config, no backup, no spool
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.unlink(missing_ok=True)
    assert read_kernel() == before_kernel  # restored nothing: it had changed nothing
    assert tree(noexec_dir) == before_tree
    # run by hand without an HTTP endpoint, it fails loudly instead (nothing would report it)
    res = subprocess.run([*cmd[:-5], "--metrics-bind", "", "--no-events", "--no-watch-pods", "--no-signatures"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "noexec mount" in res.stderr
    assert read_kernel() == before_kernel and tree(noexec_dir) == before_tree


def _ready_answer(port: int) -> bool:
    try:
        return _get(f"http://127.0.0.1:{port}/healthz")[0] in (200, 503)
    except OSError:
        return False
