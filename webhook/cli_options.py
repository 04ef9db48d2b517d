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


def _common_attrs(f: dataclasses.Field[Any], s: Setting, show_envvar: bool) -> dict[str, Any]:
    """What every option gets: environment variable, help, visibility, default or required."""
    attrs: dict[str, Any] = {"envvar": s.env, "show_envvar": show_envvar, "show_default": s.show_default}
    if s.help:
        attrs["help"] = s.help
    if s.hidden:
        attrs["hidden"] = True
    if f.default is dataclasses.MISSING:
        attrs["required"] = True
    else:
        attrs["default"] = f.default
    return attrs


def _tuple_attrs(f: dataclasses.Field[Any], s: Setting) -> dict[str, Any]:
    """A tuple is one separated string (``separator``) or a repeated option."""
    if s.separator is not None:
        return {"default": s.separator.join(f.default) if isinstance(f.default, tuple) else "", "type": str}
    return {"multiple": True, "type": str}


#: ``Setting.path`` -> the click type of that kind of path.
_PATH_TYPES: dict[str, Callable[[], click.Path]] = {
    "existing_dir": lambda: click.Path(exists=True, file_okay=False, path_type=Path),
    "dir": lambda: click.Path(file_okay=False),
    "file": lambda: click.Path(dir_okay=False),
}


def _value_type(kind: str, s: Setting) -> Any:
    """The click type of a single-valued, non-flag option."""
    if s.choices:
        return click.Choice(list(s.choices), case_sensitive=s.case_sensitive)
    if s.path in _PATH_TYPES:
        return _PATH_TYPES[s.path]()
    if kind == "Path":
        return click.Path(path_type=Path)
    if kind == "int":
        return click.IntRange(min=int(s.min)) if s.min is not None else int
    if kind == "float":
        return click.FloatRange(min=s.min) if s.min is not None else float
    return str


def _spec(f: dataclasses.Field[Any], s: Setting, show_envvar: bool) -> tuple[list[str], dict[str, Any]]:
    """The declarations and keyword arguments of one click option."""
    kind = _kind(f)
    flag = s.flag_name(f.name)
    attrs = _common_attrs(f, s, show_envvar)
    decls = [param_name(f), *([s.short] if s.short else []), flag]
    if kind == "bool" and s.negatable:
        decls[-1] = f"{flag}/--no-{flag[2:]}"
    elif kind == "bool":
        attrs["is_flag"] = True
    elif kind == "tuple":
        attrs.update(_tuple_attrs(f, s))
    else:
        attrs["type"] = _value_type(kind, s)
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


def _parsed(f: dataclasses.Field[Any], s: Setting, value: Any) -> Any:
    """A parsed option value as the field takes it: tuples split or collected, "" as None
    where None is the default."""
    if _kind(f) == "tuple":
        if s.separator is not None:
            return tuple(p.strip() for p in (value or "").split(s.separator) if p.strip())
        return tuple(value or ())
    if value == "" and f.default is None:
        return None
    return value


def settings_values(cls: type, params: Mapping[str, Any], *, only: Iterable[str] | None = None) -> dict[str, Any]:
    """The field values of ``cls`` among a command's parsed ``params`` (other keys are ignored)."""
    return {f.name: _parsed(f, s, params[param_name(f)]) for f, s in _chosen(cls, only) if param_name(f) in params}


def settings_from(cls: type[T], params: Mapping[str, Any], *, only: Iterable[str] | None = None,
                  **given: Any) -> T:
    """``cls`` from a command's parsed ``params`` plus ``given`` (fields that are no options,
    e.g. nested settings). A value the settings refuse is a usage error (exit status 2)."""
    try:
        return cls(**settings_values(cls, params, only=only), **given)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
