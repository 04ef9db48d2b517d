"""The pods of this node, as the API server knows them: a cache for metadata, never the crash path.

A background thread lists and then watches ``/api/v1/pods?fieldSelector=spec.nodeName=<node>``
and keeps an in-memory index by pod UID (namespace, name, labels, controller owner, container
name -> image, container ID -> name, annotations). The crash path only reads that index
(:meth:`PodIndex.lookup`, a dict lookup under a lock): an unreachable or slow API server costs
nothing but the extra metadata. The HTTP edge is the kubernetes client with raw JSON
(``_preload_content=False``); everything else here is pure and tested on recorded responses.

Watch semantics followed: start the watch from the list's ``resourceVersion``, move it forward
with every event (and BOOKMARKs), restart from the last one when the server ends the stream,
relist on ``410 Gone`` (an ``ERROR`` event with an ``Expired`` Status, or an HTTP 410), back off
exponentially on any other error.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from webhook import constants
from webhook.agent.metadata import PodView
from webhook.agent.podvolumes import volume_mounts

log = logging.getLogger(__name__)

#: How long the API server holds one watch open (it ends it after that; we restart it).
WATCH_TIMEOUT_SECONDS = 300
#: First and largest pause after a failed list/watch.
BACKOFF_START_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 60.0


def strip_runtime(container_id: str) -> str:
    """``containerd://<id>`` -> ``<id>`` (the form the cgroup path carries)."""
    return container_id.split("://", 1)[-1] if container_id else ""


def controller_owner(meta: dict) -> str | None:
    """``Kind/name`` of the controller ownerReference (else the first one), or None."""
    refs = [r for r in meta.get("ownerReferences") or [] if isinstance(r, dict)]
    if not refs:
        return None
    ref = next((r for r in refs if r.get("controller")), refs[0])
    return f"{ref.get('kind', '')}/{ref.get('name', '')}"


@dataclass(frozen=True)
class PodRecord:
    """One pod of this node: the :class:`PodView` the crash path uses, plus what gcore needs."""

    view: PodView
    node: str = ""
    annotations: dict[str, str] = field(default_factory=dict)
    resource_version: str = ""
    phase: str = ""
    #: spec.hostname (else the pod name): what %h expands to in the pod.
    hostname: str = ""


def pod_record(pod: dict) -> PodRecord | None:
    """A raw Pod (API JSON) -> :class:`PodRecord`; None when it has no UID."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    uid = meta.get("uid")
    if not uid:
        return None
    images: dict[str, str] = {}
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for c in spec.get(key) or []:
            if c.get("name") and c.get("image"):
                images[c["name"]] = c["image"]
    ids: dict[str, str] = {}
    for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for cs in status.get(key) or []:
            name = cs.get("name")
            if not name:
                continue
            images.setdefault(name, cs.get("image") or "")
            for cid in (cs.get("containerID"), (cs.get("lastState") or {}).get("terminated", {}).get("containerID")):
                if cid:
                    ids.setdefault(strip_runtime(cid), name)
    volumes: dict[str, tuple[str, str]] = {}
    for v in spec.get("volumes") or []:
        kind = next((k for k in v if k != "name"), "")
        if v.get("name"):
            volumes[v["name"]] = (kind, str((v.get("persistentVolumeClaim") or {}).get("claimName") or ""))
    mount_names: dict[str, list[tuple[str, str]]] = {}
    for key in ("initContainers", "containers"):
        for c in spec.get(key) or []:
            mount_names[c.get("name", "")] = [(m.get("mountPath", ""), m.get("name", "")) for m in c.get("volumeMounts") or []]
    view = PodView(namespace=meta.get("namespace", ""), name=meta.get("name", ""), uid=uid, images=images,
                   container_ids=ids, labels=dict(meta.get("labels") or {}), owner=controller_owner(meta),
                   volumes=volumes, mount_names=mount_names, mounts=volume_mounts(pod),
                   unwritable=str((meta.get("annotations") or {}).get(constants.ANN_UNWRITABLE) or ""))
    return PodRecord(view=view, node=spec.get("nodeName", "") or "", annotations=dict(meta.get("annotations") or {}),
                     resource_version=meta.get("resourceVersion", ""), phase=status.get("phase", ""),
                     hostname=spec.get("hostname") or meta.get("name", ""))


class PodIndex:
    """Pods by UID; every method is safe from any thread and never blocks on I/O."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pods: dict[str, PodRecord] = {}
        #: Set once the first list arrived (tests, health).
        self.synced = threading.Event()

    def replace(self, pods: Iterable[dict]) -> list[PodRecord]:
        """A fresh list: pods missing from it are gone."""
        records = [r for r in (pod_record(p) for p in pods) if r is not None]
        with self._lock:
            self._pods = {r.view.uid: r for r in records}
        self.synced.set()
        return records

    def apply(self, kind: str, pod: dict) -> PodRecord | None:
        """One watch event (ADDED, MODIFIED, DELETED); returns the record (None if unusable)."""
        record = pod_record(pod)
        if record is None:
            return None
        with self._lock:
            if kind == "DELETED":
                self._pods.pop(record.view.uid, None)
            else:
                self._pods[record.view.uid] = record
        return record

    def record(self, uid: str) -> PodRecord | None:
        with self._lock:
            return self._pods.get(uid)

    def records(self) -> list[PodRecord]:
        """Every pod of this node (a copy: recovery looks for pods sharing a claim)."""
        with self._lock:
            return list(self._pods.values())

    def lookup(self, uid: str) -> PodView | None:
        """The crash path's ``pod_lookup``."""
        record = self.record(uid)
        return record.view if record else None

    def __len__(self) -> int:
        with self._lock:
            return len(self._pods)


def iter_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Newline-delimited records from a byte stream cut anywhere."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            if line.strip():
                yield line
    if pending.strip():
        yield pending


class Expired(Exception):
    """The resourceVersion is too old (410 Gone): list again."""


def parse_event(line: bytes) -> tuple[str, dict]:
    """One watch line -> (type, object); an ERROR with code 410 raises :class:`Expired`."""
    event = json.loads(line)
    kind, obj = event.get("type", ""), event.get("object") or {}
    if kind == "ERROR":
        if obj.get("code") == 410 or obj.get("reason") in ("Expired", "Gone"):
            raise Expired(obj.get("message", "resource version expired"))
        raise RuntimeError(f"watch error: {obj.get('code')} {obj.get('message')}")
    return kind, obj


class PodWatcher:
    """Lists and watches this node's pods into a :class:`PodIndex`, in a daemon thread.

    ``on_pod(record)`` (optional) is called from the watch thread for every pod listed, added or
    modified: it must return quickly (the gcore requests queue work elsewhere).
    """

    def __init__(self, api_client: Any, node_name: str, index: PodIndex | None = None, *,
                 on_pod: Callable[[PodRecord], None] | None = None,
                 watch_timeout: int = WATCH_TIMEOUT_SECONDS, request_timeout: float = 30.0,
                 backoff_start: float = BACKOFF_START_SECONDS, backoff_max: float = BACKOFF_MAX_SECONDS) -> None:
        if not node_name:
            raise ValueError("the pod watch needs the node name (--node-name, downward API spec.nodeName)")
        self.api_client = api_client
        self.node_name = node_name
        self.index = index or PodIndex()
        self.on_pod = on_pod
        self.watch_timeout = watch_timeout
        self.request_timeout = request_timeout
        self.backoff_start = backoff_start
        self.backoff_max = backoff_max
        self.stop_event = threading.Event()
        self.resource_version = ""
        self.lists = 0
        self.watches = 0
        self.errors = 0
        self._thread: threading.Thread | None = None
        self._response: Any = None

    @property
    def field_selector(self) -> str:
        return f"spec.nodeName={self.node_name}"

    # --- the HTTP edge -------------------------------------------------------------------------
    def _core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api_client)

    def list_once(self) -> None:
        resp = self._core().list_pod_for_all_namespaces(
            field_selector=self.field_selector, _preload_content=False, _request_timeout=self.request_timeout)
        doc = json.loads(resp.data)
        self.lists += 1
        records = self.index.replace(doc.get("items") or [])
        self.resource_version = (doc.get("metadata") or {}).get("resourceVersion", "")
        log.info("pods listed", extra={"node": self.node_name, "pods": len(records),
                                       "resource_version": self.resource_version})
        self._notify(records)

    def watch_once(self) -> int:
        """One watch request until the server ends it; returns the number of events."""
        resp = self._core().list_pod_for_all_namespaces(
            field_selector=self.field_selector, watch=True, resource_version=self.resource_version,
            allow_watch_bookmarks=True, timeout_seconds=self.watch_timeout, _preload_content=False,
            _request_timeout=(self.request_timeout, self.watch_timeout + self.request_timeout))
        self.watches += 1
        self._response = resp
        count = 0
        try:
            for line in iter_lines(resp.stream(65536, decode_content=True)):
                if self.stop_event.is_set():
                    break
                kind, obj = parse_event(line)
                count += 1
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    record = self.index.apply(kind, obj)
                    if record is not None and kind != "DELETED":
                        self._notify([record])
                if rv:
                    self.resource_version = rv
        finally:
            self._response = None
            try:
                resp.release_conn()
            except Exception:  # noqa: BLE001
                pass
        return count

    def _notify(self, records: list[PodRecord]) -> None:
        if self.on_pod is None:
            return
        for record in records:
            try:
                self.on_pod(record)
            except Exception:  # noqa: BLE001 - a consumer's bug must not stop the watch
                log.exception("pod watch consumer failed", extra={"pod_uid": record.view.uid})

    # --- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        """List, watch, relist on 410, back off on errors; until :meth:`stop`."""
        from kubernetes.client.exceptions import ApiException

        backoff = self.backoff_start
        need_list = True
        while not self.stop_event.is_set():
            started = time.monotonic()
            try:
                if need_list:
                    self.list_once()
                    need_list = False
                events = self.watch_once()
                backoff = self.backoff_start
                if events == 0 and time.monotonic() - started < 1.0:
                    self.stop_event.wait(1.0)  # a server that ends watches at once: no hot loop
                continue
            except Expired as exc:
                log.info("pod watch expired, listing again", extra={"detail": str(exc)})
                need_list = True
                continue
            except ApiException as exc:
                if exc.status == 410:
                    need_list = True
                    continue
                self.errors += 1
                log.warning("pod watch failed", extra={"status": exc.status, "detail": str(exc.reason)})
            except Exception as exc:  # noqa: BLE001 - unreachable API, bad JSON: retry later
                self.errors += 1
                log.warning("pod watch failed", extra={"detail": repr(exc)})
            self.stop_event.wait(backoff * (0.5 + random.random() / 2))
            backoff = min(self.backoff_max, backoff * 2)

    def start(self) -> "PodWatcher":
        self._thread = threading.Thread(target=self.run, name="agent-podwatch", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        resp = self._response
        if resp is not None:
            try:
                resp.shutdown() if hasattr(resp, "shutdown") else resp.close()
            except Exception:  # noqa: BLE001
                pass
        if self._thread is not None:
            self._thread.join(timeout)

