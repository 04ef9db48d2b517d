"""The pods of this node, as the API server knows them: a cache for metadata, never the crash path.

A background thread lists and then watches ``/api/v1/pods?fieldSelector=spec.nodeName=<node>``
and keeps an in-memory index by pod UID (namespace, name, labels, controller owner, container
name -> image, container ID -> name, annotations). The crash path only reads that index
(:meth:`PodIndex.lookup`, a dict lookup under a lock): an unreachable or slow API server costs
nothing but the extra metadata. The HTTP edge is the kubernetes client with raw JSON
(``_preload_content=False``); everything else here is pure and tested on recorded responses.

The list+watch loop (resourceVersion, BOOKMARKs, relist on ``410 Gone``, back-off) is
:class:`webhook.kubewatch.ListWatcher`, shared with the webhook's namespace cache.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from webhook import constants
from webhook.agent.metadata import PodView
from webhook.agent.podvolumes import volume_mounts
from webhook.kubewatch import (
    BACKOFF_MAX_SECONDS,
    BACKOFF_START_SECONDS,
    WATCH_TIMEOUT_SECONDS,
    Expired,
    ListWatcher,
)

log = logging.getLogger(__name__)

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


_SPEC_CONTAINERS = ("initContainers", "containers", "ephemeralContainers")
_STATUS_CONTAINERS = ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses")
#: Ephemeral containers cannot mount volumes of their own: no mount names for them.
_MOUNTING_CONTAINERS = ("initContainers", "containers")


def _spec_images(spec: dict) -> dict[str, str]:
    """container name -> image, from the spec (containers without both left out)."""
    images: dict[str, str] = {}
    for key in _SPEC_CONTAINERS:
        for c in spec.get(key) or []:
            if c.get("name") and c.get("image"):
                images[c["name"]] = c["image"]
    return images


def _status_ids(status: dict, images: dict[str, str]) -> dict[str, str]:
    """container ID -> name from the statuses (the current and the previous run); a status
    also names the image the spec did not (``images`` is filled in place)."""
    ids: dict[str, str] = {}
    for key in _STATUS_CONTAINERS:
        for cs in status.get(key) or []:
            name = cs.get("name")
            if not name:
                continue
            images.setdefault(name, cs.get("image") or "")
            for cid in (cs.get("containerID"), (cs.get("lastState") or {}).get("terminated", {}).get("containerID")):
                if cid:
                    ids.setdefault(strip_runtime(cid), name)
    return ids


def _volumes(spec: dict) -> dict[str, tuple[str, str]]:
    """volume name -> (its kind, the claim name or "")."""
    volumes: dict[str, tuple[str, str]] = {}
    for v in spec.get("volumes") or []:
        kind = next((k for k in v if k != "name"), "")
        if v.get("name"):
            volumes[v["name"]] = (kind, str((v.get("persistentVolumeClaim") or {}).get("claimName") or ""))
    return volumes


def _mount_names(spec: dict) -> dict[str, list[tuple[str, str]]]:
    """container name -> [(mountPath, volume name)]."""
    mount_names: dict[str, list[tuple[str, str]]] = {}
    for key in _MOUNTING_CONTAINERS:
        for c in spec.get(key) or []:
            mount_names[c.get("name", "")] = [(m.get("mountPath", ""), m.get("name", "")) for m in c.get("volumeMounts") or []]
    return mount_names


def pod_record(pod: dict) -> PodRecord | None:
    """A raw Pod (API JSON) -> :class:`PodRecord`; None when it has no UID."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    uid = meta.get("uid")
    if not uid:
        return None
    images = _spec_images(spec)
    ids = _status_ids(status, images)
    annotations = meta.get("annotations") or {}
    view = PodView(namespace=meta.get("namespace", ""), name=meta.get("name", ""), uid=uid, images=images,
                   container_ids=ids, labels=dict(meta.get("labels") or {}), owner=controller_owner(meta),
                   volumes=_volumes(spec), mount_names=_mount_names(spec), mounts=volume_mounts(pod),
                   unwritable=str(annotations.get(constants.ANN_UNWRITABLE) or ""))
    return PodRecord(view=view, node=spec.get("nodeName", "") or "", annotations=dict(annotations),
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


class PodWatcher(ListWatcher):
    """Lists and watches this node's pods into a :class:`PodIndex`, in a daemon thread.

    ``on_pod(record)`` (optional) is called from the watch thread for every pod listed, added or
    modified: it must return quickly (the gcore requests queue work elsewhere).
    """

    thread_name = "agent-podwatch"

    def __init__(self, api_client: Any, node_name: str, index: PodIndex | None = None, *,
                 on_pod: Callable[[PodRecord], None] | None = None,
                 watch_timeout: int = WATCH_TIMEOUT_SECONDS, request_timeout: float = 30.0,
                 backoff_start: float = BACKOFF_START_SECONDS, backoff_max: float = BACKOFF_MAX_SECONDS) -> None:
        if not node_name:
            raise ValueError("the pod watch needs the node name (--node-name, downward API spec.nodeName)")
        super().__init__(api_client, watch_timeout=watch_timeout, request_timeout=request_timeout,
                         backoff_start=backoff_start, backoff_max=backoff_max)
        self.node_name = node_name
        self.index = index or PodIndex()
        self.on_pod = on_pod
        self.lists = 0
        self.watches = 0

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
            _request_timeout=self.request_timeouts())
        self.watches += 1
        return self.follow(resp, self._apply)

    def _apply(self, kind: str, obj: dict) -> None:
        record = self.index.apply(kind, obj)
        if record is not None and kind != "DELETED":
            self._notify([record])

    def _notify(self, records: list[PodRecord]) -> None:
        if self.on_pod is None:
            return
        for record in records:
            try:
                self.on_pod(record)
            except Exception:  # noqa: BLE001 - a consumer's bug must not stop the watch
                log.exception("pod watch consumer failed", extra={"pod_uid": record.view.uid})

    # --- the loop's logging ----------------------------------------------------------------------
    def expired(self, exc: Expired) -> None:
        log.info("pod watch expired, listing again", extra={"detail": str(exc)})

    def failed(self, exc: Exception, status: int | None) -> None:
        if status is not None:
            log.warning("pod watch failed", extra={"status": status, "detail": str(getattr(exc, "reason", ""))})
        else:
            log.warning("pod watch failed", extra={"detail": repr(exc)})
