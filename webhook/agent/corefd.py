"""The core's pipe fd as the server received it: closed exactly once, cut without a reuse race.

The kernel keeps the crashing process pinned until every reader of the core pipe other than
itself has closed it; the agent drops its reference either when the handler has the whole core
(:meth:`CoreFd.let_go`) or when the dump overran (:meth:`CoreFd.cut`), by atomically putting a
directory where the fd was (``dup2``): the handler's next read then fails with ``EISDIR``
instead of reading a short core as if it were whole.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from webhook.agent.stream_limits import REASON_READ_ERROR, forget_cut, mark_cut

log = logging.getLogger(__name__)


class CoreFd:
    """The received pipe fd, closed exactly once, and cut on timeout without a reuse race.

    ``cut`` and ``close`` share a lock, and both check that the number still names the file
    that was received (st_dev, st_ino): a handler that closed it by mistake cannot make us
    close or overwrite an unrelated file that reused the number.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        st = os.fstat(fd)
        self._identity = (st.st_dev, st.st_ino)
        self._placeholder: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._holders = 2  # the server and the handler thread: the fd closes when both let go
        self.cut_reason: str | None = None

    def _still_ours(self) -> bool:
        try:
            st = os.fstat(self.fd)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) in (self._identity, self._placeholder)

    def _swap(self, placeholder: int, reason: str | None, code: str | None = None) -> bool:
        """Put ``placeholder`` where the core's fd was, once, and only while the fd is still ours;
        ``code`` (a stream_limits REASON_*) is what the handler's failed read will record."""
        with self._lock:
            if self._closed or self._placeholder is not None or not self._still_ours():
                return False
            ph = os.fstat(placeholder)
            if code is not None:
                mark_cut(self.fd, code)  # before the swap: the handler's read may fail at once
            os.dup2(placeholder, self.fd, inheritable=False)
            self._placeholder = (ph.st_dev, ph.st_ino)
            if reason is not None:
                self.cut_reason = reason
            return True

    def cut(self, placeholder: int, reason: str, code: str = REASON_READ_ERROR) -> bool:
        """Drop our reference to the core; the handler's next read fails (EISDIR) and records
        ``code`` as the core's ``truncated_reason``."""
        return self._swap(placeholder, reason, code)

    def let_go(self, placeholder: int) -> bool:
        """The handler has the whole core: drop the pipe now (the kernel reaps the process)
        while the handler finishes (hash, metadata). Same swap as :meth:`cut`, no reason."""
        return self._swap(placeholder, None)

    def release(self) -> None:
        """One holder is done with the fd; the last one closes it."""
        with self._lock:
            self._holders -= 1
            if self._holders > 0:
                return
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            forget_cut(self.fd)
            if self._still_ours():
                os.close(self.fd)
            else:
                log.error("core fd was closed by the handler; not closing its number again", extra={"fd": self.fd})



class Once:
    """Calls ``fn`` the first time it is called, never again (thread-safe)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._fn: Callable[[], Any] | None = fn
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            fn, self._fn = self._fn, None
        if fn is not None:
            fn()

