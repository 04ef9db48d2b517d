"""A bounded queue drained by one daemon thread: side effects that must never delay a dump."""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable

log = logging.getLogger(__name__)


class BackgroundSender:
    """``submit()`` never blocks: items beyond ``maxsize`` are dropped (and counted)."""

    def __init__(self, name: str, send: Callable[[Any], None], maxsize: int = 256) -> None:
        self.name = name
        self._send = send
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: Any) -> bool:
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            self.dropped += 1
            log.warning("%s queue full: dropped one item", self.name)
            return False

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                self._send(item)
                self.sent += 1
            except Exception as exc:  # noqa: BLE001 - a side effect failing must not stop the thread
                self.failed += 1
                log.warning("%s failed: %s", self.name, exc)
            finally:
                self._queue.task_done()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far was handled (tests, shutdown)."""
        done = threading.Event()

        def waiter() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=waiter, daemon=True).start()
        return done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)


_STOP = object()
