"""The suite's own layout: shared fixtures come from conftest.py (and the ``*_fixtures.py`` plugins it
registers), shared helpers from ``*_support.py`` modules; no module imports a test module, conftest
or a fixtures plugin, so every test module can be read, run and moved on its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def _imported(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every import in ``tree``, at any depth; ``from tests import x`` gives tests.x."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from .test_x import y
                base = ".".join(["tests", *(node.module.split(".") if node.module else [])])
            else:
                base = node.module or ""
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names if base == "tests"]
    return out


def forbidden_imports(path: Path) -> list[str]:
    """This file's imports of a test module, conftest or a fixtures plugin (``tests.<name>``)."""
    bad = []
    for line, module in _imported(ast.parse(path.read_text(), str(path))):
        parts = module.split(".")
        if len(parts) < 2 or parts[0] != "tests":
            continue
        name = parts[1]
        if name.startswith("test_") or name == "conftest" or name.endswith("_fixtures"):
            bad.append(f"{path.name}:{line} imports {module}")
    return bad


def suite_modules() -> list[Path]:
    return sorted(p for p in TESTS.glob("*.py") if p.name != "conftest.py")


def test_the_suite_has_modules_to_check():
    names = {p.name for p in suite_modules()}
    assert {"test_e2e.py", "test_agent_crash.py", "agent_support.py", "e2e_support.py"} <= names


@pytest.mark.parametrize("path", suite_modules(), ids=lambda p: p.name)
def test_no_module_imports_a_test_module_conftest_or_fixtures(path: Path):
    assert forbidden_imports(path) == []


def test_the_check_finds_every_form(tmp_path: Path):
    """The check itself: each way of importing another test module is caught, support modules are not."""
    sample = tmp_path / "test_sample.py"
    sample.write_text(
        "import tests.test_e2e\n"
        "from tests.test_e2e import running_agent\n"
        "from tests import test_helper, agent_support\n"
        "from tests.conftest import which_or_fail\n"
        "from .test_wrapper import PROBE_C\n"
        "from tests.agent_fixtures import k8s_cgroup\n"
        "def f():\n"
        "    from tests.test_agent_crash import known_pod\n"
        "from tests.agent_support import known_pod\n"
        "from tests.suite_support import REPO\n"
    )
    found = forbidden_imports(sample)
    assert [f.split(" imports ")[1] for f in found] == [
        "tests.test_e2e", "tests.test_e2e", "tests.test_helper", "tests.conftest", "tests.test_wrapper",
        "tests.agent_fixtures", "tests.test_agent_crash"]


def test_fixture_plugins_are_registered_by_conftest():
    """Every ``*_fixtures.py`` is a plugin conftest.py registers (else its fixtures would be missing)."""
    tree = ast.parse((TESTS / "conftest.py").read_text())
    (plugins,) = [ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                  and any(isinstance(t, ast.Name) and t.id == "pytest_plugins" for t in n.targets)]
    assert sorted(plugins) == sorted(f"tests.{p.stem}" for p in TESTS.glob("*_fixtures.py"))
