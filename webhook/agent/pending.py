"""Crashes of pods the pod watch did not know yet: their names are filled in once it does.

At the crash the agent never waits for the API server (webhook/agent/identity.py): a core of a
pod the watch has not seen is written, labelled by pod UID and container ID only
(``identity: unverified``), and its summary is kept here, durably (``<host_dir>/unverified/``),
without any Event or notification. When the watch lists or sees that pod UID (at the latest at
the agent's next start), the names are filled in from the API server's answer:

- node location: the core (and its metadata, saved binaries and sysroot) moves from
  ``cores/_unverified/pod-<uid>/<container id>/`` to ``cores/<namespace>/<pod>/<container>/``,
  the sysroot's links re-pointed from the ``_unverified`` build-id store to the namespace's;
- pod volume: the metadata next to the core is rewritten through a live process of the same
  container, after checking (st_dev, st_ino) that it is still the very file written;

then the Event and the notification go out under the verified names. A record whose pod never
shows up is kept until ``max_age`` and then dropped (logged): nothing ever names a namespace the
agent has not verified.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import queue
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from webhook.agent import metadata as meta
from webhook.agent.background import QueueWorker
from webhook.agent.identity import VERIFIED, Resolved, apply_view
from webhook.agent.metadata import PodView
from webhook.agent.procinfo import container_process
from webhook.agent.symbols import STORE_DIR, SYSROOT_SUFFIX
from webhook.agent.writer import SafeRoot, replace_small_file
from webhook.constants import METADATA_SUFFIX

log = logging.getLogger(__name__)

PENDING_DIR = "unverified"
#: A crash whose pod the watch never reports is forgotten after this long.
MAX_AGE_SECONDS = 7 * 24 * 3600.0


def _names(summary: dict, view: PodView) -> dict[str, Any]:
    r = apply_view(Resolved(pod_uid=summary.get("pod_uid"), container_id=summary.get("container_id")), view)
    return {"namespace": r.namespace, "pod": r.pod, "container": r.container, "image": r.image,
            "labels": r.labels, "owner": r.owner, "identity": VERIFIED}


def _store_of(rel_dir: str) -> str:
    """The build-id store of a node-location core directory (``<first part>/.symbols``), as
    webhook/agent/pinned.py places it: one store per namespace (and one for ``_unverified``)."""
    return posixpath.join(rel_dir.split("/")[0], STORE_DIR)


def _sysroot_name(summary: dict, name: str) -> str:
    """The core's sysroot directory name (``<core>.sysroot``, or the numbered one the crash made)."""
    recorded = posixpath.basename(str(summary.get("sysroot") or ""))
    return recorded if recorded.startswith(name + SYSROOT_SUFFIX) else name + SYSROOT_SUFFIX


def relink_sysroot(root: str, old_dir: str, new_dir: str, sysroot: str) -> int:
    """A sysroot moved from ``old_dir`` to ``new_dir`` (both relative to the node location
    ``root``): its links into the old directory's build-id store now point into the new one's,
    each stored file hard-linked there first (the same file, no copy). The old store's entries
    stay for the cores still linking them; retention removes those no link uses any more.
    Returns how many links were re-pointed."""
    old_store, new_store = _store_of(old_dir), _store_of(new_dir)
    top = os.path.join(root, new_dir, sysroot)
    moved = 0
    for dirpath, dirs, files in os.walk(top):
        inside = os.path.relpath(dirpath, top)
        for entry in dirs + files:
            link = os.path.join(dirpath, entry)
            if not os.path.islink(link):
                continue
            target = os.readlink(link)
            was = posixpath.normpath(posixpath.join(old_dir, sysroot, inside, target))
            if not was.startswith(old_store + "/buildid/"):
                continue  # a root link (lib -> usr/lib) or a path inside the sysroot: unchanged
            now = new_store + was[len(old_store):]
            try:
                if not os.path.lexists(os.path.join(root, now)):
                    os.makedirs(os.path.dirname(os.path.join(root, now)), mode=0o755, exist_ok=True)
                    os.link(os.path.join(root, was), os.path.join(root, now), follow_symlinks=False)
                os.unlink(link)
                os.symlink(posixpath.relpath(now, posixpath.normpath(posixpath.join(new_dir, sysroot, inside))), link)
                moved += 1
            except OSError as exc:
                log.warning("a moved core's sysroot link could not follow it", extra={"path": link, "error": str(exc)})
    return moved


class PendingIdentities(QueueWorker):
    """Keeps unverified crash summaries; fills them in from the pod watch in its own thread."""

    def __init__(self, host_dir: str, node_cores_dir: str, *, publish: Callable[[dict], None] | None = None,
                 proc: str = "/proc", max_age: float = MAX_AGE_SECONDS, clock: Callable[[], float] = time.time) -> None:
        self.dir = os.path.join(host_dir, PENDING_DIR)
        self.node_cores_dir = node_cores_dir
        #: Where filled-in summaries go (the crash processor's ``publish``: Event, notification).
        self.publish = publish
        self.proc = proc
        self.max_age = max_age
        self.clock = clock
        self._lock = threading.Lock()
        self._by_uid: dict[str, list[str]] = {}
        self.filled: list[dict] = []  # the summaries filled in (tests, debugging)
        self._load()
        super().__init__("agent-identity", maxsize=256)

    # --- keeping ---------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return
        for name in names:
            if not name.endswith(".json"):
                continue
            doc = self._read(name) or {}
            uid = doc.get("summary", {}).get("pod_uid")
            if not uid or self.clock() - doc.get("added", 0) > self.max_age:
                log.warning("unverified crash forgotten: its pod was never seen", extra={"entry": name})
                self._remove(name)
                continue
            self._by_uid.setdefault(uid, []).append(name)

    def _read(self, name: str) -> dict | None:
        try:
            with open(os.path.join(self.dir, name), encoding="utf-8") as f:
                doc = json.load(f)
            return doc if isinstance(doc, dict) else None
        except (OSError, ValueError):
            return None

    def _remove(self, name: str) -> None:
        try:
            os.unlink(os.path.join(self.dir, name))
        except FileNotFoundError:
            pass

    def add(self, summary: dict) -> None:
        """Keep a crash summary until the watch knows its pod (called from the crash path,
        after the process was released)."""
        uid = summary.get("pod_uid")
        if not uid:
            return
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        name = f"{int(self.clock() * 1000)}-{summary.get('global_pid', 0)}-{secrets.token_hex(4)}.json"
        tmp = os.path.join(self.dir, "." + name)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"added": self.clock(), "summary": summary}, f, default=list)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(self.dir, name))
        with self._lock:
            self._by_uid.setdefault(uid, []).append(name)
        log.info("crash of a pod the pod watch does not know yet: labelled by pod UID and container ID until it does",
                 extra={"pod_uid": uid, "container_id": summary.get("container_id"),
                        "pid": summary.get("global_pid"), "path": summary.get("path")})

    def __len__(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._by_uid.values())

    # --- from the pod watch (must not block) ------------------------------------------------
    def on_pod(self, record: Any) -> None:
        with self._lock:
            waiting = bool(self._by_uid.get(record.view.uid))
        if waiting:
            try:
                self._queue.put_nowait(record.view)
            except queue.Full:
                pass  # the next event or relist of the pod brings it again

    # --- filling in (QueueWorker's thread) --------------------------------------------------
    def _handle(self, view: PodView) -> None:
        with self._lock:
            names = list(self._by_uid.get(view.uid, []))
        for name in names:
            doc = self._read(name)
            if doc is not None:
                self.fill(doc["summary"], view)
            self._remove(name)
            with self._lock:
                left = [n for n in self._by_uid.get(view.uid, []) if n != name]
                if left:
                    self._by_uid[view.uid] = left
                else:
                    self._by_uid.pop(view.uid, None)

    def _failed(self, item: Any, exc: Exception) -> None:
        log.exception("filling in a crash's names failed", extra={"pod_uid": getattr(item, "uid", None)})

    def fill(self, summary: dict, view: PodView) -> dict:
        """Fill the names in, move or rewrite what is on disk, then publish. Returns the summary."""
        names = _names(summary, view)
        old_path = summary.get("path")
        if summary.get("destination") == "node" and summary.get("host_path"):
            moved = self._move_node(summary, names)
            if moved:
                summary["path"] = summary["host_path"] = moved
        elif summary.get("destination") == "pod" and old_path:
            self._rewrite_in_pod(summary, names)
        summary.update(names)
        log.info("crash names verified by the pod watch", extra={
            "namespace": names["namespace"], "pod": names["pod"], "container": names["container"],
            "pod_uid": summary.get("pod_uid"), "pid": summary.get("global_pid"), "path": summary.get("path"),
            "was": old_path})
        self.filled.append(summary)
        if self.publish is not None and summary.get("outcome") in ("written", "partial", "failed"):
            self.publish(summary)
        return summary

    def _move_node(self, summary: dict, names: dict) -> str | None:
        """``cores/_unverified/...`` -> ``cores/<ns>/<pod>/<container>/``; the new core path."""
        from webhook.agent.target import component as _component  # the same sanitising as at the crash

        src = summary["host_path"]
        root = os.path.realpath(self.node_cores_dir)
        if os.path.commonpath([root, os.path.realpath(src)]) != root:
            return None
        short = (summary.get("container_id") or "unknown-container")[:12]
        rel = "/".join((_component(names["namespace"], "_unknown-namespace"),
                        _component(names["pod"], f"pod-{summary.get('pod_uid')}"),
                        _component(names["container"], short)))
        name = os.path.basename(src)
        with SafeRoot.open(root) as safe:
            dst_fd = safe.open_dir(rel)
            try:
                src_fd = safe.open_dir(os.path.relpath(os.path.dirname(src), root), create=False)
                try:
                    if os.path.lexists(os.path.join(root, rel, name)):
                        return None  # never overwrite: stays where it is, names still published
                    sysroot = _sysroot_name(summary, name)
                    for moving in (name, name + ".d", sysroot):
                        try:
                            os.rename(moving, moving, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
                        except FileNotFoundError:
                            pass
                    old_rel = os.path.relpath(os.path.dirname(src), root)
                    relink_sysroot(root, old_rel, rel, sysroot)
                    new_path = posixpath.join(root, rel, name)
                    self._rewrite_metadata(src_fd, dst_fd, name, names, new_path, summary,
                                           sysroot=posixpath.join(root, rel, sysroot),
                                           store=posixpath.join(root, _store_of(rel)))
                finally:
                    os.close(src_fd)
            finally:
                os.close(dst_fd)
        for d in (os.path.dirname(src), os.path.dirname(os.path.dirname(src))):
            try:
                os.rmdir(d)  # empty now: the unverified pod's directories
            except OSError:
                break
        return new_path

    def _rewrite_metadata(self, src_fd: int, dst_fd: int, name: str, names: dict, new_path: str,
                          summary: dict, *, sysroot: str, store: str) -> None:
        try:
            fd = os.open(name + METADATA_SUFFIX, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_fd)
        except FileNotFoundError:
            return
        with os.fdopen(fd, "rb") as f:
            doc = meta.loads(f.read(1 << 22))
        doc.update(names)
        if doc.get("binaries_dir"):
            doc["binaries_dir"] = new_path + ".d"
        for key, value in (("sysroot", sysroot), ("symbols_store", store)):
            if doc.get(key):
                doc[key] = summary[key] = value
        doc["path"] = new_path
        replace_small_file(dst_fd, name + METADATA_SUFFIX, meta.dumps(doc), mode=0o644)
        os.unlink(name + METADATA_SUFFIX, dir_fd=src_fd)

    def _rewrite_in_pod(self, summary: dict, names: dict) -> bool:
        """Through a live process of the same container, if the core is still the same file."""
        file_id = summary.get("file_id")
        cid, uid = summary.get("container_id"), summary.get("pod_uid")
        if not file_id or not cid or not uid:
            return False
        try:
            pid = container_process(cid, uid, None, self.proc)
        except (LookupError, OSError) as exc:
            log.info("pod metadata stays unverified: no live process of its container",
                     extra={"pod_uid": uid, "path": summary.get("path"), "detail": str(exc)})
            return False
        directory, name = posixpath.split(summary["path"])
        try:
            with SafeRoot.open(f"{self.proc}/{pid}/root") as root:
                dirfd = root.open_dir(directory, create=False)
                try:
                    st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                    if [st.st_dev, st.st_ino] != list(file_id):
                        return False  # another file under that name now: not ours to touch
                    fd = os.open(name + METADATA_SUFFIX, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
                    with os.fdopen(fd, "rb") as f:
                        doc = meta.loads(f.read(1 << 22))
                    doc.update(names)
                    replace_small_file(dirfd, name + METADATA_SUFFIX, meta.dumps(doc), mode=0o644,
                                       uid=st.st_uid, gid=st.st_gid)
                    return True
                finally:
                    os.close(dirfd)
        except (OSError, ValueError) as exc:
            log.warning("could not fill in the metadata in the pod's volume",
                        extra={"pod_uid": uid, "path": summary.get("path"), "error": str(exc)})
            return False
