"""Retention in pod volumes from the agent's periodic loop, not only after the next crash.

The signature worker prunes a core directory right after a new crash there (retention.py); a
directory that gets no new crash (the pod fixed, gdb missing) would keep its cores forever. So
the agent remembers every pod-volume directory it wrote a core to, in a small JSON file in its
host directory (``pod-dirs.json``: pod UID, container ID, namespace, directory as the container
sees it), and the retention loop prunes each one it can reach: through the root of a live process
of that container (or, after a restart, of the same pod), with that process's credentials (the
tenant's files, as the crash path writes them), the per-signature first-N/latest-M rule and the
age limit. Records of pruned cores are deleted through the crash index; ``.symbols`` entries no
remaining sysroot links to are dropped. A directory no live process mounts is skipped until one
does (nothing else may reach the pod's storage).
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from webhook.agent.creds import CredentialsError, as_process_credentials, parse_credentials
from webhook.agent.procinfo import parse_cgroup
from webhook.agent.retention import cores_in, prune, remove_tree
from webhook.agent.statefile import write_atomically
from webhook.agent.writer import RESOLVE_CONTAINER, RESOLVE_NAME, openat2

log = logging.getLogger(__name__)

#: The file in the agent's host directory.
POD_DIRS_FILE = "pod-dirs.json"
#: Directories remembered (the least recently written go first).
MAX_DIRS = 512
#: A store entry this young may belong to a crash whose sysroot is not linked yet: kept.
STORE_GRACE_SECONDS = 600.0
_STORE = ".symbols"


class PodDirs:
    """The pod-volume directories this agent wrote cores to, kept across restarts."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.entries: OrderedDict[tuple[str, str], dict] = OrderedDict()
        self._lock = threading.Lock()
        self.load()

    def load(self) -> None:
        if not self.path:
            return
        try:
            with open(self.path, "rb") as f:
                doc = json.loads(f.read(1 << 20))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("pod directories unreadable: starting without them", extra={"path": self.path, "error": str(exc)})
            return
        for e in doc.get("dirs", []) if isinstance(doc, dict) else []:
            if (isinstance(e, dict) and all(isinstance(e.get(k), str) for k in ("pod_uid", "container_id", "namespace"))
                    and isinstance(e.get("directory"), str) and e["directory"].startswith("/") and e["pod_uid"]):
                self.entries[(e["pod_uid"], e["directory"])] = e

    def remember(self, summary: dict) -> None:
        """After a core was written to a pod volume (``summary``: the crash's)."""
        if summary.get("destination") != "pod" or summary.get("outcome") not in ("written", "partial"):
            return
        path, pod_uid = summary.get("path"), summary.get("pod_uid")
        if not (isinstance(path, str) and path.startswith("/") and isinstance(pod_uid, str) and pod_uid):
            return
        entry = {"pod_uid": pod_uid, "container_id": str(summary.get("container_id") or ""),
                 "namespace": str(summary.get("namespace") or "") if summary.get("identity") == "verified" else "",
                 "directory": posixpath.dirname(path)}
        key = (pod_uid, entry["directory"])
        with self._lock:
            if self.entries.get(key) == entry:
                self.entries.move_to_end(key)
                return
            self.entries[key] = entry
            self.entries.move_to_end(key)
            while len(self.entries) > MAX_DIRS:
                self.entries.popitem(last=False)
            self._save()

    def _save(self) -> None:
        if not self.path:
            return
        data = json.dumps({"dirs": list(self.entries.values())}).encode()
        try:
            write_atomically(self.path, data)
        except OSError as exc:
            log.warning("pod directories not saved", extra={"path": self.path, "error": str(exc)})


def live_pids(entry: dict, proc: str = "/proc") -> list[int]:
    """Live processes of the entry's container first, then of any container of its pod (negated:
    another container may mount something else at that path, see :func:`prune_pod_dirs`)."""
    same, pod = [], []
    try:
        names = [n for n in os.listdir(proc) if n.isdigit()]
    except OSError:
        return []
    for name in names:
        try:
            with open(f"{proc}/{name}/cgroup") as f:
                ident = parse_cgroup(f.read())
            with open(f"{proc}/{name}/stat") as f:
                state = f.read().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue
        if state == "Z":
            continue
        if entry["container_id"] and ident.container_id == entry["container_id"]:
            same.append(int(name))
        elif ident.pod_uid == entry["pod_uid"]:
            pod.append(int(name))
    return same + [-p for p in pod]


def _referenced(dirfd: int, depth: int = 0) -> set[str]:
    """Build-ids the sysroots below ``dirfd`` link to (links read, never followed)."""
    out: set[str] = set()
    if depth > 32:
        return out
    with os.scandir(dirfd) as entries:
        items = [(e.name, e.is_symlink(), e.is_dir(follow_symlinks=False)) for e in entries]
    for name, is_link, is_dir in items:
        if name == _STORE and depth == 0:
            continue
        if is_link:
            target = os.readlink(name, dir_fd=dirfd)
            if "/buildid/" in target:
                out.add(target.split("/buildid/", 1)[1].split("/", 1)[0])
        elif is_dir and (depth > 0 or name.endswith(".sysroot")):
            try:
                sub = openat2(dirfd, name, os.O_RDONLY | os.O_DIRECTORY, resolve=RESOLVE_NAME)
            except OSError:
                continue
            try:
                out |= _referenced(sub, depth + 1)
            finally:
                os.close(sub)
    return out


def collect_store(dirfd: int, now: float) -> list[str]:
    """Drop ``.symbols/buildid/<id>`` entries no sysroot in ``dirfd`` links to (older than the grace)."""
    try:
        store = openat2(dirfd, f"{_STORE}/buildid", os.O_RDONLY | os.O_DIRECTORY, resolve=RESOLVE_NAME)
    except OSError:
        return []
    removed = []
    try:
        used = _referenced(dirfd)
        with os.scandir(store) as entries:
            ids = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
        for bid in ids:
            if bid in used:
                continue
            st = os.stat(bid, dir_fd=store, follow_symlinks=False)
            if now - st.st_mtime < STORE_GRACE_SECONDS or not stat.S_ISDIR(st.st_mode):
                continue
            remove_tree(store, bid)
            removed.append(bid)
    finally:
        os.close(store)
    return removed


def prune_directory(dirfd: int, keep: tuple[int, int], max_age: float, now: float) -> tuple[list[dict], list[str]]:
    """Every signature's rule and the age limit in one directory; then the store collected."""
    gone: list[dict] = []
    groups = {(c.doc.get("signature"), "snapshot" if c.doc.get("gcore") else "crash") for c in cores_in(dirfd)}
    for signature, kind in sorted(groups, key=lambda g: (str(g[0]), g[1])):
        if signature:
            gone += prune(dirfd, signature, kind, *keep, max_age=max_age, now=now)
    if max_age > 0:
        gone += prune(dirfd, "", "crash", 0, 0, max_age=max_age, now=now)
    return gone, (collect_store(dirfd, now) if gone else [])


def prune_pod_dirs(dirs: PodDirs, *, keep: tuple[int, int], max_age: float, proc: str = "/proc",
                   now: float | None = None, on_pruned: Callable[[dict], Any] | None = None) -> list[dict]:
    """One pass over the remembered directories; returns the metadata of the cores deleted."""
    now = time.time() if now is None else now
    removed: list[dict] = []
    if sum(keep) <= 0 and max_age <= 0:
        return removed
    for entry in list(dirs.entries.values()):
        for signed in live_pids(entry, proc):
            pid, other = abs(signed), signed < 0
            try:
                with open(f"{proc}/{pid}/status") as f:
                    creds = parse_credentials(f.read())
                root = os.open(f"{proc}/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except (OSError, ValueError):
                continue  # gone meanwhile: the next one
            try:
                with as_process_credentials(creds):
                    dirfd = openat2(root, entry["directory"].lstrip("/") or ".", os.O_RDONLY | os.O_DIRECTORY,
                                    resolve=RESOLVE_CONTAINER)
                    try:
                        if other and not any(c.doc.get("pod_uid") == entry["pod_uid"] for c in cores_in(dirfd)):
                            continue  # another container's view of that path holds none of the pod's cores
                        gone, dropped = prune_directory(dirfd, keep, max_age, now)
                    finally:
                        os.close(dirfd)
            except FileNotFoundError:
                continue  # this container does not mount it: another process of the pod may
            except (OSError, CredentialsError) as exc:
                log.warning("pod retention failed", extra={"pod_uid": entry["pod_uid"], "directory": entry["directory"],
                                                          "pid": pid, "error": str(exc)})
                break
            finally:
                os.close(root)
            if gone or dropped:
                log.info("retention removed pod cores", extra={"pod_uid": entry["pod_uid"], "pid": pid,
                                                               "directory": entry["directory"],
                                                               "removed": [d.get("path") for d in gone],
                                                               "store_removed": dropped})
            for doc in gone:
                # the tenant's metadata: a record only in the namespace the crash was verified in
                if on_pruned is not None and entry["namespace"] and doc.get("namespace") == entry["namespace"]:
                    try:
                        on_pruned(doc)
                    except Exception:  # noqa: BLE001
                        log.exception("could not report a pruned core")
            removed += gone
            break
    return removed
