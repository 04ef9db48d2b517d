"""Limits that protect the node: a per-container rate limit and the node location's retention."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from webhook.agent.writer import TMP_PREFIX

log = logging.getLogger(__name__)

#: A temporary file untouched this long is a leftover of a killed agent, not a dump in flight.
STALE_TMP_SECONDS = 3600.0


@dataclass
class RateLimiter:
    """At most ``count`` cores per key per ``window`` seconds; the rest are counted.

    Keyed by pod UID + container name (a crash loop of one container must not fill its volume
    nor starve the others). Thread-safe: the agent handles several dumps at once.
    """

    count: int = 1
    window: float = 300.0
    clock: Callable[[], float] = time.time
    _seen: dict[tuple[str, str], deque] = field(default_factory=dict)
    _dropped: dict[tuple[str, str], int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def allow(self, key: tuple[str, str]) -> bool:
        """Record an attempt for ``key``; True when it may be written."""
        if self.count <= 0 or self.window <= 0:
            return True
        now = self.clock()
        with self._lock:
            times = self._seen.setdefault(key, deque())
            while times and now - times[0] >= self.window:
                times.popleft()
            if len(times) < self.count:
                times.append(now)
                return True
            self._dropped[key] = self._dropped.get(key, 0) + 1
            return False

    def dropped(self, key: tuple[str, str]) -> int:
        """How many cores of ``key`` the limit has refused so far."""
        with self._lock:
            return self._dropped.get(key, 0)

    def prune(self) -> None:
        """Forget keys whose window has passed (bounded memory on a busy node)."""
        now = self.clock()
        with self._lock:
            for key in [k for k, t in self._seen.items() if not t or now - t[-1] >= self.window]:
                del self._seen[key]


@dataclass(frozen=True)
class RetentionResult:
    removed: tuple[str, ...]
    freed_bytes: int
    kept_bytes: int


#: Not cores: the build-id store, a core's sysroot of links and its saved binaries (the last
#: two go with their core).
_STORE_DIR = ".symbols"
_COMPANION_DIRS = (".sysroot", ".d")


def _core_groups(root: str) -> list[tuple[float, int, list[str]]]:
    """Cores under ``root`` with their companions (``.json``, ``.sysroot/``, ``.d/``), as
    (mtime, bytes, paths); the build-id store is not walked (see :func:`_collect_store`)."""
    out = []
    for key, paths in _walk_groups(root).items():
        if not any(p == key or p == key + ".json" for p in paths):
            continue  # a companion without its core: left for the store collection below
        mtime, total = _measure(paths)
        out.append((mtime, total, paths))
    return out


def _walk_groups(root: str) -> dict[str, list[str]]:
    """core path -> the paths that go with it (itself included when present)."""
    groups: dict[str, list[str]] = {}
    for dirpath, dirs, files in os.walk(root):
        for key, path in _companions(dirpath, dirs):
            groups.setdefault(key, []).append(path)
        for name in files:
            path = os.path.join(dirpath, name)
            if name.startswith(TMP_PREFIX) and _in_flight(path):
                continue
            key = path[: -len(".json")] if name.endswith(".json") else path
            groups.setdefault(key, []).append(path)
    return groups


def _companions(dirpath: str, dirs: list[str]) -> list[tuple[str, str]]:
    """(core path, companion path) of the companion directories in ``dirs``; the walk is kept
    out of them and of the build-id store (``dirs`` is changed in place)."""
    companions = [d for d in dirs if d.endswith(_COMPANION_DIRS)]
    dirs[:] = [d for d in dirs if d != _STORE_DIR and d not in companions]
    out = []
    for name in companions:
        base = name[: -len(".sysroot")] if name.endswith(".sysroot") else name[: -len(".d")]
        out.append((os.path.join(dirpath, base), os.path.join(dirpath, name)))
    return out


def _in_flight(tmp_path: str) -> bool:
    """A temporary file written lately is a dump in flight (one gone meanwhile: nothing to do)."""
    try:
        return time.time() - os.lstat(tmp_path).st_mtime < STALE_TMP_SECONDS
    except FileNotFoundError:
        return True


def _measure(paths: list[str]) -> tuple[float, int]:
    """(newest mtime of the files, bytes on disk) of a core's paths; directories add their bytes
    but not their time, paths gone meanwhile nothing."""
    total = 0
    mtime = 0.0
    for p in paths:
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        total += st.st_blocks * 512
        if not stat.S_ISDIR(st.st_mode):
            mtime = max(mtime, st.st_mtime)
    return mtime, total


def _collect_store(root: str) -> list[str]:
    """Build-id store entries (``.symbols/buildid/<id>``) no remaining sysroot links to: removed."""
    referenced: set[str] = set()
    stores: list[str] = []
    for dirpath, dirs, files in os.walk(root):
        if os.path.basename(dirpath) == _STORE_DIR:
            stores.append(dirpath)
            dirs[:] = []
            continue
        for name in files + dirs:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                target = os.readlink(path)
                if "/buildid/" in target:
                    referenced.add(target.split("/buildid/", 1)[1].split("/", 1)[0])
    removed = []
    for store in stores:
        base = os.path.join(store, "buildid")
        for bid in os.listdir(base) if os.path.isdir(base) else []:
            if bid not in referenced:
                shutil.rmtree(os.path.join(base, bid), ignore_errors=True)
                removed.append(os.path.join(base, bid))
    return removed


def _metadata_of(paths: list[str]) -> dict[str, dict]:
    """core path -> its metadata, for the ``.json`` files among ``paths`` (small, the agent's)."""
    out = {}
    for path in paths:
        if not path.endswith(".json"):
            continue
        try:
            with open(path, "rb") as f:
                doc = json.loads(f.read(1 << 20))
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict):
            out[path[: -len(".json")]] = doc
    return out


def apply_retention(root: str, *, max_age_seconds: float, max_total_bytes: int,
                    now: float | None = None, on_removed: Callable[[dict], Any] | None = None) -> RetentionResult:
    """Delete cores (and their metadata) older than ``max_age_seconds``, then the oldest until
    the total on disk is under ``max_total_bytes``. 0 disables either rule. Empty directories
    left behind are removed (never ``root`` itself). Run it periodically from the agent.

    ``on_removed(doc)`` hears of each core removed, with its metadata (the agent wrote it, in its
    own directory): the crash index deletes the core's CoreDump with it."""
    if not os.path.isdir(root):
        return RetentionResult((), 0, 0)
    now = time.time() if now is None else now
    groups = sorted(_core_groups(root), key=lambda g: g[0])
    removed, freed, total = _select(groups, now, max_age_seconds, max_total_bytes)
    docs = _metadata_of(removed) if on_removed is not None else {}
    _remove(removed)
    if on_removed is not None:
        _tell_removed(docs, on_removed)
    if removed:
        removed.extend(_collect_store(root))
    _remove_empty_dirs(root)
    return RetentionResult(tuple(removed), freed, total)


def _select(groups: list[tuple[float, int, list[str]]], now: float, max_age_seconds: float,
            max_total_bytes: int) -> tuple[list[str], int, int]:
    """The paths to remove (too old, then the oldest over the total), bytes freed and kept."""
    removed: list[str] = []
    freed = 0
    keep = []
    for mtime, size, paths in groups:
        if max_age_seconds > 0 and now - mtime > max_age_seconds:
            removed.extend(paths)
            freed += size
        else:
            keep.append((mtime, size, paths))
    total = sum(g[1] for g in keep)
    while max_total_bytes > 0 and total > max_total_bytes and keep:
        _mtime, size, paths = keep.pop(0)
        removed.extend(paths)
        freed += size
        total -= size
    return removed, freed, total


def _remove(paths: list[str]) -> None:
    for path in paths:
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)  # a companion (sysroot of links, saved binaries): links not followed
            else:
                os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("retention could not remove %s: %s", path, exc)


def _tell_removed(docs: dict[str, dict], on_removed: Callable[[dict], Any]) -> None:
    """``on_removed`` hears of each core really gone, best-effort."""
    for core, doc in docs.items():
        if not os.path.lexists(core):
            try:
                on_removed(doc)
            except Exception:  # noqa: BLE001 - the index is told best-effort
                log.exception("could not report a removed core")


def _remove_empty_dirs(root: str) -> None:
    """Directories left empty under ``root`` (deepest first; never ``root`` itself)."""
    for dirpath, _dirs, _files in sorted(os.walk(root), key=lambda w: -len(w[0])):
        if dirpath != root:
            try:
                os.rmdir(dirpath)
            except OSError:
                pass
