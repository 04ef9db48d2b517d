"""Namespaces' enforced Pod Security levels, from a cached watch: never an API call per admission.

A daemon thread lists ``/api/v1/namespaces`` and then watches it (RBAC: ``list`` and ``watch``
on namespaces, nothing else), keeping name -> enforce label. :meth:`NamespaceLevels.level` is
a dict look-up under a lock; until the first list has arrived (API down, RBAC missing, the
webhook just started) every namespace counts as ``restricted``, so nothing a namespace could
refuse is ever added on a guess. The list+watch loop (resourceVersion, BOOKMARKs, 410 Gone,
back-off) is :class:`webhook.kubewatch.ListWatcher`.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from typing import Any

from webhook.admission.podsecurity import level_of
from webhook.kubewatch import BACKOFF_MAX_SECONDS, BACKOFF_START_SECONDS, WATCH_TIMEOUT_SECONDS, ListWatcher

log = logging.getLogger(__name__)


class NamespaceLevels:
    """Name -> enforced level; safe from any thread; ``level`` never blocks on I/O."""

    def __init__(self, default_level: str = "privileged") -> None:
        self.default_level = default_level
        self._lock = threading.Lock()
        self._levels: dict[str, str] = {}
        self.ready = threading.Event()

    def replace(self, namespaces: Iterable[dict]) -> None:
        levels = {}
        for ns in namespaces:
            meta = ns.get("metadata") if isinstance(ns, dict) else None
            if isinstance(meta, dict) and isinstance(meta.get("name"), str):
                levels[meta["name"]] = level_of(meta.get("labels"), self.default_level)
        with self._lock:
            self._levels = levels
        self.ready.set()

    def apply(self, kind: str, ns: dict) -> None:
        meta = ns.get("metadata") if isinstance(ns, dict) else None
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
            return
        with self._lock:
            if kind == "DELETED":
                self._levels.pop(meta["name"], None)
            else:
                self._levels[meta["name"]] = level_of(meta.get("labels"), self.default_level)

    def level(self, namespace: str) -> str:
        """The level ``namespace`` enforces; "restricted" while unknown (not listed yet, or a
        namespace created after the last event: it may carry any label)."""
        if not self.ready.is_set():
            return "restricted"
        with self._lock:
            return self._levels.get(namespace, "restricted")

    __call__ = level


class NamespaceWatcher(ListWatcher):
    """Lists and watches namespaces into a :class:`NamespaceLevels`, in a daemon thread."""

    thread_name = "webhook-namespaces"

    def __init__(self, api_client: Any, levels: NamespaceLevels | None = None, *,
                 watch_timeout: int = WATCH_TIMEOUT_SECONDS, request_timeout: float = 30.0,
                 backoff_start: float = BACKOFF_START_SECONDS, backoff_max: float = BACKOFF_MAX_SECONDS) -> None:
        super().__init__(api_client, watch_timeout=watch_timeout, request_timeout=request_timeout,
                         backoff_start=backoff_start, backoff_max=backoff_max)
        self.levels = levels or NamespaceLevels()

    def _core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api_client)

    def list_once(self) -> None:
        resp = self._core().list_namespace(_preload_content=False, _request_timeout=self.request_timeout)
        doc = json.loads(resp.data)
        self.levels.replace(doc.get("items") or [])
        self.resource_version = (doc.get("metadata") or {}).get("resourceVersion", "")

    def watch_once(self) -> int:
        resp = self._core().list_namespace(
            watch=True, resource_version=self.resource_version, allow_watch_bookmarks=True,
            timeout_seconds=self.watch_timeout, _preload_content=False, _request_timeout=self.request_timeouts())
        return self.follow(resp, self.levels.apply)

    def failed(self, exc: Exception, status: int | None) -> None:
        if status is not None:
            log.warning("namespace watch failed", extra={"event": "namespaces.error", "status": status})
        else:
            log.warning("namespace watch failed", extra={"event": "namespaces.error", "error": repr(exc)})
