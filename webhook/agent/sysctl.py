"""The four kernel settings the agent changes, and their backup so they are always restored.

The backup (``HOSTDIR/sysctl-backup.json``) is written once, atomically, before the first
change, and never overwritten while it exists: an agent killed with SIGKILL and started again
finds the originals there, not its own pipe pattern. ``restore()`` writes them back and removes
the backup; a second ``restore()`` (`coredump agent uninstall`, then the agent's own stop) is a
no-op.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from webhook.agent.statefile import write_atomically

log = logging.getLogger(__name__)

CORE_PATTERN = "kernel.core_pattern"
CORE_PIPE_LIMIT = "kernel.core_pipe_limit"
CORE_USES_PID = "kernel.core_uses_pid"
SUID_DUMPABLE = "fs.suid_dumpable"
#: Every setting saved and restored, in the order they are restored (the pattern first, so no
#: crash is piped to a helper that is going away).
SETTINGS = (CORE_PATTERN, CORE_PIPE_LIMIT, CORE_USES_PID, SUID_DUMPABLE)

#: Name of the helper binary: a pipe pattern running it is ours, whatever its directory.
HELPER_NAME = "coredump-helper"
BACKUP_VERSION = 1
#: What the kernel boots with: used as the "original" pattern only if ours is found installed
#: with no backup left to tell what was there before (the host dir was wiped).
KERNEL_DEFAULT_PATTERN = "core"


class SysctlError(RuntimeError):
    """A kernel setting could not be read or written (not root, read-only /proc/sys, ...)."""


def is_our_pattern(pattern: str) -> bool:
    """A pipe pattern whose program is our helper, from any host directory."""
    if not pattern.startswith("|"):
        return False
    program = pattern[1:].lstrip().split(" ", 1)[0]
    return posixpath.basename(program) == HELPER_NAME


@dataclass(frozen=True)
class Sysctl:
    """Read and write sysctls as files under ``root`` (``/proc/sys`` on a real host)."""

    root: str = "/proc/sys"

    def path(self, name: str) -> str:
        if name not in SETTINGS:
            raise SysctlError(f"{name} is not a setting the agent manages")
        return os.path.join(self.root, *name.split("."))

    def read(self, name: str) -> str:
        """The value as the kernel prints it, without the trailing newline."""
        try:
            with open(self.path(name)) as f:
                value = f.read()
        except OSError as exc:
            raise SysctlError(f"cannot read {name}: {exc.strerror or exc}") from exc
        return value[:-1] if value.endswith("\n") else value

    def write(self, name: str, value: str) -> None:
        """Write one value; it is read back and compared, so a silent refusal is an error."""
        if "\n" in value:
            raise SysctlError(f"{name}: a value cannot contain a newline")
        try:
            # One write() call: the kernel parses each write on its own, and stops a string at
            # the newline (so an empty value is a bare newline; trailing spaces are kept).
            with open(self.path(name), "w") as f:
                f.write(value + "\n")
        except OSError as exc:
            raise SysctlError(f"cannot write {name}={value!r}: {exc.strerror or exc}") from exc
        got = self.read(name)
        if got != value:
            raise SysctlError(f"{name}: wrote {value!r} but the kernel reports {got!r}")

    def read_all(self) -> dict[str, str]:
        return {name: self.read(name) for name in SETTINGS}


@dataclass
class Backup:
    """The originals, as found before the agent's first change."""

    values: dict[str, str]
    saved_at: float = field(default_factory=time.time)
    #: True when our own pattern was found with no backup: the pattern saved is the kernel's
    #: default, a guess, and the log says so.
    pattern_guessed: bool = False

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": BACKUP_VERSION,
                "saved_at": self.saved_at,
                "pattern_guessed": self.pattern_guessed,
                "values": self.values,
            },
            indent=2,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Backup:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") != BACKUP_VERSION:
            raise ValueError(f"unknown backup version {data.get('version') if isinstance(data, dict) else data!r}")
        values = data.get("values")
        if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
            raise ValueError("backup has no 'values' object of strings")
        unknown = set(values) - set(SETTINGS)
        if unknown:
            raise ValueError(f"backup names unknown settings {sorted(unknown)}")
        return cls(
            values=dict(values),
            saved_at=float(data.get("saved_at", 0.0)),
            pattern_guessed=bool(data.get("pattern_guessed", False)),
        )


def _atomic_write(path: str, text: str, mode: int = 0o600) -> None:
    """The file old or new after a crash, never half (webhook/agent/statefile.py), its directory made."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_atomically(path, text.encode(), mode, sync_dir=True)


class KernelSettings:
    """Save-once, apply and restore of the agent's kernel settings."""

    def __init__(self, sysctl: Sysctl, backup_path: str) -> None:
        self.sysctl = sysctl
        self.backup_path = backup_path

    def load_backup(self) -> Backup | None:
        """The saved originals, or None when there is no backup (a clear error if unreadable)."""
        try:
            with open(self.backup_path) as f:
                text = f.read()
        except FileNotFoundError:
            return None
        try:
            return Backup.from_json(text)
        except (ValueError, TypeError) as exc:
            raise SysctlError(f"{self.backup_path} is not a valid backup ({exc}); fix or remove it by hand") from exc

    def save(self) -> Backup:
        """Write the backup unless one exists (it then holds the true originals); return it."""
        existing = self.load_backup()
        if existing is not None:
            log.info("kernel settings backup found, keeping its originals", extra={"backup": self.backup_path})
            return existing
        values = self.sysctl.read_all()
        guessed = False
        if is_our_pattern(values[CORE_PATTERN]):
            # Our pattern with no backup: the original is unknowable. Never record ours as the
            # original (restoring it would leave crashes piped to a helper nobody serves).
            log.warning(
                "our helper is already the core_pattern but no backup exists; "
                "the kernel default will be restored",
                extra={"found": values[CORE_PATTERN], "restore_to": KERNEL_DEFAULT_PATTERN},
            )
            values[CORE_PATTERN] = KERNEL_DEFAULT_PATTERN
            guessed = True
        backup = Backup(values=values, pattern_guessed=guessed)
        _atomic_write(self.backup_path, backup.to_json())
        log.info("kernel settings saved", extra={"backup": self.backup_path, "values": values})
        return backup

    def apply(self, values: Mapping[str, str]) -> None:
        """Set values; the backup must exist first (callers use :meth:`save`)."""
        if not os.path.exists(self.backup_path):
            raise SysctlError("refusing to change kernel settings before they are backed up")
        for name, value in values.items():
            self.sysctl.write(name, value)
        log.info("kernel settings applied", extra={"values": dict(values)})

    def restore(self) -> dict[str, str] | None:
        """Write the originals back and remove the backup. None when there was no backup.

        The pattern is restored only while it is still ours: if someone else (another tool, an
        admin) replaced it meanwhile, theirs is left in place and the log says so.
        """
        backup = self.load_backup()
        if backup is None:
            log.info("no kernel settings backup: nothing to restore", extra={"backup": self.backup_path})
            return None
        restored: dict[str, str] = {}
        errors: list[str] = []
        for name in SETTINGS:
            if name not in backup.values:
                continue
            value = backup.values[name]
            try:
                if name == CORE_PATTERN:
                    current = self.sysctl.read(name)
                    if current != value and not is_our_pattern(current):
                        log.warning(
                            "core_pattern was changed by someone else; leaving it",
                            extra={"current": current, "original": value},
                        )
                        continue
                self.sysctl.write(name, value)
                restored[name] = value
            except SysctlError as exc:
                errors.append(str(exc))
        if errors:
            # Keep the backup: a later restore (preStop, restart) can still finish the job.
            raise SysctlError("; ".join(errors))
        os.unlink(self.backup_path)
        log.info("kernel settings restored", extra={"values": restored})
        return restored
