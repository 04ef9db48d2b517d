"""A clock for tests: time moves only when the code under test sleeps (see webhook/clock.py)."""

from __future__ import annotations


class FakeClock:
    """``monotonic()`` is :attr:`now`; ``sleep(s)`` returns at once, adding ``s`` to it (and to
    :attr:`slept`), so a wait with a timeout runs its whole course without waiting."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
