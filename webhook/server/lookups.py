"""Keep the threads that answer admissions free while registries stall.

A gthread worker answers every request from one thread pool. A request whose pod needs a
registry look-up waits for it (the look-up itself runs in the resolver's own threads), and a
waiting request holds a pool thread. So the server sizes its pool as ``threads`` (answering)
plus ``lookup_threads`` (waiting), and :class:`LookupGate` lets at most ``lookup_threads``
requests of a process wait at once: however many clients create pods behind a stalled
registry, ``threads`` threads stay free and a pod that needs no look-up is answered at the
no-op path's speed. A request past the gate gets only what the caches answer at once, and a
"webhook busy" warning for the rest: it starts no look-up (a flood of pods behind a stalled
registry must not turn into a flood of threads).
"""

from __future__ import annotations

import threading
from typing import Any


class LookupGate:
    """Wraps a resolver (``resolve_many`` and the plain call) with a bound on waiting requests."""

    def __init__(self, resolver: Any, waiting: int) -> None:
        if waiting < 1:
            raise ValueError("lookup threads must be >= 1")
        self.resolver = resolver
        self._slots = threading.BoundedSemaphore(waiting)
        #: Requests that found the gate full (for tests and the log).
        self.turned_away = 0

    def resolve_many(self, images: list[str], *, namespace: str, pull_secrets: list[str],
                     deadline: float | None) -> dict[str, Any]:
        many = getattr(self.resolver, "resolve_many", None)
        if many is None:
            return {}  # the mutation then asks the plain call, image by image
        if self._slots.acquire(blocking=False):
            try:
                return many(images, namespace=namespace, pull_secrets=pull_secrets, deadline=deadline)
            finally:
                self._slots.release()
        self.turned_away += 1
        cached = getattr(self.resolver, "cached", None)
        out = dict(cached(images, namespace=namespace, pull_secrets=pull_secrets)) if cached else {}
        for image in images:
            if image not in out:
                out[image] = _Busy(f"image {image}: every look-up thread is waiting on a registry")
        return out

    def __call__(self, image: str, **kwargs: Any) -> Any:
        if not self._slots.acquire(blocking=False):
            self.turned_away += 1
            raise _Busy()
        try:
            return self.resolver(image, **kwargs)
        finally:
            self._slots.release()


class _Busy(Exception):
    """No look-up thread free: the container is left alone with a "webhook busy" warning."""

    reason = "webhook busy"
