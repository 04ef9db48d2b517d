"""Run arm64 binaries on an x86_64 test machine with qemu-user-static, without touching the host.

Two ways, both real:
- ``qemu-aarch64-static BINARY ARGS...`` as plain root: the guest's ``execve`` is the host's,
  so an arm64 wrapper can exec an x86_64 program (useful where real root is needed: raising a
  hard rlimit needs CAP_SYS_RESOURCE in the initial user namespace);
- :func:`binfmt_command`: a private user namespace (root mapped to root) with its own
  binfmt_misc instance (Linux 6.7+ gives each user namespace one) where aarch64 ELF files are
  registered with qemu's ``F`` (fix-binary) flag: the kernel opened qemu at registration, so
  arm64 programs then exec one another even inside an empty chroot, as on an arm64 node.
  Nothing is registered on the host.
"""

from __future__ import annotations

import shlex
import struct
from pathlib import Path

QEMU = "qemu-aarch64-static"
#: ELF e_machine values.
EM_X86_64 = 62
EM_AARCH64 = 183
#: The aarch64 magic/mask pair Debian's qemu-user-static registers (usr/lib/binfmt.d).
_MAGIC = r"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00"
_MASK = r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"


def elf_machine(path: Path) -> int:
    """e_machine of an ELF file (little-endian, as both architectures are here)."""
    data = path.read_bytes()[:20]
    assert data[:4] == b"\x7fELF", f"{path} is not an ELF file"
    return struct.unpack_from("<H", data, 18)[0]


def binfmt_command(qemu: str, argv: list[str]) -> list[str]:
    """``argv`` run in a private user + mount namespace whose binfmt_misc runs aarch64 ELF
    files with ``qemu`` (registered there with the F flag)."""
    rule = f":qemu-aarch64:M::{_MAGIC}:{_MASK}:{qemu}:F"
    script = ("mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || "
              "{ echo 'binfmt_misc cannot be mounted in a user namespace (needs Linux 6.7 or later)' >&2; exit 99; }; "
              f"printf '%s' {shlex.quote(rule)} > /proc/sys/fs/binfmt_misc/register || exit 99; exec \"$@\"")
    return ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private",
            "sh", "-c", script, "sh", *argv]
