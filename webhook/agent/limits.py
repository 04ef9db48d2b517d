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
    groups: dict[str, list[str]] = {}
    for dirpath, dirs, files in os.walk(root):
        companions = [d for d in dirs if d.endswith(_COMPANION_DIRS)]
        dirs[:] = [d for d in dirs if d != _STORE_DIR and d not in companions]
        for name in companions:
            base = name[: -len(".sysroot")] if name.endswith(".sysroot") else name[: -len(".d")]
            groups.setdefault(os.path.join(dirpath, base), []).append(os.path.join(dirpath, name))
        for name in files:
            path = os.path.join(dirpath, name)
            if name.startswith(TMP_PREFIX):
                try:
                    if time.time() - os.lstat(path).st_mtime < STALE_TMP_SECONDS:
                        continue  # a dump in flight
                except FileNotFoundError:
                    continue
            key = path[: -len(".json")] if name.endswith(".json") else path
            groups.setdefault(key, []).append(path)
    out = []
    for key, paths in groups.items():
        if not any(p == key or p == key + ".json" for p in paths):
            continue  # a companion without its core: left for the store collection below
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
        out.append((mtime, total, paths))
    return out


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
    docs = _metadata_of(removed) if on_removed is not None else {}
    for path in removed:
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)  # a companion (sysroot of links, saved binaries): links not followed
            else:
                os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("retention could not remove %s: %s", path, exc)
    for core, doc in docs.items():
        if on_removed is not None and not os.path.lexists(core):
            try:
                on_removed(doc)
            except Exception:  # noqa: BLE001 - the index is told best-effort
                log.exception("could not report a removed core")
    if removed:
        removed.extend(_collect_store(root))
    for dirpath, _dirs, _files in sorted(os.walk(root), key=lambda w: -len(w[0])):
        if dirpath != root:
            try:
                os.rmdir(dirpath)
            except OSError:
                pass
    return RetentionResult(tuple(removed), freed, total)
