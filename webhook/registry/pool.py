"""Registry look-ups run concurrently, off the threads that answer admissions, bounded per registry.

A pod with twenty images behind a slow registry must not spend its whole admission budget on
them one after another, and a stalled registry must not hold up anything but the pods that
need it. So every look-up runs in its own daemon thread (never a thread of the web server),
at most ``per_registry`` of them talk to one registry at a time (the rest wait their turn
within their budget), identical look-ups in flight are shared (one fetch for twenty pods of
a Deployment), and the total in flight is capped: past the cap a look-up fails at once with
"webhook busy" instead of piling up threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Any


class PoolBusy(Exception):
    """Too many look-ups in flight, or the registry's turn did not come within the budget."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class LookupPool:
    """Runs ``work()`` callables in daemon threads, shared per key, bounded per registry."""

    def __init__(self, per_registry: int = 4, max_in_flight: int = 256) -> None:
        if per_registry < 1 or max_in_flight < 1:
            raise ValueError("look-up bounds must be >= 1")
        self.per_registry = per_registry
        self.max_in_flight = max_in_flight
        self._lock = threading.Lock()
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self._in_flight: dict[Hashable, Future] = {}
        #: Highest number of look-ups that talked to one registry at once (tests, metrics).
        self.peak: dict[str, int] = {}
        self._active: dict[str, int] = {}

    def _slot(self, registry: str) -> threading.BoundedSemaphore:
        with self._lock:
            slot = self._slots.get(registry)
            if slot is None:
                slot = self._slots[registry] = threading.BoundedSemaphore(self.per_registry)
            return slot

    def submit(self, key: Hashable, registry: str, deadline: float, work: Callable[[], Any]) -> Future:
        """A future for ``work()``; the same ``key`` in flight returns the same future."""
        with self._lock:
            running = self._in_flight.get(key)
            if running is not None:
                return running
            future: Future = Future()
            if len(self._in_flight) >= self.max_in_flight:
                future.set_exception(PoolBusy(f"{len(self._in_flight)} look-ups in flight", "webhook busy"))
                return future
            self._in_flight[key] = future
        thread = threading.Thread(target=self._run, args=(key, registry, deadline, work, future),
                                  name=f"lookup {registry}", daemon=True)
        thread.start()
        return future

    def _run(self, key: Hashable, registry: str, deadline: float, work: Callable[[], Any], future: Future) -> None:
        slot = self._slot(registry)
        try:
            if not slot.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise PoolBusy(f"no turn at {registry} within the budget", "registry busy")
            try:
                with self._lock:
                    self._active[registry] = self._active.get(registry, 0) + 1
                    self.peak[registry] = max(self.peak.get(registry, 0), self._active[registry])
                value = work()
            finally:
                with self._lock:
                    self._active[registry] -= 1
                slot.release()
        except BaseException as exc:  # handed to whoever waits on the future
            with self._lock:
                self._in_flight.pop(key, None)
            future.set_exception(exc)
            return
        with self._lock:
            self._in_flight.pop(key, None)
        future.set_result(value)

    def in_flight(self) -> int:
        with self._lock:
            return len(self._in_flight)
