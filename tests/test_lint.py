"""Lint and types are part of the suite: `ruff check` and `mypy` (configured in pyproject.toml)
at zero findings, so a change that adds one fails where every other regression fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.timeout(240)


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=220)


def test_ruff_finds_nothing() -> None:
    res = _run(str(BIN / "ruff"), "check", "--no-cache", "--output-format", "concise",
               "webhook", "certs", "tests", "benchmarks", "scripts")
    assert res.returncode == 0, res.stdout + res.stderr


def test_mypy_finds_nothing() -> None:
    # The configuration (files, strictness) lives in pyproject.toml; no incremental cache in the tree.
    res = _run(str(BIN / "mypy"), "--no-incremental", "--cache-dir", "/dev/null")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Success: no issues found" in res.stdout, res.stdout
