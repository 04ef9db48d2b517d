"""How a setting is declared: a dataclass field that carries its help, env var and flag.

Every area's settings are one frozen dataclass. A field users may set is declared with
:func:`setting`, which keeps in the field's metadata what the command layer needs to offer it
as a flag and an environment variable; ``webhook/cli_options.py`` (the only place that knows
click) turns such a dataclass into options and the parsed values back into the dataclass.
Nothing here imports click, so the layers below the commands declare their settings freely.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass
from typing import Any

#: The metadata key of a field's :class:`Setting`.
SETTING = "coredump.setting"


@dataclass(frozen=True)
class Setting:
    """What the command line shows and reads for one field."""

    #: Help text of the option ("" for none).
    help: str
    #: Environment variable read when the flag is not given.
    env: str
    #: The flag when it is not ``--`` + the field name with dashes (e.g. ``--registry-timeout``).
    flag: str | None = None
    #: A one-letter alias of the flag (``-n``).
    short: str | None = None
    #: Allowed values (shown as a choice).
    choices: tuple[str, ...] = ()
    #: Choices compared without case (the canonical spelling is kept).
    case_sensitive: bool = True
    #: Smallest number accepted.
    min: float | None = None
    #: A tuple field read as one string split on this separator; None: the flag repeats (its
    #: environment variable is split on whitespace).
    separator: str | None = None
    #: A boolean field offers ``--x/--no-x``; False: a plain switch ``--x``.
    negatable: bool = True
    #: A path: "dir" (a directory, need not exist), "existing_dir" (must exist; given as a
    #: ``pathlib.Path``) or "file" (not a directory, need not exist); "": any text.
    path: str = ""
    #: Show the default in the help.
    show_default: bool = True
    #: Left out of the help (a hook for tests and scripts).
    hidden: bool = False

    def __post_init__(self) -> None:
        if self.path not in ("", "dir", "existing_dir", "file"):
            raise ValueError(f"path must be '', 'dir', 'existing_dir' or 'file', not {self.path!r}")

    def flag_name(self, field_name: str) -> str:
        return self.flag or "--" + field_name.replace("_", "-")


def setting(default: Any = MISSING, *, help: str, env: str, **options: Any) -> Any:
    """A dataclass field users may set from a flag and the environment variable ``env``;
    ``options`` are :class:`Setting`'s (flag, choices, min, separator, ...). Without a default
    the flag is required."""
    meta = {SETTING: Setting(help=help, env=env, **options)}
    if default is MISSING:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def settings_of(cls: type) -> list[tuple[dataclasses.Field[Any], Setting]]:
    """The fields of a settings dataclass declared with :func:`setting`, in order."""
    return [(f, f.metadata[SETTING]) for f in dataclasses.fields(cls) if SETTING in f.metadata]
