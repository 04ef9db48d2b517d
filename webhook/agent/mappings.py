"""The files a process mapped, opened only through the kernel's own references.

``/proc/<pid>/maps`` is text the crashing process controls in part: the path column is the
file's name (a process chooses its file names: a newline is printed as ``\\012``), and the
addresses are padded to 8 hex digits while ``/proc/<pid>/map_files/`` names its entries
``%lx-%lx`` without padding. A path taken from ``maps`` and opened below ``/proc/<pid>/root``
follows whatever the process planted under that name (an absolute symlink to any host file).
So a mapped file is opened only as ``map_files/<start>-<end>``, the entry name built from the
*integers* of the mapping: the kernel's reference to the very inode that is mapped. The path
text is kept only to *name* a copy (resolved by the safe writer inside the core's directory)
and for the metadata. The executable comes from ``/proc/<pid>/exe``, also a kernel reference.
"""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass, field

#: Largest maps text read (a process can have very many mappings; the rest is ignored).
MAX_MAPS_BYTES = 8 << 20


@dataclass(frozen=True)
class Mapping:
    """One line of ``/proc/<pid>/maps`` that maps a file."""

    start: int
    end: int
    offset: int
    device: str
    inode: int
    #: The path column, as printed (attacker-chosen text: never opened).
    path: str

    @property
    def entry(self) -> str:
        """The ``map_files`` entry name: ``%lx-%lx`` of the integers, no padding."""
        return f"{self.start:x}-{self.end:x}"


def parse_maps(text: str) -> list[Mapping]:
    """The file mappings of a ``maps`` text; pseudo mappings ([heap], [vdso], anonymous) are left out."""
    out: list[Mapping] = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) != 6 or not parts[5].startswith("/"):
            continue
        addresses, _perms, offset, device, inode, path = parts
        start, sep, end = addresses.partition("-")
        try:
            m = Mapping(int(start, 16), int(end, 16), int(offset, 16), device, int(inode), path.rstrip())
        except ValueError:
            continue
        if sep and m.end > m.start and m.inode:
            out.append(m)
    return out


def mapped_files(mappings: list[Mapping]) -> list[Mapping]:
    """The first mapping of each file (device + inode), in mapping order."""
    seen: set[tuple[str, int]] = set()
    out = []
    for m in mappings:
        key = (m.device, m.inode)
        if key not in seen:
            seen.add(key)
            out.append(m)
    return out


@dataclass
class MappedFile:
    """An open mapped file of a process (the fd is ours: close it)."""

    #: Name as the process saw it (the maps text, or the exe link inside its root): a label only.
    path: str
    fd: int
    size: int
    is_exe: bool = False
    build_id: str | None = None
    #: Why it could not be opened (fd is -1 then).
    error: str | None = None
    #: Where its first mapping starts (0 for the executable's entry).
    start: int = 0
    extra: dict = field(default_factory=dict)

    def close(self) -> None:
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1


def _open_regular(path: str) -> tuple[int, int]:
    """Open a kernel reference (a ``map_files`` entry or ``exe``); only a regular file is kept."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(0, "not a regular file", path)
        return fd, st.st_size
    except BaseException:
        os.close(fd)
        raise


def read_maps(global_pid: int, proc: str = "/proc") -> list[Mapping]:
    with open(f"{proc}/{global_pid}/maps", "rb") as f:
        return parse_maps(f.read(MAX_MAPS_BYTES).decode("utf-8", "replace"))


def open_mapped_files(global_pid: int, exe: str = "", *, proc: str = "/proc") -> list[MappedFile]:
    """The executable (first) and every mapped file of a pinned process, each opened once.

    ``exe`` is the executable's path inside the process's root (a label). A mapping whose
    ``map_files`` entry cannot be opened is returned with ``error`` set: there is no fallback
    to a path.
    """
    base = f"{proc}/{global_pid}"
    out: list[MappedFile] = []
    exe_key: tuple[int, int] | None = None
    try:
        fd, size = _open_regular(f"{base}/exe")
        st = os.fstat(fd)
        exe_key = (st.st_dev, st.st_ino)
        out.append(MappedFile(exe or "/proc/exe", fd, size, is_exe=True))
    except OSError as exc:
        out.append(MappedFile(exe or "/proc/exe", -1, 0, is_exe=True, error=exc.strerror or str(exc)))
    for m in mapped_files(read_maps(global_pid, proc)):
        if m.path.endswith(" (deleted)"):
            out.append(MappedFile(m.path, -1, 0, error="deleted"))
            continue
        try:
            fd, size = _open_regular(f"{base}/map_files/{m.entry}")
        except OSError as exc:
            out.append(MappedFile(m.path, -1, 0, error=f"unreadable: {exc.strerror or exc}"))
            continue
        st = os.fstat(fd)
        if exe_key == (st.st_dev, st.st_ino):
            os.close(fd)  # the executable, already first
            continue
        out.append(MappedFile(m.path, fd, size, start=m.start))
    return out


#: auxv entry type of the dynamic linker's load address.
AT_BASE = 7


def interpreter_base(global_pid: int, proc: str = "/proc") -> int | None:
    """AT_BASE from ``/proc/<pid>/auxv`` (written by the kernel at exec): where the dynamic
    linker was loaded; None for a static executable or when unreadable."""
    try:
        with open(f"{proc}/{global_pid}/auxv", "rb") as f:
            raw = f.read(1 << 14)
    except OSError:
        return None
    word = 8 if len(raw) % 16 == 0 else 4
    order = sys.byteorder
    for i in range(0, len(raw) - 2 * word + 1, 2 * word):
        kind = int.from_bytes(raw[i:i + word], order)
        if kind == 0:
            break
        if kind == AT_BASE:
            value = int.from_bytes(raw[i + word:i + 2 * word], order)
            return value or None
    return None


def close_all(files: list[MappedFile]) -> None:
    for f in files:
        f.close()
