"""Write files inside a container's view, safely: nothing in the container can redirect us.

Every lookup goes through ``openat2(2)`` with ``RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`` on a
directory fd of the container's root (``/proc/<pid>/root``): absolute symlinks and ``..`` are
resolved against that root, exactly as the kernel resolves them for the crashing process, and
``/proc/<pid>/root``-style magic links are refused. Missing directories are made one component
at a time with ``mkdirat`` (a single name: nothing to follow), each re-resolved from the root.
Cores are written under a temporary ``O_EXCL`` name in the target directory and renamed with
``RENAME_NOREPLACE``: a final name is never overwritten (``.1``, ``.2``... on collision).
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
from dataclasses import dataclass

from webhook.agent import syscalls

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
#: How every path inside a container is resolved.
RESOLVE_CONTAINER = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS
#: How a single name we create inside a directory fd is opened: no symlinks at all.
RESOLVE_NAME = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
RENAME_NOREPLACE = 1
#: Collision suffixes tried before giving up (".1" ... ".999").
MAX_SUFFIX = 999
TMP_PREFIX = ".coredump-tmp."


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_renameat2: ctypes._NamedFuncPointer | None  # the stubs' name for a libc function (annotation only)
try:
    _renameat2 = _libc.renameat2
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    _renameat2.restype = ctypes.c_int
except AttributeError:  # pragma: no cover - glibc < 2.28
    _renameat2 = None


class UnsafePath(OSError):
    """A path tried to leave its root (symlink, ``..`` or magic link) or is not what we made."""


def openat2(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = RESOLVE_CONTAINER) -> int:
    """``openat2(2)`` through ctypes; retries EAGAIN/EINTR (a rename raced the lookup)."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode if flags & (os.O_CREAT | getattr(os, "O_TMPFILE", 0)) else 0, resolve)
    raw = os.fsencode(path)
    nr = syscalls.number("openat2")
    for _ in range(64):
        fd = _syscall(ctypes.c_long(nr), ctypes.c_int(dirfd), ctypes.c_char_p(raw),
                      ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err in (errno.EAGAIN, errno.EINTR):
            continue
        if err == errno.EXDEV or (err == errno.ELOOP and resolve & (RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS)):
            raise UnsafePath(err, f"{os.strerror(err)} (refused: would leave its root or follow a link)", path)
        raise OSError(err, os.strerror(err), path)
    raise OSError(errno.EAGAIN, "openat2 kept racing with renames", path)


def rename_noreplace(dirfd: int, old: str, new: str) -> None:
    """Atomic rename that fails with EEXIST instead of replacing ``new``.

    ``renameat2(RENAME_NOREPLACE)``; on filesystems without it (EINVAL: some FUSE, old NFS)
    ``linkat`` + ``unlinkat`` (a hard link never replaces either).
    """
    if _renameat2 is not None:
        if _renameat2(dirfd, os.fsencode(old), dirfd, os.fsencode(new), RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), new)
    try:
        os.link(old, new, src_dir_fd=dirfd, dst_dir_fd=dirfd, follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise
        # Last resort (no hard links, e.g. some object-store FUSE): check then rename.
        try:
            os.stat(new, dir_fd=dirfd, follow_symlinks=False)
        except FileNotFoundError:
            os.rename(old, new, src_dir_fd=dirfd, dst_dir_fd=dirfd)
            return
        raise OSError(errno.EEXIST, "exists", new) from exc
    os.unlink(old, dir_fd=dirfd)


def _split(path: str) -> list[str]:
    return [p for p in path.split("/") if p and p != "."]


@dataclass
class SafeRoot:
    """A root directory (a container's ``/proc/<pid>/root``, or the node cores dir) as an fd.

    Every path given to it is resolved inside it: ``/a/b`` and ``a/b`` mean the same.
    """

    fd: int
    label: str = ""

    @classmethod
    def open(cls, path: str) -> SafeRoot:
        """Open ``path`` (it may itself be the magic link ``/proc/<pid>/root``: we follow it
        once, here, on purpose; nothing inside it is followed that way)."""
        return cls(os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC), label=path)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> SafeRoot:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def stat(self, path: str) -> os.stat_result:
        fd = openat2(self.fd, path or "/", os.O_PATH)
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def open_dir(self, path: str, *, create: bool = True, mode: int = 0o755,
                 uid: int | None = None, gid: int | None = None) -> int:
        """An ``O_RDONLY|O_DIRECTORY`` fd of ``path`` inside the root, creating what is missing.

        Created directories are chowned to ``uid``/``gid`` when given (the crashing process
        can then clean up after itself); existing ones are left alone.
        """
        parts = _split(path)
        try:
            return openat2(self.fd, "/" + "/".join(parts), os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            if not create:
                raise
        # Find the deepest existing prefix, then create the rest one name at a time.
        depth = len(parts) - 1
        while depth > 0:
            try:
                parent = openat2(self.fd, "/" + "/".join(parts[:depth]), os.O_PATH | os.O_DIRECTORY)
                break
            except FileNotFoundError:
                depth -= 1
        else:
            parent = openat2(self.fd, "/", os.O_PATH | os.O_DIRECTORY)
        try:
            for i in range(depth, len(parts)):
                name = parts[i]
                try:
                    os.mkdir(name, mode, dir_fd=parent)
                    made = True
                except FileExistsError:
                    made = False  # raced, or it is a symlink: re-resolved from the root below
                full = "/" + "/".join(parts[: i + 1])
                child = openat2(self.fd, full, os.O_PATH | os.O_DIRECTORY)
                if made and (uid is not None or gid is not None):
                    try:
                        os.chown(name, -1 if uid is None else uid, -1 if gid is None else gid,
                                 dir_fd=parent, follow_symlinks=False)
                    except OSError:
                        pass  # e.g. NFS root squash: the directory still works
                os.close(parent)
                parent = child
        except BaseException:
            os.close(parent)
            raise
        os.close(parent)
        return openat2(self.fd, "/" + "/".join(parts), os.O_RDONLY | os.O_DIRECTORY)


class OutputFile:
    """A file being written under a temporary name in ``dirfd``; :meth:`commit` names it.

    The final name is never overwritten: :meth:`commit` tries ``name``, ``name.1``, ...
    (:meth:`replace` is for files that are ours to update). As a context manager, the
    temporary file is removed unless it was committed.
    """

    def __init__(self, dirfd: int, name: str, *, mode: int = 0o600, tmp_name: str | None = None) -> None:
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"not a file name: {name!r}")
        if tmp_name is not None and (not tmp_name.startswith(TMP_PREFIX) or "/" in tmp_name):
            raise ValueError(f"not a temporary name: {tmp_name!r}")
        self.dirfd = dirfd
        self.name = name
        #: chosen by the caller when it must record it first (journal.py)
        self.tmp_name = tmp_name or f"{TMP_PREFIX}{secrets.token_hex(6)}.{name}"[:255]
        # Read-write: a core is read back after its process is released (digest, holes).
        self.fd = openat2(dirfd, self.tmp_name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                          mode, RESOLVE_NAME)
        self.final_name: str | None = None

    def __enter__(self) -> OutputFile:
        return self

    def __exit__(self, *exc) -> None:
        self.discard()  # after commit/replace: nothing left to do

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Write all of ``data`` at the current position."""
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def chown(self, uid: int | None, gid: int | None) -> None:
        if uid is None and gid is None:
            return
        try:
            os.fchown(self.fd, -1 if uid is None else uid, -1 if gid is None else gid)
        except OSError:
            pass  # root-squashed NFS and friends: the file is still written

    def commit(self, name: str | None = None, ext: str = "", *, sync: bool = True) -> str:
        """fsync, then rename to ``name + ext`` or, when taken, ``name.1 + ext``, ``name.2 + ext``...

        ``name`` defaults to the requested name; ``ext`` (".zst", ".partial") stays last.
        ``sync=False`` renames at once and keeps ``fd`` open: :meth:`sync` later makes it
        durable (the crash path names the core while the process is pinned, and fsyncs it
        after the release).
        """
        base = name or self.name
        if sync:
            self._sync_close()
        for n in range(MAX_SUFFIX + 1):
            candidate = (base if n == 0 else f"{base}.{n}") + ext
            try:
                rename_noreplace(self.dirfd, self.tmp_name, candidate)
            except FileExistsError:
                continue
            except OSError as exc:
                if exc.errno == errno.EEXIST:
                    continue
                raise
            self.final_name = candidate
            if sync:
                self._sync_dir()
            return candidate
        raise OSError(errno.EEXIST, f"{base} and {MAX_SUFFIX} suffixed names all exist", base)

    def replace(self) -> None:
        """fsync, then rename over ``name`` whatever entry it is (only for files that are ours)."""
        self._sync_close()
        os.rename(self.tmp_name, self.name, src_dir_fd=self.dirfd, dst_dir_fd=self.dirfd)
        self.final_name = self.name
        self._sync_dir()

    def sync(self) -> None:
        """fsync and close the file (closed even when fsync fails), fsync its directory
        (after ``commit(sync=False)``)."""
        if self.fd >= 0:
            try:
                os.fsync(self.fd)
            finally:
                os.close(self.fd)
                self.fd = -1
        self._sync_dir()

    def _sync_close(self) -> None:
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1

    def _sync_dir(self) -> None:
        try:
            os.fsync(self.dirfd)
        except OSError:
            pass

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.final_name is None:
            try:
                os.unlink(self.tmp_name, dir_fd=self.dirfd)
            except OSError:
                pass


def write_small_file(dirfd: int, name: str, data: bytes, *, mode: int = 0o644,
                     uid: int | None = None, gid: int | None = None) -> str:
    """Write ``data`` as ``name`` (or a suffixed variant) atomically; return the name used."""
    with OutputFile(dirfd, name, mode=mode) as out:
        out.write(data)
        out.chown(uid, gid)
        return out.commit()


def replace_small_file(dirfd: int, name: str, data: bytes, *, mode: int = 0o644,
                       uid: int | None = None, gid: int | None = None) -> None:
    """Write ``data`` under a temporary name and rename it over ``name`` (atomic replace).

    Only for files that are ours to update (a core's metadata): ``rename`` replaces whatever
    entry ``name`` is (a symlink is replaced, never followed) and stays inside ``dirfd``.
    """
    with OutputFile(dirfd, name, mode=mode) as out:
        out.write(data)
        out.chown(uid, gid)
        out.replace()
