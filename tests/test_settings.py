"""One way to declare settings: every area's settings are a dataclass whose fields carry their
flag, environment variable and help (webhook/settings_fields.py), turned into click options by
the command layer only (webhook/cli_options.py).

These tests find every settings dataclass in the package, check that each of its settings is
an option of some ``coredump`` command with its flag and its environment variable, that the
options build the dataclass back, and that click appears in command modules only.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any

import click
import pytest
from click.core import ParameterSource
from click.testing import CliRunner

from tests.suite_support import imports_of
from webhook.cli import main
from webhook.cli_options import settings_from, settings_params
from webhook.settings_fields import SETTING, Setting, settings_of

REPO = Path(__file__).resolve().parent.parent
ROOTS = {"webhook": REPO / "webhook", "webhook.certs": REPO / "certs"}

#: Fields of settings dataclasses that are no options, and why (a new field must be added here
#: on purpose, or declared with ``setting(...)``).
NOT_OPTIONS = {
    # nested settings of the other areas, and the metrics directory the gunicorn runner picks
    "ServerSettings": {"admission", "registry", "metrics_dir"},
    # the page keeps the serving base's defaults for these, and its title
    "PageSettings": {"timeout", "keepalive", "graceful_timeout", "cert_reload_interval", "title"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for package, root in ROOTS.items():
        for path in root.rglob("*.py"):
            rel = path.relative_to(root).with_suffix("")
            found[".".join([package, *(p for p in rel.parts if p != "__init__")])] = path
    return found


def _settings_classes() -> list[type]:
    """Every dataclass in the package with at least one field declared by ``setting(...)``."""
    classes = []
    for module in sorted(_modules()):
        for obj in vars(importlib.import_module(module)).values():
            if (isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == module
                    and settings_of(obj)):
                classes.append(obj)
    return classes


def _commands() -> dict[str, click.Command]:
    """Every command of the ``coredump`` CLI, by its path ("agent run")."""
    out: dict[str, click.Command] = {}

    def walk(group: click.Group, prefix: str) -> None:
        ctx = click.Context(group)
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            assert command is not None, name
            path = f"{prefix} {name}".strip()
            if isinstance(command, click.Group):
                walk(command, path)
            else:
                out[path] = command

    walk(main, "")
    return out


CLASSES = _settings_classes()


def test_every_area_declares_its_settings_the_one_way() -> None:
    names = {cls.__name__ for cls in CLASSES}
    assert {"AdmissionSettings", "RegistrySettings", "ServerSettings", "PageSettings", "AgentSettings",
            "InspectSettings", "GenerateSettings", "BootstrapSettings", "RemoveSettings", "DemoSettings"} <= names
    for cls in CLASSES:
        plain = {f.name for f in dataclasses.fields(cls) if SETTING not in f.metadata}
        assert plain == NOT_OPTIONS.get(cls.__name__, set()), f"{cls.__name__}: fields without setting(...)"
        for f, s in settings_of(cls):
            assert isinstance(s, Setting) and s.env and s.env == s.env.upper(), (cls.__name__, f.name)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_setting_is_a_flag_and_an_env_var_of_a_command(cls: type, monkeypatch: pytest.MonkeyPatch) -> None:
    commands = _commands()
    for f, s in settings_of(cls):
        flag = s.flag or "--" + f.name.replace("_", "-")
        offered = []
        for path, command in commands.items():
            param = next((p for p in command.params if p.name == f.name and isinstance(p, click.Option)), None)
            if param is None or flag not in param.opts or param.envvar != s.env:
                continue
            # the environment variable really feeds the option
            monkeypatch.setenv(s.env, "1" if not param.multiple else "a b")
            value, source = param.consume_value(click.Context(command), {})
            monkeypatch.delenv(s.env)
            assert source == ParameterSource.ENVIRONMENT and value is not None, (path, f.name)
            offered.append(path)
        assert offered, f"{cls.__name__}.{f.name}: no command offers {flag} / {s.env}"


def test_no_command_offers_two_options_under_one_name() -> None:
    for path, command in _commands().items():
        names = [p.name for p in command.params]
        assert len(names) == len(set(names)), path
        envvars = [p.envvar for p in command.params if isinstance(p, click.Option) and p.envvar]
        assert len(envvars) == len(set(envvars)), path


def test_the_readme_names_every_flag_and_environment_variable() -> None:
    """A user reads the README, not the source: every option of every command is in it (by its
    flag; environment variables follow the documented COREDUMP_<AREA>_<FLAG> rule)."""
    readme = (REPO / "README.md").read_text()
    options = [(path, p) for path, command in _commands().items() for p in command.params
               if isinstance(p, click.Option) and not p.hidden]
    assert len(options) > 100
    missing = [f"{path or 'coredump'} {name}" for path, p in options
               for name in p.opts if name.startswith("--") and name not in readme]
    assert missing == []


@pytest.mark.parametrize(
    "cls", [c for c in CLASSES if all(f.default is not dataclasses.MISSING for f in dataclasses.fields(c))],
    ids=lambda c: c.__name__)
def test_the_options_build_the_defaults_back(cls: type) -> None:
    """No flag and no variable: exactly the dataclass's defaults."""
    seen: dict[str, Any] = {}
    params, flags = [], set()
    for option in settings_params(cls):  # InspectSettings' --timeout is debug's and gcore's: one of them
        if not flags & set(option.opts):
            params.append(option)
            flags.update(option.opts)

    @click.command(params=params)
    def cmd(**params: Any) -> None:
        seen["settings"] = settings_from(cls, params)

    result = CliRunner().invoke(cmd, [], env={s.env: None for _, s in settings_of(cls)})
    assert result.exit_code == 0, result.output
    assert seen["settings"] == cls()


def test_a_refused_value_is_a_usage_error() -> None:
    from webhook.registry.settings import RegistrySettings

    result = CliRunner().invoke(main, ["review", "--resolve", "--registry-platform", "linux", "-"], input="{}")
    assert result.exit_code == 2 and "invalid platform" in result.output
    assert RegistrySettings.__dataclass_fields__["per_registry_concurrency"].metadata[SETTING].min == 1




def _is_command_module(module: str) -> bool:
    last = module.rsplit(".", 1)[-1]
    return last in ("cli", "cli_options", "commands", "command") or last.endswith(("_command", "_commands"))


def test_click_only_in_command_modules() -> None:
    modules = _modules()
    users = {m for m, path in modules.items() if any(n == "click" or n.startswith("click.") for n in imports_of(path))}
    assert "webhook.cli_options" in users and "webhook.agent.commands" in users  # the walk sees them
    assert sorted(m for m in users if not _is_command_module(m)) == []
    # nor the command layer's options module (it is click's end of the settings)
    assert sorted(m for m, path in modules.items()
                  if "webhook.cli_options" in imports_of(path) and not _is_command_module(m)) == []
    # the settings themselves are declared without it
    for module in ("webhook.settings_fields", "webhook.admission.settings", "webhook.registry.settings",
                   "webhook.agent.settings", "webhook.serving.settings"):
        assert module in modules and module not in users
