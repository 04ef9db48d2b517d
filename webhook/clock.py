"""Time as a parameter: code that waits or measures elapsed time takes a :class:`Clock` (or its
two callables), so a caller, e.g. a test, can run it on a clock of its own instead of patching
the ``time`` module."""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """Elapsed time and waiting: ``monotonic()`` seconds, ``sleep(seconds)``."""

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock: :func:`time.monotonic` and :func:`time.sleep`."""

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


SYSTEM_CLOCK: Clock = SystemClock()
