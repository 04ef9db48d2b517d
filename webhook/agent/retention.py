"""Retention per signature in a core directory: the first N and the latest M cores of one crash
signature are kept, the others are deleted with their metadata, sysroot and saved binaries.

Runs off the crash path, on the signature worker's thread, right after a core got its signature:
a crash-looping pod on a NAS or PVC keeps the cores that matter (how it started, how it goes)
instead of piling up forever. The crash index keeps counting them (``status.count``).

Everything happens through the core directory's fd (the pod's volume: the tenant's files):
names are read with ``scandir`` on the fd, metadata opened with ``openat2`` refusing every
symlink, entries removed with ``unlinkat``/``rmdir`` relative to fds, never following a link.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from dataclasses import dataclass

from webhook.agent.writer import RESOLVE_NAME, openat2

log = logging.getLogger(__name__)

#: Largest metadata file read while deciding.
MAX_METADATA_BYTES = 1 << 20
#: Companion directories of a core (its sysroot of links, its saved binaries).
COMPANION_DIRS = (".sysroot", ".d")


@dataclass(frozen=True)
class Kept:
    """One core of a signature as found in the directory."""

    name: str  # the core file's name
    time: float
    doc: dict


def plan(cores: list[Kept], keep_first: int, keep_latest: int) -> list[Kept]:
    """The cores to delete: all but the first ``keep_first`` and the latest ``keep_latest`` (by time)."""
    ordered = sorted(cores, key=lambda c: (c.time, c.name))
    if keep_first + keep_latest <= 0 or len(ordered) <= keep_first + keep_latest:
        return []
    return ordered[keep_first: len(ordered) - keep_latest]


def _read_json(dirfd: int, name: str) -> dict | None:
    try:
        fd = openat2(dirfd, name, os.O_RDONLY | os.O_NONBLOCK, resolve=RESOLVE_NAME)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.read(fd, MAX_METADATA_BYTES)
    finally:
        os.close(fd)
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def same_signature(dirfd: int, signature: str, kind: str) -> list[Kept]:
    """The cores in ``dirfd`` whose metadata has ``signature`` (and the same kind: crash/snapshot)."""
    return [c for c in cores_in(dirfd) if c.doc.get("signature") == signature
            and ("snapshot" if c.doc.get("gcore") else "crash") == kind]


def cores_in(dirfd: int) -> list[Kept]:
    """Every core in ``dirfd`` that has its metadata beside it."""
    out = []
    with os.scandir(dirfd) as entries:
        for entry in entries:
            if not entry.name.endswith(".json") or not entry.is_file(follow_symlinks=False):
                continue
            doc = _read_json(dirfd, entry.name)
            if not doc or ("digest" not in doc and "sha256" not in doc):  # "sha256": older metadata
                continue
            core = entry.name[: -len(".json")]
            if doc.get("file") and doc["file"] != core:
                continue
            try:
                when = float(doc.get("time") or 0)
            except (TypeError, ValueError):
                when = 0.0
            out.append(Kept(core, when, doc))
    return out


def remove_tree(dirfd: int, name: str) -> None:
    """Remove ``name`` below ``dirfd``: a file or link is unlinked; a directory is emptied through
    fds (links inside are unlinked, never followed) and removed."""
    try:
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dirfd)
        return
    sub = openat2(dirfd, name, os.O_RDONLY | os.O_DIRECTORY, resolve=RESOLVE_NAME)
    try:
        with os.scandir(sub) as entries:
            names = [e.name for e in entries]
        for child in names:
            remove_tree(sub, child)
    finally:
        os.close(sub)
    os.rmdir(name, dir_fd=dirfd)


def prune(dirfd: int, signature: str, kind: str, keep_first: int, keep_latest: int, *,
          max_age: float = 0.0, now: float = 0.0) -> list[dict]:
    """Apply the rules in one directory; returns the metadata of the cores deleted.

    ``max_age`` > 0 also deletes every core there (any signature) older than that many seconds."""
    doomed: dict[str, Kept] = {}
    if signature and keep_first + keep_latest > 0:
        doomed.update((c.name, c) for c in plan(same_signature(dirfd, signature, kind), keep_first, keep_latest))
    if max_age > 0:
        doomed.update((c.name, c) for c in cores_in(dirfd) if c.time and now - c.time > max_age)
    gone = []
    for core in sorted(doomed.values(), key=lambda c: (c.time, c.name)):
        try:
            for name in (core.name, *(core.name + s for s in COMPANION_DIRS)):
                remove_tree(dirfd, name)
            os.unlink(core.name + ".json", dir_fd=dirfd)  # last: a core is never left without it
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("retention could not remove a core", extra={"core": core.name, "error": str(exc)})
            continue
        gone.append(core.doc)
    if gone:
        log.info("retention removed cores of one signature",
                 extra={"signature": signature, "removed": [d.get("path") for d in gone]})
    return gone
