"""Numbers of the system calls the agent makes through ctypes, per architecture.

glibc 2.36 has no ``openat2`` wrapper, and its ``setgroups`` changes every thread of the
process (the agent needs one thread's), so these are raw ``syscall(2)`` calls: their numbers
differ between architectures. Each value is from that architecture's ``<asm/unistd.h>``;
tests/test_arm64.py checks the table against Debian's x86_64 and aarch64 kernel headers.
"""

from __future__ import annotations

import platform

#: ``platform.machine()`` -> system call name -> number.
TABLE: dict[str, dict[str, int]] = {
    "x86_64": {"openat2": 437, "setgroups": 116, "setfsuid": 122, "setfsgid": 123},
    "aarch64": {"openat2": 437, "setgroups": 159, "setfsuid": 151, "setfsgid": 152},
}
#: Other spellings of the same machines (Docker/Go names).
ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}


class UnsupportedArchitecture(OSError):
    """No system call numbers are known for this machine."""


def canonical_machine(machine: str | None = None) -> str:
    m = (machine or platform.machine()).lower()
    return ALIASES.get(m, m)


def number(name: str, machine: str | None = None) -> int:
    """The number of system call ``name`` on ``machine`` (default: this one)."""
    m = canonical_machine(machine)
    try:
        return TABLE[m][name]
    except KeyError:
        raise UnsupportedArchitecture(
            f"no number known for the {name} system call on {m!r} (known: {', '.join(sorted(TABLE))})"
        ) from None
