"""The suite's environment: the repository, CI gating, cached tools, the kernel settings lock.

Plain helpers for conftest.py and the support modules (fixtures live in conftest.py).
"""

from __future__ import annotations

import ast
import contextlib
import fcntl
import os
import shutil
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


def is_root() -> bool:
    return os.geteuid() == 0


def cache_dir() -> Path:
    base = os.environ.get("COREDUMP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "coredump-webhook"
    )
    return Path(base)


def tool(env: str, sub: str) -> Path:
    path = os.environ.get(env) or str(cache_dir() / "tools" / sub)
    if not os.access(path, os.X_OK):
        if IN_CI:
            pytest.fail(f"{path} missing: scripts/test.sh fetches it")
        pytest.skip(f"{path} missing: run scripts/test.sh once to fetch it")
    return Path(path)


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


def imports_of(path: Path) -> set[str]:
    """Every absolute import of a module, top level and inside functions: ``import a.b`` gives
    ``a.b``; ``from a import b`` gives ``a`` and ``a.b`` (b may be a module or a name)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names
