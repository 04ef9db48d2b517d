"""Settings dataclasses as click options, and the parsed options back as the dataclass.

The one command-layer end of :mod:`webhook.settings_fields`: every field declared with
``setting(...)`` becomes an option (its flag, environment variable, help, default and type
from the field), and :func:`settings_from` builds the dataclass from what click parsed. A
setting the dataclass refuses (its ``__post_init__`` raises ValueError) is a usage error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

from webhook.settings_fields import Setting, settings_of

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def _kind(f: dataclasses.Field[Any]) -> str:
    """"bool", "int", "float", "str", "tuple" or "Path" from the field's annotation
    (a string under ``from __future__ import annotations``; ``X | None`` counts as X)."""
    text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    return text.split("|")[0].strip().split("[")[0]


def param_name(f: dataclasses.Field[Any]) -> str:
    """The name click gives the parsed value: the field's (areas sharing a command keep their
    field names apart; tests/test_settings.py checks it)."""
    return f.name


def _chosen(cls: type, only: Iterable[str] | None) -> list[tuple[dataclasses.Field[Any], Setting]]:
    wanted = None if only is None else set(only)
    return [(f, s) for f, s in settings_of(cls) if wanted is None or f.name in wanted]


def _spec(f: dataclasses.Field[Any], s: Setting, show_envvar: bool) -> tuple[list[str], dict[str, Any]]:
    """The declarations and keyword arguments of one click option."""
    kind = _kind(f)
    flag = s.flag_name(f.name)
    attrs: dict[str, Any] = {"envvar": s.env, "show_envvar": show_envvar, "show_default": s.show_default}
    if s.help:
        attrs["help"] = s.help
    if s.hidden:
        attrs["hidden"] = True
    if f.default is dataclasses.MISSING:
        attrs["required"] = True
    else:
        attrs["default"] = f.default
    decls = [param_name(f), *([s.short] if s.short else []), flag]
    if kind == "bool":
        if s.negatable:
            decls[-1] = f"{flag}/--no-{flag[2:]}"
        else:
            attrs["is_flag"] = True
        return decls, attrs
    if kind == "tuple":
        if s.separator is not None:
            attrs["default"] = s.separator.join(f.default) if isinstance(f.default, tuple) else ""
            attrs["type"] = str
        else:
            attrs["multiple"] = True
            attrs["type"] = str
        return decls, attrs
    if s.choices:
        attrs["type"] = click.Choice(list(s.choices), case_sensitive=s.case_sensitive)
    elif s.path == "existing_dir":
        attrs["type"] = click.Path(exists=True, file_okay=False, path_type=Path)
    elif s.path == "dir":
        attrs["type"] = click.Path(file_okay=False)
    elif s.path == "file":
        attrs["type"] = click.Path(dir_okay=False)
    elif kind == "Path":
        attrs["type"] = click.Path(path_type=Path)
    elif kind == "int":
        attrs["type"] = click.IntRange(min=int(s.min)) if s.min is not None else int
    elif kind == "float":
        attrs["type"] = click.FloatRange(min=s.min) if s.min is not None else float
    else:
        attrs["type"] = str
    return decls, attrs


def settings_params(cls: type, *, only: Iterable[str] | None = None, show_envvar: bool = True) -> list[click.Option]:
    """One click option per settings field of ``cls`` (or of the fields named in ``only``)."""
    options = []
    for f, s in _chosen(cls, only):
        decls, attrs = _spec(f, s, show_envvar)
        options.append(click.Option(decls, **attrs))
    return options


def settings_options(cls: type, *, only: Iterable[str] | None = None, show_envvar: bool = True) -> Callable[[F], F]:
    """Decorate a command with :func:`settings_params`' options, in field order."""
    specs = [_spec(f, s, show_envvar) for f, s in _chosen(cls, only)]

    def decorate(fn: F) -> F:
        for decls, attrs in reversed(specs):
            fn = click.option(*decls, **attrs)(fn)
        return fn

    return decorate


def settings_values(cls: type, params: Mapping[str, Any], *, only: Iterable[str] | None = None) -> dict[str, Any]:
    """The field values of ``cls`` among a command's parsed ``params`` (other keys are ignored)."""
    values: dict[str, Any] = {}
    for f, s in _chosen(cls, only):
        name = param_name(f)
        if name not in params:
            continue
        value = params[name]
        if _kind(f) == "tuple":
            if s.separator is not None:
                value = tuple(p.strip() for p in (value or "").split(s.separator) if p.strip())
            else:
                value = tuple(value or ())
        elif value == "" and f.default is None:
            value = None
        values[f.name] = value
    return values


def settings_from(cls: type[T], params: Mapping[str, Any], *, only: Iterable[str] | None = None,
                  **given: Any) -> T:
    """``cls`` from a command's parsed ``params`` plus ``given`` (fields that are no options,
    e.g. nested settings). A value the settings refuse is a usage error (exit status 2)."""
    try:
        return cls(**settings_values(cls, params, only=only), **given)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
