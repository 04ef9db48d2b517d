"""One list+watch loop over the API server, shared by the webhook's namespace cache and the
agent's pod cache (neither imports the other: both import this).

Watch semantics followed: start the watch from the list's ``resourceVersion``, move it forward
with every event (and BOOKMARKs), restart from the last one when the server ends the stream,
list again on ``410 Gone`` (an ``ERROR`` event with an ``Expired`` Status, or an HTTP 410), back
off exponentially (with jitter) on any other error. The HTTP requests themselves stay in the
subclasses (:meth:`ListWatcher.list_once`, :meth:`ListWatcher.watch_once`).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

#: How long the API server holds one watch open (it ends it after that; we restart it).
WATCH_TIMEOUT_SECONDS = 300
#: First and largest pause after a failed list/watch.
BACKOFF_START_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 60.0
#: The event types that change the cache (BOOKMARK only moves the resourceVersion).
OBJECT_EVENTS = ("ADDED", "MODIFIED", "DELETED")


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


class ListWatcher:
    """Lists, then watches, in a daemon thread until :meth:`stop`; subclasses make the requests."""

    thread_name = "list-watch"

    def __init__(self, api_client: Any, *, watch_timeout: int = WATCH_TIMEOUT_SECONDS,
                 request_timeout: float = 30.0, backoff_start: float = BACKOFF_START_SECONDS,
                 backoff_max: float = BACKOFF_MAX_SECONDS) -> None:
        self.api_client = api_client
        self.watch_timeout = watch_timeout
        self.request_timeout = request_timeout
        self.backoff_start = backoff_start
        self.backoff_max = backoff_max
        self.stop_event = threading.Event()
        self.resource_version = ""
        self.errors = 0
        self._thread: threading.Thread | None = None
        self._response: Any = None

    # --- what a subclass provides ----------------------------------------------------------------
    def list_once(self) -> None:
        """List everything, replace the cache, set :attr:`resource_version`."""
        raise NotImplementedError

    def watch_once(self) -> int:
        """One watch request until the server ends it (usually via :meth:`follow`); the event count."""
        raise NotImplementedError

    def expired(self, exc: Expired) -> None:
        """The watch expired; the loop lists again (a hook for logging)."""

    def failed(self, exc: Exception, status: int | None) -> None:
        """A list or watch failed (``status``: the HTTP status of an API error); the loop backs off."""

    # --- shared ------------------------------------------------------------------------------------
    def request_timeouts(self) -> tuple[float, float]:
        """Connect and read timeouts for a watch request: the read one outlasts the watch."""
        return (self.request_timeout, self.watch_timeout + self.request_timeout)

    def follow(self, resp: Any, on_event: Callable[[str, dict], None]) -> int:
        """Reads one watch response to its end: ``on_event(type, object)`` for every
        ADDED/MODIFIED/DELETED, the resourceVersion moved on every event; the event count."""
        self._response = resp
        count = 0
        try:
            for line in iter_lines(resp.stream(65536, decode_content=True)):
                if self.stop_event.is_set():
                    break
                kind, obj = parse_event(line)
                count += 1
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if kind in OBJECT_EVENTS:
                    on_event(kind, obj)
                if rv:
                    self.resource_version = rv
        finally:
            self._response = None
            try:
                resp.release_conn()
            except Exception:  # noqa: BLE001
                pass
        return count

    def run(self) -> None:
        """List, watch, list again on 410, back off on errors; until :meth:`stop`."""
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
                    self.stop_event.wait(1.0)  # a server that ends watches at once: no hot loop
                continue
            except Expired as exc:
                self.expired(exc)
                need_list = True
                continue
            except ApiException as exc:
                if exc.status == 410:
                    need_list = True
                    continue
                self.errors += 1
                self.failed(exc, exc.status)
            except Exception as exc:  # noqa: BLE001 - unreachable API, bad JSON: retry later
                self.errors += 1
                self.failed(exc, None)
            self.stop_event.wait(backoff * (0.5 + random.random() / 2))
            backoff = min(self.backoff_max, backoff * 2)

    def start(self) -> ListWatcher:
        self._thread = threading.Thread(target=self.run, name=self.thread_name, daemon=True)
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
