"""A pinned process's executable and libraries: kept by build-id, optionally copied next to the core.

Everything here runs *while the crashing process is pinned* (inside ``CrashProcessor.handle``),
and reads the files only through the kernel's references (:mod:`webhook.agent.mappings`:
``/proc/<pid>/exe`` and ``/proc/<pid>/map_files/<start>-<end>``), never through a path taken
from ``maps``. The files are opened once per crash and serve three uses:

- the build-id store (:mod:`webhook.agent.symbols`, on by default): each file stored once in the
  core's storage, ``<core>.sysroot/`` linking the process's paths to it;
- ``--save-binaries``: full copies as ``<core>.d/`` in sysroot layout (the older, per-core form);
- the signature worker (:mod:`webhook.agent.analysis`), which keeps the open fds until gdb ran.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
from dataclasses import dataclass

from webhook.agent.creds import Credentials, CredentialsError, as_process_credentials
from webhook.agent.mappings import MappedFile, close_all, interpreter_base, open_mapped_files
from webhook.agent.symbols import StoreSpec, elf_facts, keep_symbols
from webhook.agent.writer import RESOLVE_NAME, OutputFile, SafeRoot, openat2

log = logging.getLogger(__name__)

#: Suffix of the directory of saved binaries next to a core (``--save-binaries``).
BINARIES_SUFFIX = ".d"
COPY_CHUNK = 1 << 20

#: Top-level links of merged-/usr systems: the dynamic linker records libraries under these names
#: (``/lib/x86_64-linux-gnu/libc.so.6``) while /proc/<pid>/maps shows the real ``/usr/lib`` path;
#: gdb looks the recorded name up in the sysroot, so the links are recreated there.
ROOT_LINKS = ("lib", "lib64", "lib32", "libx32", "bin", "sbin")


def root_links(global_pid: int, proc: str = "/proc") -> dict[str, str]:
    """name -> relative target of the process root's top-level symlinks (``lib -> usr/lib``).

    Only the link text is read (``readlink`` of a single name below the root): nothing is
    followed, and a target with ``..`` is ignored.
    """
    links = {}
    for name in ROOT_LINKS:
        try:
            target = os.readlink(f"{proc}/{global_pid}/root/{name}")
        except OSError:
            continue
        target = target.lstrip("/")
        if target and ".." not in target.split("/"):
            links[name] = target
    return links


def _add_links(dirfd: int, links: dict[str, str]) -> None:
    for name, target in links.items():
        try:
            os.symlink(target, name, dir_fd=dirfd)  # symlinkat: creates, never follows
        except OSError:
            pass  # a real directory of that name exists (not merged /usr)


def _make_unique_dir(dirfd: int, name: str, uid: int | None, gid: int | None) -> str:
    """mkdirat ``name`` (or ``name.1``...) in ``dirfd``: always a directory we just made."""
    for n in range(100):
        candidate = name if n == 0 else f"{name}.{n}"
        try:
            os.mkdir(candidate, 0o755, dir_fd=dirfd)
        except FileExistsError:
            continue
        if uid is not None or gid is not None:
            try:
                os.chown(candidate, -1 if uid is None else uid, -1 if gid is None else gid, dir_fd=dirfd,
                         follow_symlinks=False)
            except OSError:
                pass
        return candidate
    raise OSError(errno.EEXIST, "no free name for the binaries directory", name)


def _copy_fd_into(dirfd: int, rel: str, f: MappedFile, uid: int | None, gid: int | None,
                  creds: Credentials | None) -> None:
    """Copy an open mapped file to ``rel`` below ``dirfd`` (resolved inside it)."""
    parent, name = posixpath.split(rel)
    root = SafeRoot(os.dup(dirfd), label="core directory")
    try:
        with as_process_credentials(creds):
            sub = root.open_dir(parent or "/", uid=uid, gid=gid)
            try:
                out = OutputFile(sub, name, mode=0o644)
            except BaseException:
                os.close(sub)
                raise
    finally:
        root.close()
    try:
        with out:
            offset = 0
            while chunk := os.pread(f.fd, COPY_CHUNK, offset):
                out.write(chunk)
                offset += len(chunk)
            out.chown(uid, gid)
            out.commit()
    finally:
        os.close(sub)


def save_binaries(files: list[MappedFile], dirfd: int, core_name: str, budget: int, links: dict[str, str], *,
                  uid: int | None, gid: int | None, creds: Credentials | None = None) -> dict:
    """Copy the opened files as ``<core_name>.d/`` (sysroot layout) under ``budget`` bytes.

    The executable comes first, then libraries in mapping order; a file that does not fit in what
    is left is skipped. Returns the metadata keys.
    """
    copied: list[str] = []
    skipped: list[dict] = []
    left = budget
    dirname = None
    for f in files:
        rel = "/".join(p for p in f.path.split("/") if p and p != ".")
        if f.fd < 0:
            skipped.append({"path": f.path, "reason": f.error or "unreadable"})
            continue
        if not f.path.startswith("/") or ".." in rel.split("/") or not rel:
            skipped.append({"path": f.path, "reason": "unsafe path"})
            continue
        if f.size > left:
            skipped.append({"path": f.path, "reason": "budget"})
            continue
        try:
            if dirname is None:
                with as_process_credentials(creds):
                    dirname = _make_unique_dir(dirfd, core_name + BINARIES_SUFFIX, uid, gid)
            _copy_fd_into(dirfd, posixpath.join(dirname, rel), f, uid, gid, creds)
        except (OSError, CredentialsError) as exc:
            if dirname is None:
                return {"binaries_error": f"{getattr(exc, 'strerror', None) or exc}"}
            skipped.append({"path": f.path, "reason": f"copy failed: {getattr(exc, 'strerror', None) or exc}"})
            continue
        left -= f.size
        copied.append(f.path)
    if dirname is None:
        return {"binaries": [], "binaries_skipped": skipped}
    try:
        bdir = openat2(dirfd, dirname, os.O_RDONLY | os.O_DIRECTORY, resolve=RESOLVE_NAME)
        try:
            with as_process_credentials(creds):
                _add_links(bdir, links)
        finally:
            os.close(bdir)
    except (OSError, CredentialsError):
        pass
    return {"binaries_dir": dirname, "binaries": copied, "binaries_skipped": skipped,
            "binaries_bytes": budget - left}


def mark_interpreter(files: list[MappedFile], base: int | None) -> None:
    """Note on the dynamic linker's file the path the executable names it by (PT_INTERP): gdb
    looks it up by that name (``/lib64/ld-linux-x86-64.so.2``), not by the mapped path."""
    exe = next((f for f in files if f.is_exe and f.fd >= 0), None)
    if exe is None or base is None:
        return
    interp = elf_facts(exe.fd).interp
    if not interp or not interp.startswith("/"):
        return
    for f in files:
        if f.start == base and not f.is_exe and f.fd >= 0:
            if interp != f.path:
                f.extra["interpreter"] = interp
            return


@dataclass(frozen=True)
class KeepOptions:
    """What to keep for one crash (from the agent's settings and the crash's target)."""

    symbols: bool
    symbols_budget: int
    save_binaries: bool
    save_binaries_budget: int
    uid: int | None = None
    gid: int | None = None
    creds: Credentials | None = None
    keep_free: int = 0


def keep_binaries(global_pid: int, exe: str, dirfd: int, core_name: str, store_parent_fd: int,
                  store_from_core_dir: str, opts: KeepOptions, *, want_files: bool,
                  proc: str = "/proc") -> tuple[dict, list[MappedFile]]:
    """Open the mapped files once, keep what ``opts`` asks for; (metadata keys, open files).

    The files are returned open when ``want_files`` (for the signature worker, which closes
    them), else closed here. Never raises for the usual trouble.
    """
    if not (opts.symbols or opts.save_binaries or want_files):
        return {}, []
    try:
        files = open_mapped_files(global_pid, exe, proc=proc)
    except OSError as exc:
        return {"symbols_error": f"maps unreadable: {exc.strerror or exc}"}, []
    keys: dict = {}
    try:
        if opts.symbols:
            mark_interpreter(files, interpreter_base(global_pid, proc))
        links = root_links(global_pid, proc) if (opts.symbols or opts.save_binaries) else {}
        if opts.symbols:
            spec = StoreSpec(store_parent_fd, store_from_core_dir, opts.symbols_budget, uid=opts.uid, gid=opts.gid,
                             creds=opts.creds, keep_free=opts.keep_free)
            keys.update(keep_symbols(files, dirfd, core_name, spec, links))
        if opts.save_binaries:
            keys.update(save_binaries(files, dirfd, core_name, opts.save_binaries_budget, links, uid=opts.uid,
                                      gid=opts.gid, creds=opts.creds))
    except BaseException:
        close_all(files)
        raise
    if not want_files:
        close_all(files)
        files = []
    return keys, files
