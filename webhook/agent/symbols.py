"""Symbols that outlive the image: a crash's executable and libraries kept once per ELF build-id.

While the crashing process is pinned, the agent reads the build-id of every file it mapped
(opened through ``/proc/<pid>/map_files`` only: :mod:`webhook.agent.mappings`) and stores the
files it has not stored yet in the core's own storage, in the layout debuginfod serves::

    <store>/buildid/<build-id>/executable

(``DEBUGINFOD_URLS=file://<store>``, ``debuginfod-find executable <id>``). A Deployment crashing
50 times stores its binaries once: a file whose build-id is already there costs a ``stat``.
Next to each core, ``<core>.sysroot/`` holds relative symlinks from the paths the process saw
(``/usr/lib/x86_64-linux-gnu/libc.so.6``, plus the root's ``lib -> usr/lib`` links) into the
store: ``gdb -iex 'set sysroot <core>.sysroot' <core>.sysroot/<exe> <core>`` finds everything,
in any container that mounts the volume, with no hand-typed path.

Everything created goes through the safe writer below the core directory's fd, with the crashing
process's credentials; a store entry that is not a regular file (something planted) is never
followed nor replaced. The store has a byte budget: files that would exceed it are not stored
(the metadata says so), and a file is stored only while it takes less than a quarter of the
volume's free space above ``keep_free_bytes``: the next cores need the room more.
"""

from __future__ import annotations

import io
import logging
import os
import posixpath
import stat
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSegment
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import NoteSection
from elftools.elf.segments import InterpSegment, NoteSegment

from webhook.agent.creds import Credentials, CredentialsError, as_process_credentials
from webhook.agent.mappings import MappedFile
from webhook.agent.writer import RESOLVE_NAME, OutputFile, SafeRoot, openat2, rename_noreplace

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

log = logging.getLogger(__name__)

#: The store's directory name, in the core's directory (pod volume) or the namespace's (node).
STORE_DIR = ".symbols"
#: Suffix of a core's sysroot of links into the store.
SYSROOT_SUFFIX = ".sysroot"
#: The file debuginfod serves for a build-id.
EXECUTABLE = "executable"
COPY_CHUNK = 1 << 20
_CACHE_MAX = 4096


class _PreadFile(io.RawIOBase):
    """A read-only, seekable view of an fd that never moves the fd's own offset."""

    def __init__(self, fd: int, size: int) -> None:
        self._fd, self._size, self._pos = fd, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = offset if whence == 0 else self._pos + offset if whence == 1 else self._size + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        view = memoryview(buffer).cast("B")
        data = os.pread(self._fd, len(view), self._pos)
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)


@dataclass(frozen=True)
class ElfFacts:
    """What the store and the sysroot need from one ELF file."""

    build_id: str | None = None
    #: DT_SONAME: the name the dynamic linker records (``libstdc++.so.6`` for ``...so.6.0.30``).
    soname: str | None = None
    #: PT_INTERP of an executable: the path its dynamic linker is recorded under.
    interp: str | None = None


_cache: dict[tuple[int, int, int, int], ElfFacts] = {}
_cache_lock = threading.Lock()


def elf_facts(fd: int) -> ElfFacts:
    """Build-id (PT_NOTE segments first: present in stripped files too; then note sections),
    SONAME and interpreter of the ELF file open at ``fd``; empty when it is not ELF.

    Cached by (device, inode, size, mtime): a crash loop parses each file once.
    """
    st = os.fstat(fd)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    found: str | None = None
    soname = interp = None
    try:
        elf = ELFFile(io.BufferedReader(_PreadFile(fd, st.st_size)))
        # pyelftools makes PT_NOTE a NoteSegment, PT_INTERP an InterpSegment, PT_DYNAMIC a
        # DynamicSegment and SHT_NOTE a NoteSection.
        for seg in elf.iter_segments():
            if isinstance(seg, NoteSegment):
                if not found:
                    found = _gnu_build_id(seg.iter_notes())
            elif isinstance(seg, InterpSegment):
                interp = seg.get_interp_name().strip("\0") or None
            elif isinstance(seg, DynamicSegment):
                for tag in seg.iter_tags("DT_SONAME"):
                    soname = str(getattr(tag, "soname", "")) or None  # pyelftools sets it by setattr
        if not found:
            for sec in elf.iter_sections():
                if isinstance(sec, NoteSection):
                    found = _gnu_build_id(sec.iter_notes())
                    if found:
                        break
    except (ELFError, ValueError, OSError, EOFError, KeyError, UnicodeDecodeError):
        pass
    facts = ElfFacts(found, soname if soname and "/" not in soname else None, interp)
    with _cache_lock:
        if len(_cache) >= _CACHE_MAX:
            _cache.pop(next(iter(_cache)))
        _cache[key] = facts
    return facts


def build_id(fd: int) -> str | None:
    """The GNU build-id (hex) of an ELF file open at ``fd``, None when it has none."""
    return elf_facts(fd).build_id


def _gnu_build_id(notes) -> str | None:
    for note in notes:
        if note["n_type"] == "NT_GNU_BUILD_ID" and isinstance(note["n_desc"], str):
            desc = note["n_desc"].lower()
            if 2 <= len(desc) <= 128 and all(c in "0123456789abcdef" for c in desc):
                return desc
    return None


@dataclass(frozen=True)
class StoreSpec:
    """Where a core's store is and how it is written."""

    #: A directory fd the store lives in (the core's directory, or the namespace's for the node).
    store_parent_fd: int
    #: The store as seen from the core's directory (relative: ``.symbols`` or ``../../.symbols``).
    store_from_core_dir: str
    #: Most bytes the store may hold.
    budget: int
    uid: int | None = None
    gid: int | None = None
    creds: Credentials | None = None
    #: The agent's keep_free_bytes: the store takes at most a quarter of the free space above it.
    keep_free: int = 0


#: Symbols never take more than this share of the volume's free space (above keep_free): the next
#: cores come first.
FREE_SHARE = 4


def _store_usage(fd: int) -> int:
    """Bytes of the executables already in a store's ``buildid/`` directory fd."""
    total = 0
    for entry in os.scandir(fd):
        if not entry.is_dir(follow_symlinks=False):
            continue
        try:
            st = os.stat(f"{entry.name}/{EXECUTABLE}", dir_fd=fd, follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            total += st.st_size
    return total


def _copy_fd(src: int, size: int, out: OutputFile) -> None:
    offset = 0
    while offset < size:
        try:
            n = os.copy_file_range(src, out.fd, min(COPY_CHUNK * 16, size - offset), offset)
        except OSError:
            n = -1
        if n <= 0:  # not supported across these filesystems: plain reads
            while chunk := os.pread(src, COPY_CHUNK, offset):
                out.write(chunk)
                offset += len(chunk)
            return
        offset += n


class _Store:
    """The store's ``buildid/`` directory, opened (and created) only when first needed."""

    def __init__(self, spec: StoreSpec) -> None:
        self.spec = spec
        self.fd = -1
        self.usage: int | None = None

    def open(self, create: bool) -> int:
        if self.fd < 0:
            with as_process_credentials(self.spec.creds):
                store = SafeRoot(os.dup(self.spec.store_parent_fd), label="store parent")
                try:
                    self.fd = store.open_dir(f"{STORE_DIR}/buildid", create=create, uid=self.spec.uid,
                                             gid=self.spec.gid)
                finally:
                    store.close()
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _present(store: _Store, bid: str) -> bool | None:
    """True: stored; False: absent; None: something else sits there (never followed)."""
    try:
        fd = store.open(create=False)
        st = os.stat(f"{bid}/{EXECUTABLE}", dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    except NotADirectoryError:
        return None
    return True if stat.S_ISREG(st.st_mode) else None


def _store_one(store: _Store, f: MappedFile) -> str:
    """Store one file under its build-id; returns "stored", "present" or why not."""
    assert f.build_id
    spec = store.spec
    present = _present(store, f.build_id)
    if present:
        return "present"
    if present is None:
        return "refused: the store entry is not a regular file"
    st = os.fstatvfs(spec.store_parent_fd)
    if f.size * FREE_SHARE > st.f_bavail * st.f_frsize - spec.keep_free:
        return "low_space"
    buildid_fd = store.open(create=True)
    if store.usage is None:
        store.usage = _store_usage(buildid_fd)
    if store.usage + f.size > spec.budget:
        return "budget"
    root = SafeRoot(os.dup(buildid_fd), label="build-id store")
    try:
        with as_process_credentials(spec.creds):
            sub = root.open_dir(f.build_id, uid=spec.uid, gid=spec.gid)
    finally:
        root.close()
    try:
        with as_process_credentials(spec.creds):
            out = OutputFile(sub, EXECUTABLE, mode=0o644)
        with out:
            _copy_fd(f.fd, f.size, out)
            out.chown(spec.uid, spec.gid)
            out._sync_close()
            try:
                rename_noreplace(sub, out.tmp_name, EXECUTABLE)
            except FileExistsError:
                return "present"  # another crash stored it meanwhile (the temp file goes)
            out.final_name = EXECUTABLE
        store.usage += f.size
        return "stored"
    finally:
        os.close(sub)


def _link_target(link_path: str, store_from_core_dir: str, bid: str) -> str:
    """The relative target of ``<core>.sysroot/<link_path>`` pointing into the store."""
    depth = len([p for p in link_path.split("/") if p]) - 1  # directories between the core's and the link
    return "../" * depth + f"{store_from_core_dir}/buildid/{bid}/{EXECUTABLE}"


def _safe_rel(path: str) -> str | None:
    parts = [p for p in path.split("/") if p and p != "."]
    if not parts or ".." in parts or not path.startswith("/"):
        return None
    return "/".join(parts)


def _make_sysroot(core_dirfd: int, name: str, links: list[tuple[str, str]], root_links: dict[str, str],
                  spec: StoreSpec) -> str | None:
    """``<core>.sysroot``: ``links`` (path inside the process root, build-id) as relative symlinks."""
    root = SafeRoot(os.dup(core_dirfd), label="core directory")
    try:
        with as_process_credentials(spec.creds):
            for n in range(100):
                candidate = name if n == 0 else f"{name}.{n}"
                try:
                    os.mkdir(candidate, 0o755, dir_fd=core_dirfd)
                    break
                except FileExistsError:
                    continue
            else:
                return None
            if spec.uid is not None or spec.gid is not None:
                try:
                    os.chown(candidate, -1 if spec.uid is None else spec.uid, -1 if spec.gid is None else spec.gid,
                             dir_fd=core_dirfd, follow_symlinks=False)
                except OSError:
                    pass
            for path, bid in links:
                rel = _safe_rel(path)
                if rel is None:
                    continue
                parent, base = posixpath.split(rel)
                try:
                    pfd = root.open_dir(posixpath.join(candidate, parent), uid=spec.uid, gid=spec.gid)
                except OSError:
                    continue  # e.g. a root link (lib -> usr/lib) already covers it
                try:
                    os.symlink(_link_target(posixpath.join(candidate, rel), spec.store_from_core_dir, bid), base,
                               dir_fd=pfd)
                except OSError:
                    pass
                finally:
                    os.close(pfd)
            sfd = openat2(core_dirfd, candidate, os.O_RDONLY | os.O_DIRECTORY, resolve=RESOLVE_NAME)
            try:
                for link, target in root_links.items():
                    try:
                        os.symlink(target, link, dir_fd=sfd)
                    except OSError:
                        pass
            finally:
                os.close(sfd)
        return candidate
    finally:
        root.close()


def link_names(f: MappedFile, facts: ElfFacts, files: list[MappedFile]) -> list[str]:
    """The paths gdb may look ``f`` up by: its mapped path, the SONAME beside it (what the dynamic
    linker records for ``libfoo.so.1 -> libfoo.so.1.2.3``), and for the dynamic linker itself the
    executable's PT_INTERP (``/lib64/ld-linux-x86-64.so.2``)."""
    names = [f.path]
    if facts.soname and facts.soname != posixpath.basename(f.path):
        names.append(posixpath.join(posixpath.dirname(f.path), facts.soname))
    if f.extra.get("interpreter"):
        names.append(f.extra["interpreter"])
    return names


def keep_symbols(files: list[MappedFile], core_dirfd: int, core_name: str, spec: StoreSpec,
                 root_links: dict[str, str]) -> dict:
    """Store the build-ids of ``files`` and make ``<core>.sysroot``; the metadata keys.

    Never raises for the usual trouble (permission, full volume): it is in the metadata.
    """
    entries: list[dict] = []
    links: list[tuple[str, str]] = []
    exe_id = None
    store = _Store(spec)
    try:
        for f in files:
            entry: dict = {"path": f.path}
            if f.fd < 0:
                entry["stored"] = f.error or "unreadable"
            else:
                facts = elf_facts(f.fd)
                f.build_id = f.build_id or facts.build_id
                if not f.build_id:
                    entry["stored"] = "no build-id"
                else:
                    entry["build_id"] = f.build_id
                    try:
                        entry["stored"] = _store_one(store, f)
                    except (OSError, CredentialsError) as exc:
                        entry["stored"] = f"failed: {getattr(exc, 'strerror', None) or exc}"
                    if entry["stored"] in ("stored", "present"):
                        links += [(p, f.build_id) for p in link_names(f, facts, files)]
                    if f.is_exe:
                        exe_id = f.build_id
            entries.append(entry)
    finally:
        store.close()
    keys: dict = {"build_ids": entries, "symbols_store": spec.store_from_core_dir,
                  "symbols_stored_bytes": sum(f.size for f, e in zip(files, entries, strict=True) if e.get("stored") == "stored")}
    if exe_id:
        keys["build_id"] = exe_id
    if links:
        try:
            sysroot = _make_sysroot(core_dirfd, core_name + SYSROOT_SUFFIX, links, root_links, spec)
        except (OSError, CredentialsError) as exc:
            sysroot = None
            keys["symbols_error"] = f"sysroot: {getattr(exc, 'strerror', None) or exc}"
        if sysroot:
            keys["sysroot"] = sysroot
    return keys
