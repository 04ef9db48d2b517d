"""Shared fixtures: built static helpers, fetched tools, root/kernel gating, kernel settings,
the API server's pods; an area's own shared fixtures are in the ``tests/*_fixtures.py`` plugins
registered here. Test modules import neither: pytest hands fixtures to them by name. Plain
helpers are in ``tests/*_support.py`` (tests/test_test_layout.py holds the suite to this).

Tests marked ``root`` or ``kernel`` are skipped only on a developer machine without root;
when ``CI=true`` they must run, so a missing privilege fails loudly instead of hiding.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.suite_support import (
    IN_CI,
    REPO,
    cache_dir,
    is_root,
    kernel_settings_guard,
    tool,
    which_or_fail,
)

#: Fixtures of an area live in its own plugin module (never imported by a test module).
pytest_plugins = ["tests.agent_fixtures", "tests.e2e_fixtures"]

#: Support modules hold checks too: pytest rewrites their asserts as it does the tests' (the
#: failure shows the values). suite_support is imported above, before this could apply.
pytest.register_assert_rewrite(*sorted(f"tests.{p.stem}" for p in Path(__file__).parent.glob("*_support.py")
                                       if p.stem != "suite_support"))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if is_root():
        return
    if item.get_closest_marker("root") or item.get_closest_marker("kernel"):
        if IN_CI:
            pytest.fail("this test needs root; with CI=true it may not be skipped")
        pytest.skip("needs root (runs in CI)")


@pytest.fixture(scope="session")
def bin_dir() -> Path:
    """Directory with the static ``coredump-wrapper`` and ``coredump-helper`` binaries.

    Uses ``COREDUMP_TEST_BIN_DIR`` (set by scripts/test.sh); otherwise builds them with the
    same script the Dockerfile uses.
    """
    env = os.environ.get("COREDUMP_TEST_BIN_DIR")
    out = Path(env) if env else cache_dir() / "bin"
    subprocess.run(["sh", str(REPO / "webhook/native/build.sh"), str(out)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def arm64_bin_dir() -> Path:
    """The same static binaries cross-built for arm64 (``build.sh OUT --arch arm64``), run under
    qemu-user-static by tests/test_arm64.py."""
    which_or_fail("aarch64-linux-gnu-gcc")
    out = cache_dir() / "bin-arm64"
    subprocess.run(["sh", str(REPO / "webhook/native/build.sh"), str(out), "--arch", "arm64"], check=True,
                   capture_output=True)
    return out


@pytest.fixture(scope="session")
def helm() -> Path:
    return tool("COREDUMP_TEST_HELM", "helm/helm")


@pytest.fixture(scope="session")
def kubectl() -> Path:
    return tool("COREDUMP_TEST_KUBECTL", "kubectl/kubectl")


@pytest.fixture
def kernel():
    """For ``kernel`` tests: exclusive use of kernel.core_pattern & co, restored afterwards."""
    if not is_root():
        if IN_CI:
            pytest.fail("kernel tests need root in CI")
        pytest.skip("needs root")
    with kernel_settings_guard() as saved:
        yield saved


@pytest.fixture
def pod_api():
    """The API server's pods (list + watch) on a real socket: the agent's only source of pod names."""
    from tests.kube_apiserver import FakeApiServer
    from tests.pod_api import PodApi

    with FakeApiServer() as server:
        yield PodApi(server)
