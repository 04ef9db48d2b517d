"""Shared fixtures: built static helpers, fetched tools, root/kernel gating, kernel settings.

Tests marked ``root`` or ``kernel`` are skipped only on a developer machine without root;
when ``CI=true`` they must run, so a missing privilege fails loudly instead of hiding.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

#: Kernel settings a crash test may change; every one is restored after each test.
KERNEL_SETTINGS = (
    "/proc/sys/kernel/core_pattern",
    "/proc/sys/kernel/core_pipe_limit",
    "/proc/sys/kernel/core_uses_pid",
    "/proc/sys/fs/suid_dumpable",
)
KERNEL_LOCK = "/run/lock/coredump-webhook-tests.kernel.lock"


def _is_root() -> bool:
    return os.geteuid() == 0


def pytest_runtest_setup(item: pytest.Item) -> None:
    if _is_root():
        return
    if item.get_closest_marker("root") or item.get_closest_marker("kernel"):
        if IN_CI:
            pytest.fail("this test needs root; with CI=true it may not be skipped")
        pytest.skip("needs root (runs in CI)")


def _cache_dir() -> Path:
    base = os.environ.get("COREDUMP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "coredump-webhook"
    )
    return Path(base)


@pytest.fixture(scope="session")
def bin_dir() -> Path:
    """Directory with the static ``coredump-wrapper`` and ``coredump-helper`` binaries.

    Uses ``COREDUMP_TEST_BIN_DIR`` (set by scripts/test.sh); otherwise builds them with the
    same script the Dockerfile uses.
    """
    env = os.environ.get("COREDUMP_TEST_BIN_DIR")
    out = Path(env) if env else _cache_dir() / "bin"
    subprocess.run(["sh", str(REPO / "webhook/native/build.sh"), str(out)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def arm64_bin_dir() -> Path:
    """The same static binaries cross-built for arm64 (``build.sh OUT --arch arm64``), run under
    qemu-user-static by tests/test_arm64.py."""
    which_or_fail("aarch64-linux-gnu-gcc")
    out = _cache_dir() / "bin-arm64"
    subprocess.run(["sh", str(REPO / "webhook/native/build.sh"), str(out), "--arch", "arm64"], check=True,
                   capture_output=True)
    return out


def _tool(env: str, sub: str) -> Path:
    path = os.environ.get(env) or str(_cache_dir() / "tools" / sub)
    if not os.access(path, os.X_OK):
        if IN_CI:
            pytest.fail(f"{path} missing: scripts/test.sh fetches it")
        pytest.skip(f"{path} missing: run scripts/test.sh once to fetch it")
    return Path(path)


@pytest.fixture(scope="session")
def helm() -> Path:
    return _tool("COREDUMP_TEST_HELM", "helm/helm")


@pytest.fixture(scope="session")
def kubectl() -> Path:
    return _tool("COREDUMP_TEST_KUBECTL", "kubectl/kubectl")


def which_or_fail(name: str) -> str:
    """A system binary the suite installs (scripts/test.sh); fail in CI, skip elsewhere."""
    path = shutil.which(name)
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} not installed: scripts/test.sh installs it")
        pytest.skip(f"{name} not installed")
    return path


@contextlib.contextmanager
def kernel_settings_guard():
    """Serialise crash tests across processes and restore every kernel setting afterwards."""
    os.makedirs(os.path.dirname(KERNEL_LOCK), exist_ok=True)
    with open(KERNEL_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        saved = {p: Path(p).read_text() for p in KERNEL_SETTINGS}
        try:
            yield saved
        finally:
            for path, value in saved.items():
                with open(path, "w") as f:
                    f.write(value.rstrip("\n") or "\n")
            for path, value in saved.items():
                assert Path(path).read_text() == value, f"{path} not restored"


@pytest.fixture
def kernel():
    """For ``kernel`` tests: exclusive use of kernel.core_pattern & co, restored afterwards."""
    if not _is_root():
        if IN_CI:
            pytest.fail("kernel tests need root in CI")
        pytest.skip("needs root")
    with kernel_settings_guard() as saved:
        yield saved


@pytest.fixture
def pod_api():
    """The API server's pods (list + watch) on a real socket: the agent's only source of pod names."""
    from tests.inspect_apiserver import FakeApiServer
    from tests.pod_api import PodApi

    with FakeApiServer() as server:
        yield PodApi(server)
