"""Request ids the agent has taken, kept on the node so a restart never takes one again.

The gcore request annotation stays on its pod (the agent has no right to patch pods), so every
relist after a restart shows it again: without a durable record the new agent would freeze the
process for a second snapshot. Each id is appended (one line, fsynced) to a file in the agent's
host directory *before* the work starts: a request is honoured at most once even when the agent
dies mid-snapshot (the user then asks again with a new id), and exactly once otherwise.
"""

from __future__ import annotations

import logging
import os
import threading

from webhook.agent.statefile import write_atomically

log = logging.getLogger(__name__)

#: Ids remembered; the file is rewritten with the newest ones when it grows past twice this.
KEEP = 4096


class TakenRequests:
    """A set of ids backed by an append-only file; safe from any thread of one agent."""

    def __init__(self, path: str, keep: int = KEEP) -> None:
        self.path = path
        self.keep = keep
        self._lock = threading.Lock()
        self._ids: dict[str, None] = {}
        self._lines = 0
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    if line.strip():
                        self._ids[line.strip()] = None
                        self._lines += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot read the taken request ids", extra={"path": path, "error": str(exc)})
        self._trim()

    def __contains__(self, rid: str) -> bool:
        with self._lock:
            return rid in self._ids

    def claim(self, rid: str) -> bool:
        """True the first time ``rid`` is seen (recorded durably first); False afterwards.

        An id that cannot be written down is still claimed in memory (this agent will not take
        it twice), and the failure is logged: a restart could then take it again.
        """
        if "\n" in rid or not rid:
            raise ValueError("a request id is one non-empty line")
        with self._lock:
            if rid in self._ids:
                return False
            self._ids[rid] = None
            try:
                self._append(rid)
            except OSError as exc:
                log.error("cannot record a taken request id; a restarted agent may take it again",
                          extra={"path": self.path, "id": rid, "error": str(exc)})
            if self._lines > 2 * self.keep:
                self._rewrite()
            return True

    def _append(self, rid: str) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, (rid + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self._lines += 1

    def _trim(self) -> None:
        with self._lock:
            if len(self._ids) > self.keep or self._lines > 2 * self.keep:
                self._rewrite()

    def _rewrite(self) -> None:
        """Keep the newest ``keep`` ids (called with the lock held); atomic replace."""
        while len(self._ids) > self.keep:
            self._ids.pop(next(iter(self._ids)))
        try:
            write_atomically(self.path, "".join(i + "\n" for i in self._ids).encode())
            self._lines = len(self._ids)
        except OSError as exc:
            log.warning("cannot compact the taken request ids", extra={"path": self.path, "error": str(exc)})
