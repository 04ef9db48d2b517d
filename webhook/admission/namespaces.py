"""Namespaces' enforced Pod Security levels, from a cached watch: never an API call per admission.

A daemon thread lists ``/api/v1/namespaces`` and then watches it (RBAC: ``list`` and ``watch``
on namespaces, nothing else), keeping name -> enforce label. :meth:`NamespaceLevels.level` is
a dict look-up under a lock; until the first list has arrived (API down, RBAC missing, the
webhook just started) every namespace counts as ``restricted``, so nothing a namespace could
refuse is ever added on a guess. Watch semantics: start from the list's resourceVersion,
follow every event and BOOKMARK, restart when the server ends the stream, list again on
410 Gone, back off on any other error.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from typing import Any, Iterable, Iterator

from webhook.admission.podsecurity import level_of

log = logging.getLogger("coredump.webhook.namespaces")

WATCH_TIMEOUT_SECONDS = 300
BACKOFF_START_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 60.0


class _Expired(Exception):
    """The watch's resourceVersion is too old: list again."""


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    pending = b""
    for chunk in chunks:
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            if line.strip():
                yield line
    if pending.strip():
        yield pending


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


class NamespaceWatcher:
    """Lists and watches namespaces into a :class:`NamespaceLevels`, in a daemon thread."""

    def __init__(self, api_client: Any, levels: NamespaceLevels | None = None, *,
                 watch_timeout: int = WATCH_TIMEOUT_SECONDS, request_timeout: float = 30.0,
                 backoff_start: float = BACKOFF_START_SECONDS, backoff_max: float = BACKOFF_MAX_SECONDS) -> None:
        self.api_client = api_client
        self.levels = levels or NamespaceLevels()
        self.watch_timeout = watch_timeout
        self.request_timeout = request_timeout
        self.backoff_start = backoff_start
        self.backoff_max = backoff_max
        self.stop_event = threading.Event()
        self.resource_version = ""
        self.errors = 0
        self._thread: threading.Thread | None = None

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
            timeout_seconds=self.watch_timeout, _preload_content=False,
            _request_timeout=(self.request_timeout, self.watch_timeout + self.request_timeout))
        count = 0
        try:
            for line in _lines(resp.stream(65536, decode_content=True)):
                if self.stop_event.is_set():
                    break
                event = json.loads(line)
                kind, obj = event.get("type", ""), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410 or obj.get("reason") in ("Expired", "Gone"):
                        raise _Expired(obj.get("message", "expired"))
                    raise RuntimeError(f"watch error: {obj.get('code')} {obj.get('message')}")
                count += 1
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    self.levels.apply(kind, obj)
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if rv:
                    self.resource_version = rv
        finally:
            try:
                resp.release_conn()
            except Exception:  # noqa: BLE001
                pass
        return count

    def run(self) -> None:
        from kubernetes.client.exceptions import ApiException

        backoff, need_list = self.backoff_start, True
        while not self.stop_event.is_set():
            started = time.monotonic()
            try:
                if need_list:
                    self.list_once()
                    need_list = False
                events = self.watch_once()
                backoff = self.backoff_start
                if events == 0 and time.monotonic() - started < 1.0:
                    self.stop_event.wait(1.0)
                continue
            except _Expired:
                need_list = True
                continue
            except ApiException as exc:
                if exc.status == 410:
                    need_list = True
                    continue
                self.errors += 1
                log.warning("namespace watch failed", extra={"event": "namespaces.error", "status": exc.status})
            except Exception as exc:  # noqa: BLE001 - unreachable API, bad JSON: retry later
                self.errors += 1
                log.warning("namespace watch failed", extra={"event": "namespaces.error", "error": repr(exc)})
            self.stop_event.wait(backoff * (0.5 + random.random() / 2))
            backoff = min(self.backoff_max, backoff * 2)

    def start(self) -> "NamespaceWatcher":
        self._thread = threading.Thread(target=self.run, name="webhook-namespaces", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout)
