"""The package's layers point down: every import of every module (top level and inside
functions) is read from the source, and none may reach a layer above its own.

    cli, demo                     (commands that wire everything)
    agent | inspect | server      (the node daemon, the inspection CLI and page, the webhook)
    admission                     (pure mutation, used by the webhook server)
    diagnose, serving, certs, registry                 (shared, below)
    pattern, constants, kubeclient, kubewatch, logs, clock, digest, settings_fields, ...
                                  (the bottom: they import no layer of the project)

The daemon never imports the CLI nor the webhook, the CLI never the daemon, and what both use
lives below them.
"""

from __future__ import annotations

from pathlib import Path

from tests.suite_support import imports_of

REPO = Path(__file__).resolve().parent.parent
ROOTS = {"webhook": REPO / "webhook", "webhook.certs": REPO / "certs"}

#: package -> the packages of this project it may not import (directly or inside a function).
FORBIDDEN = {
    "webhook.agent": {"webhook.inspect", "webhook.server", "webhook.admission", "webhook.demo", "webhook.cli"},
    "webhook.inspect": {"webhook.agent", "webhook.server", "webhook.admission", "webhook.demo", "webhook.cli"},
    "webhook.server": {"webhook.agent", "webhook.inspect", "webhook.demo", "webhook.cli"},
    "webhook.admission": {"webhook.agent", "webhook.inspect", "webhook.server", "webhook.demo", "webhook.cli"},
    "webhook.diagnose": {"webhook.agent", "webhook.inspect", "webhook.server", "webhook.admission",
                         "webhook.demo", "webhook.cli", "webhook.serving"},
    "webhook.serving": {"webhook.agent", "webhook.inspect", "webhook.server", "webhook.admission",
                        "webhook.demo", "webhook.cli", "webhook.diagnose"},
    "webhook.registry": {"webhook.agent", "webhook.inspect", "webhook.server", "webhook.admission",
                         "webhook.demo", "webhook.cli", "webhook.serving", "webhook.diagnose"},
    "webhook.certs": {"webhook.agent", "webhook.inspect", "webhook.server", "webhook.admission",
                      "webhook.demo", "webhook.cli", "webhook.serving", "webhook.diagnose"},
}
#: The bottom: modules every layer may use, which import no layer of this project at all.
BOTTOM = ("webhook.pattern", "webhook.constants", "webhook.kubeclient", "webhook.kubewatch", "webhook.logs",
          "webhook.rlimited", "webhook.clock", "webhook.digest", "webhook.settings_fields")
FORBIDDEN.update({m: {"webhook.agent", "webhook.inspect", "webhook.server", "webhook.admission", "webhook.demo",
                      "webhook.cli", "webhook.cli_options", "webhook.serving", "webhook.diagnose",
                      "webhook.registry", "webhook.certs"} for m in BOTTOM})


def _modules() -> dict[str, Path]:
    found = {}
    for package, root in ROOTS.items():
        for path in root.rglob("*.py"):
            rel = path.relative_to(root).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found




def _under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_layers_point_down() -> None:
    modules = _modules()
    assert len(modules) > 50 and "webhook.agent.crash" in modules and "webhook.certs.generate" in modules
    assert set(BOTTOM) <= set(modules)  # a bottom module renamed away would silently lose its rule
    violations = []
    for module, path in sorted(modules.items()):
        layer = max((p for p in FORBIDDEN if _under(module, p)), key=len, default=None)
        if layer is None:
            continue
        for name in sorted(imports_of(path)):
            for banned in FORBIDDEN[layer]:
                # webhook.certs sits inside webhook's namespace: only a real import of a banned
                # package counts, never the shared prefix
                if _under(name, banned) and not (layer == "webhook.certs" and _under(name, "webhook.certs")):
                    violations.append(f"{module} imports {name} ({layer} may not import {banned})")
    assert violations == []


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    """The AST walk finds imports inside functions too (the way the daemon once reached the CLI)."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from webhook.inspect.commands import main\n    import webhook.server.app\n")
    assert {"webhook.inspect.commands", "webhook.server.app"} <= imports_of(src)
