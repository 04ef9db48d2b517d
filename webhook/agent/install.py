"""Put the static helper on the host and point the kernel at it; take it all back on uninstall.

Order matters: the kernel settings are backed up before anything changes, the helper and its
config are in place before core_pattern names them, and uninstall restores the pattern before
anything else goes away.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass

from webhook.agent import hostdir
from webhook.agent.settings import AgentSettings
from webhook.agent.statefile import write_atomically
from webhook.agent.sysctl import (
    CORE_PATTERN,
    CORE_PIPE_LIMIT,
    SUID_DUMPABLE,
    Backup,
    KernelSettings,
    Sysctl,
)
from webhook.pattern import MAX_PATTERN_LENGTH

log = logging.getLogger(__name__)

#: The helper reads this "key=value" file from its own directory at every crash.
HELPER_CONFIG_NAME = "helper.conf"
#: Where the kernel settings backup lives inside the host dir.
BACKUP_NAME = "sysctl-backup.json"
#: The kernel needs core_pipe_limit > 0 to keep /proc/<pid> while the agent reads it; 16 is the
#: floor so a burst of crashes (a crash-looping Deployment) is not dropped by the kernel.
MIN_CORE_PIPE_LIMIT = 16
#: core_pipe_limit=0 ("auto"): 16 per CPU within these bounds (IBM's collector uses 128)...
AUTO_PIPE_LIMIT_PER_CPU = 16
AUTO_PIPE_LIMIT_MIN = 32
AUTO_PIPE_LIMIT_MAX = 128
#: ... and at most one pinned crash per this much of the node's memory.
AUTO_PIPE_LIMIT_MEMORY_PER_CRASH = 64 * 1024**2
#: How long the helper waits for the agent's final answer beyond the dump timeout (log only).
OUTCOME_GRACE_SECONDS = 30


class InstallError(RuntimeError):
    """The helper cannot be installed as asked (a clear message for the operator)."""


class HostDirNotExecutable(InstallError):
    """The host dir is on a noexec mount: the kernel could never run the helper from it."""


def helper_args() -> tuple[str, ...]:
    """The specifiers the helper receives, in the order ``CrashRequest.from_argv`` expects."""
    from webhook.agent.crash_request import HELPER_ARGS

    return tuple(HELPER_ARGS)


def helper_pattern(settings: AgentSettings) -> str:
    """``|<helper on the host> %P %p ...``; fails clearly when the kernel could not take it."""
    path = settings.helper_path_on_host
    if not os.path.isabs(path):
        raise InstallError(f"the helper path {path!r} must be absolute (the kernel resolves it on the host)")
    if any(c.isspace() for c in path) or "%" in path:
        raise InstallError(
            f"the helper path {path!r} contains a space or '%': the kernel splits the pattern on spaces "
            "and expands '%'; choose a host dir without them"
        )
    pattern = "|" + path + " " + " ".join(helper_args())
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise InstallError(
            f"core_pattern {pattern!r} is {len(pattern)} characters, the kernel allows {MAX_PATTERN_LENGTH}: "
            f"use a shorter host dir (now {settings.host_dir_on_host or settings.host_dir!r})"
        )
    return pattern


def helper_config(settings: AgentSettings) -> str:
    """The helper's config file: its timeouts and spool limits, in milliseconds and bytes."""
    values = {
        "version": 1,
        "ack_timeout_ms": int(settings.helper_timeout_seconds * 1000),
        "outcome_timeout_ms": int((settings.dump_timeout_seconds + OUTCOME_GRACE_SECONDS) * 1000),
        "spool_timeout_ms": int(settings.spool_timeout_seconds * 1000),
        "spool_max_bytes": int(settings.spool_max_bytes),
        "spool_keep_free_bytes": int(settings.spool_keep_free_bytes),
        "log_max_bytes": int(settings.helper_log_max_bytes),
    }
    lines = ["# written by `coredump agent run`; read by coredump-helper at every crash"]
    lines += [f"{k}={v}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def install_helper_binary(settings: AgentSettings) -> None:
    """Copy the helper into the host dir atomically (tmp + fsync + rename, mode 0755).

    A crash at any moment finds either the old complete binary or the new one under the name
    the pattern uses, never a half-written file.
    """
    src, dest = settings.helper_binary, settings.helper_path
    if not os.path.isfile(src):
        raise InstallError(f"helper binary {src!r} not found (set --helper-binary)")
    os.makedirs(settings.host_dir, mode=0o755, exist_ok=True)
    if os.path.exists(dest) and os.path.samefile(src, dest):
        return
    tmp = f"{dest}.tmp.{os.getpid()}"
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1024 * 1024)
        fout.flush()
        os.fchmod(fout.fileno(), 0o755)
        os.fsync(fout.fileno())
    os.replace(tmp, dest)
    log.info("helper installed", extra={"source": src, "path": dest})


def kernel_settings(settings: AgentSettings) -> KernelSettings:
    return KernelSettings(Sysctl(settings.sysctl_root), os.path.join(settings.host_dir, BACKUP_NAME))


def auto_pipe_limit(cpus: int, memory_bytes: int) -> int:
    """core_pipe_limit from the node's capacity: crashes beyond it are dropped by the kernel
    (reported through the kernel log, see kernellog.py), crashes within it stay pinned,
    holding their memory, until the agent has read them."""
    by_cpu = min(AUTO_PIPE_LIMIT_MAX, max(AUTO_PIPE_LIMIT_MIN, AUTO_PIPE_LIMIT_PER_CPU * max(1, cpus)))
    by_memory = max(MIN_CORE_PIPE_LIMIT, memory_bytes // AUTO_PIPE_LIMIT_MEMORY_PER_CRASH) if memory_bytes else by_cpu
    return min(by_cpu, by_memory)


def node_memory_bytes(meminfo: str = "/proc/meminfo") -> int:
    """MemTotal in bytes (0 when unreadable)."""
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def pipe_limit(settings: AgentSettings) -> int:
    """The core_pipe_limit to set: the configured one (at least 16), or the node's (0)."""
    if settings.core_pipe_limit > 0:
        return max(settings.core_pipe_limit, MIN_CORE_PIPE_LIMIT)
    return auto_pipe_limit(os.cpu_count() or 1, node_memory_bytes())


def desired_values(settings: AgentSettings) -> dict[str, str]:
    """What the agent sets: its pattern and a pipe limit of at least 16 (:func:`pipe_limit`).

    core_uses_pid is left alone (the kernel ignores it for pipes; the agent appends .PID itself)
    and so is fs.suid_dumpable unless configured. Both are still saved and restored.
    """
    values = {
        CORE_PATTERN: helper_pattern(settings),
        CORE_PIPE_LIMIT: str(pipe_limit(settings)),
    }
    if settings.suid_dumpable in (0, 1, 2):
        values[SUID_DUMPABLE] = str(settings.suid_dumpable)
    return values


@dataclass(frozen=True)
class Installed:
    """What install did: the originals (to restore) and the values it set."""

    backup: Backup
    applied: dict[str, str]

    @property
    def previous_pattern(self) -> str:
        """The original core_pattern (the chain target when it was a pipe)."""
        return self.backup.values.get(CORE_PATTERN, "")


def prepare(settings: AgentSettings) -> Backup:
    """Everything before the kernel is pointed at us: backup, helper binary, helper config.

    The agent binds its socket between :func:`prepare` and :func:`activate`, so the first
    crash piped to the helper already finds it listening.
    """
    desired_values(settings)  # validates the pattern before anything changes
    refused = hostdir.check_executable(settings.host_dir)
    if refused is not None:
        raise HostDirNotExecutable(refused.message())
    os.makedirs(settings.host_dir, mode=0o755, exist_ok=True)
    os.makedirs(settings.spool_dir, mode=0o700, exist_ok=True)
    install_helper_binary(settings)
    write_atomically(os.path.join(settings.host_dir, HELPER_CONFIG_NAME), helper_config(settings).encode(), 0o644,
                     sync_dir=True)
    return kernel_settings(settings).save()


def activate(settings: AgentSettings) -> dict[str, str]:
    """Set core_pattern and the pipe limit (the backup exists: :func:`prepare` wrote it)."""
    wanted = desired_values(settings)
    kernel_settings(settings).apply(wanted)
    return wanted


def install(settings: AgentSettings) -> Installed:
    """Back up, install helper + config, then set the kernel settings (in that order)."""
    backup = prepare(settings)
    return Installed(backup=backup, applied=activate(settings))


def uninstall(settings: AgentSettings) -> dict[str, str] | None:
    """Restore the kernel settings from the backup and remove the socket. Idempotent."""
    restored = kernel_settings(settings).restore()
    try:
        os.unlink(settings.socket_path)
    except FileNotFoundError:
        pass
    return restored
