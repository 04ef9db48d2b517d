"""A bounded queue drained by one daemon thread: side effects that must never delay a dump."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class QueueWorker:
    """One daemon thread draining a bounded queue; subclasses say what an item means.

    ``_handle(item)`` does the work, ``_failed(item, exc)`` hears about an exception (the
    thread goes on), ``_finish(item)`` runs after either.
    """

    def __init__(self, name: str, maxsize: int) -> None:
        self.name = name
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _handle(self, item: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _failed(self, item: Any, exc: Exception) -> None:
        log.warning("%s failed: %s", self.name, exc)

    def _finish(self, item: Any) -> None:
        pass

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                self._handle(item)
            except Exception as exc:  # noqa: BLE001 - one bad item must not stop the thread
                self._failed(item, exc)
            finally:
                if item is not _STOP:
                    self._finish(item)
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


class BackgroundSender(QueueWorker):
    """``submit()`` never blocks: items beyond ``maxsize`` are dropped (and counted)."""

    def __init__(self, name: str, send: Callable[[Any], None], maxsize: int = 256) -> None:
        self._send = send
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        super().__init__(name, maxsize)

    def submit(self, item: Any) -> bool:
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            self.dropped += 1
            log.warning("%s queue full: dropped one item", self.name)
            return False

    def _handle(self, item: Any) -> None:
        self._send(item)
        self.sent += 1

    def _failed(self, item: Any, exc: Exception) -> None:
        self.failed += 1
        super()._failed(item, exc)


class SendsInBackground:
    """For side effects (events, notifications) that hand each item to ``self._sender``."""

    _sender: BackgroundSender

    def submit(self, info: dict[str, Any]) -> bool:
        return self._sender.submit(info)

    def flush(self, timeout: float = 10.0) -> bool:
        return self._sender.flush(timeout)

    @property
    def sent(self) -> int:
        return self._sender.sent

    @property
    def failed(self) -> int:
        return self._sender.failed


_STOP = object()
