"""Settings of ``coredump demo`` (fields with their flags and ``COREDUMP_DEMO_*`` variables)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from webhook.settings_fields import setting


@dataclass(frozen=True)
class DemoSettings:
    """Where the demo finds the static helpers, where it works, and whether it crashes a process."""

    bin_dir: Path = setting(
        Path(os.path.expanduser("~/.cache/coredump-webhook/bin")), env="COREDUMP_DEMO_BIN_DIR",
        help="Directory holding the static coredump-wrapper and coredump-helper.")
    work_dir: Path | None = setting(
        None, env="COREDUMP_DEMO_WORK_DIR", show_default=False,
        help="Keep the demo's files here (default: a temporary directory, removed).")
    crash: bool = setting(True, env="COREDUMP_DEMO_CRASH", show_default=False, help="Crash a real process (needs root).")
