"""Create files in a container with the crashing process's filesystem credentials.

The kernel opens a file-pattern core with the dumping task's own credentials: the core lands only
where the process itself could create it. The agent runs as root, so it takes the process's
*filesystem* ids for the creation steps (the kernel checks file creation against ``fsuid``,
``fsgid`` and the supplementary groups, not the real or effective ids) and gives them back
afterwards. When ``fsuid`` leaves 0 the kernel drops ``CAP_DAC_OVERRIDE``, ``CAP_DAC_READ_SEARCH``,
``CAP_FOWNER``, ``CAP_CHOWN``... from the effective set, and raises them again when it returns to
0: in between, every lookup, ``mkdir`` and ``open(O_CREAT)`` gets the process's permission checks.

The switch is per thread: the raw ``setgroups``/``setfsgid``/``setfsuid`` system calls change
only the calling thread (glibc's ``setgroups`` wrapper would broadcast to every thread of the
agent, so it is never used), and each crash is handled on its own OS thread. A switch that cannot
be undone raises :class:`CredentialsRestoreError` (a ``BaseException``, so the crash path's
``except Exception`` does not swallow it): the handler thread then ends instead of carrying a
stranger's credentials into anything else.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from webhook.agent import syscalls

log = logging.getLogger(__name__)

#: (setgroups, setfsuid, setfsgid) system call numbers, by ``platform.machine()`` (and alias).
SYSCALLS: dict[str, tuple[int, int, int]] = {
    m: (syscalls.number("setgroups", m), syscalls.number("setfsuid", m), syscalls.number("setfsgid", m))
    for m in [*syscalls.TABLE, *syscalls.ALIASES]
}
#: An invalid id: setfsuid/setfsgid change nothing and return the current value.
_READ_ONLY = 0xFFFFFFFF

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class CredentialsError(Exception):
    """The process's credentials could not be read or taken (nothing was created)."""


class CredentialsRestoreError(BaseException):
    """The thread could not get the agent's own credentials back: it must not go on."""


@dataclass(frozen=True)
class Credentials:
    """The ids the kernel checks when a process creates a file (host view)."""

    uid: int  # filesystem uid (Uid: 4th field)
    gid: int  # filesystem gid (Gid: 4th field)
    groups: tuple[int, ...] = ()  # supplementary groups

    @property
    def is_root(self) -> bool:
        """fsuid 0: the kernel grants root's file permissions (capabilities permitting)."""
        return self.uid == 0


def parse_credentials(status: str) -> Credentials:
    """The fs uid/gid and groups from ``/proc/<pid>/status`` text; ValueError if missing."""
    fields: dict[str, list[str]] = {}
    for line in status.splitlines():
        key, sep, value = line.partition(":")
        if sep and key in ("Uid", "Gid", "Groups"):
            fields[key] = value.split()
    try:
        uid, gid = int(fields["Uid"][3]), int(fields["Gid"][3])  # real, effective, saved, fs
        groups = tuple(int(g) for g in fields.get("Groups", []))
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"no filesystem uid/gid in the status: {exc!r}") from None
    return Credentials(uid, gid, groups)


def read_credentials(pid: int, proc: str = "/proc") -> Credentials:
    """A process's filesystem credentials; :class:`CredentialsError` when it cannot be read."""
    try:
        with open(f"{proc}/{pid}/status", "rb") as f:
            text = f.read(1 << 16).decode("utf-8", "replace")
        return parse_credentials(text)
    except (OSError, ValueError) as exc:
        raise CredentialsError(f"credentials of {pid} unreadable: {exc}") from None


def _numbers() -> tuple[int, int, int]:
    machine = platform.machine()
    try:
        return SYSCALLS[machine.lower()]
    except KeyError:
        raise CredentialsError(f"unsupported architecture {machine!r}: no setfsuid/setfsgid/setgroups "
                               f"numbers known (known: {', '.join(sorted(SYSCALLS))})") from None


def _setfs(number: int, value: int) -> int:
    """setfsuid/setfsgid on this thread: returns the previous value (the call never fails)."""
    return int(_syscall(ctypes.c_long(number), ctypes.c_long(value & 0xFFFFFFFF))) & 0xFFFFFFFF


def _setgroups(number: int, groups: tuple[int, ...]) -> None:
    arr = (ctypes.c_uint32 * max(1, len(groups)))(*groups)
    if _syscall(ctypes.c_long(number), ctypes.c_long(len(groups)), arr) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setgroups: {os.strerror(err)}")


def thread_fs_ids() -> tuple[int, int]:
    """This thread's (fsuid, fsgid), read without changing them."""
    _, fsuid, fsgid = _numbers()
    return _setfs(fsuid, _READ_ONLY), _setfs(fsgid, _READ_ONLY)


def _switch(numbers: tuple[int, int, int], uid: int, gid: int, groups: tuple[int, ...]) -> None:
    """groups and fsgid first (while fsuid is still 0), then fsuid; each one read back."""
    n_groups, n_fsuid, n_fsgid = numbers
    _setgroups(n_groups, groups)
    if sorted(os.getgroups()) != sorted(set(groups)):  # getgroups(2): this thread's list
        raise OSError(f"groups are {os.getgroups()}, not {list(groups)}")
    _setfs(n_fsgid, gid)
    if (now := _setfs(n_fsgid, gid)) != gid:
        raise OSError(f"fsgid is {now}, not {gid}")
    _setfs(n_fsuid, uid)
    if (now := _setfs(n_fsuid, uid)) != uid:
        raise OSError(f"fsuid is {now}, not {uid}")


def _restore(numbers: tuple[int, int, int], uid: int, gid: int, groups: tuple[int, ...]) -> None:
    """fsuid first (gets the capabilities back), then fsgid and the groups; each read back."""
    n_groups, n_fsuid, n_fsgid = numbers
    try:
        _setfs(n_fsuid, uid)
        if (now := _setfs(n_fsuid, uid)) != uid:
            raise OSError(f"fsuid stayed {now}, not {uid}")
        _setfs(n_fsgid, gid)
        if (now := _setfs(n_fsgid, gid)) != gid:
            raise OSError(f"fsgid stayed {now}, not {gid}")
        _setgroups(n_groups, groups)
        if sorted(os.getgroups()) != sorted(set(groups)):
            raise OSError(f"groups stayed {os.getgroups()}, not {list(groups)}")
    except BaseException as exc:
        log.critical("could not restore the agent's credentials on a crash thread: ending that thread",
                     extra={"error": str(exc), "tid": threading.get_native_id()})
        raise CredentialsRestoreError(f"credentials not restored: {exc}") from exc


@contextmanager
def as_process_credentials(creds: Credentials | None) -> Iterator[None]:
    """Run the block with ``creds`` as this thread's fsuid/fsgid/groups; always restore.

    ``None`` or a root process (fsuid 0) runs the block as the agent (root's permissions, as the
    kernel's would be). Raises :class:`CredentialsError` when the switch is impossible (before the
    block runs) and :class:`CredentialsRestoreError` when the agent's ids could not be restored.
    """
    if creds is None or creds.is_root:
        yield
        return
    numbers = _numbers()
    orig_uid, orig_gid = _setfs(numbers[1], _READ_ONLY), _setfs(numbers[2], _READ_ONLY)
    orig_groups = tuple(os.getgroups())
    if orig_uid != 0:
        raise CredentialsError(f"the agent's fsuid is {orig_uid}, not 0: it cannot take uid {creds.uid}")
    try:
        try:
            _switch(numbers, creds.uid, creds.gid, creds.groups)
        except OSError as exc:
            raise CredentialsError(f"could not take uid {creds.uid} gid {creds.gid}: {exc}") from None
        yield
    finally:
        _restore(numbers, orig_uid, orig_gid, orig_groups)
