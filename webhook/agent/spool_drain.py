"""Draining the helper's spool: cores the helper could not hand over live, delivered later.

The helper spools a core (``<spool>/<entry>/`` with ``args``, ``core`` and ``reason``) when no
agent answers in time; the agent delivers each complete entry through its handler as it would a
live one (``spooled=True``). Entries are removed once handled; a failed delivery is retried at
the next drain and set aside as ``<entry>.failed`` after a few tries; a ``.tmp`` entry older
than any live helper can be is adopted (renamed complete, its reason saying so).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from typing import Any

from webhook.agent.server_metrics import ServerMetrics
from webhook.agent.settings import AgentSettings

log = logging.getLogger(__name__)

#: A spooled entry whose delivery failed this many times is set aside as <name>.failed.
MAX_SPOOL_ATTEMPTS = 3
SPOOL_TMP_SUFFIX = ".tmp"
SPOOL_FAILED_SUFFIX = ".failed"
#: Outcomes after which a spooled entry is done with (anything but "failed").
FINAL_OUTCOMES = frozenset({"written", "partial", "skipped", "rate_limited", "chained"})
#: The server's outcome for a spooled core the stopping agent left in the spool (not an attempt).
STOPPING = "stopping"

#: deliver(argv, fd, spooled=True, note=<the spool reason>, entry=<the entry's path>) -> outcome;
#: it always closes the fd.
Deliver = Callable[..., Any]


class SpoolDrain:
    """Delivers the spool's complete entries, one drain at a time."""

    def __init__(self, settings: AgentSettings, deliver: Deliver, metrics: ServerMetrics,
                 stop: threading.Event) -> None:
        self.settings = settings
        self.deliver = deliver
        self.metrics = metrics
        self._stop = stop
        self._drain_lock = threading.Lock()

    def drain(self) -> list[tuple[str, str]]:
        """Deliver every complete spool entry through the handler (``spooled=True``).

        Returns ``(entry, result)`` pairs. Entries are removed once handled; a failed delivery
        is retried at the next drain, and set aside as ``<entry>.failed`` after a few tries.
        """
        spool = self.settings.spool_dir
        results: list[tuple[str, str]] = []
        with self._drain_lock:
            try:
                names = sorted(os.listdir(spool))
            except FileNotFoundError:
                return results
            self._adopt_abandoned(spool, names)
            names = sorted(os.listdir(spool))
            pending = [n for n in names if _is_complete_entry(spool, n)]
            self.metrics.spool_entries.set(len(pending))
            for name in pending:
                if self._stop.is_set():
                    break
                result = self._deliver_entry(os.path.join(spool, name))
                self.metrics.spool_deliveries.labels(result).inc()
                results.append((name, result))
            self.metrics.spool_entries.set(
                len([n for n in os.listdir(spool) if _is_complete_entry(spool, n)]) if os.path.isdir(spool) else 0
            )
        return results

    def _adopt_abandoned(self, spool: str, names: list[str]) -> None:
        """A ``.tmp`` entry older than any live helper can be is renamed complete (marked)."""
        max_age = self.settings.spool_timeout_seconds + self.settings.helper_timeout_seconds + 300
        now = time.time()
        for name in names:
            if not name.endswith(SPOOL_TMP_SUFFIX):
                continue
            path = os.path.join(spool, name)
            try:
                if now - os.stat(path).st_mtime < max_age:
                    continue
                with open(os.path.join(path, "reason"), "a") as f:
                    f.write("; spool entry abandoned by the helper before it was complete")
                os.rename(path, path[: -len(SPOOL_TMP_SUFFIX)])
                log.warning("adopted an abandoned spool entry", extra={"entry": name})
            except OSError as exc:
                log.warning("cannot adopt spool entry", extra={"entry": name, "error": str(exc)})

    def _deliver_entry(self, path: str) -> str:
        name = os.path.basename(path)
        try:
            with open(os.path.join(path, "args"), "rb") as f:
                raw = f.read()
        except OSError as exc:
            log.error("spool entry without args; set aside", extra={"entry": name, "error": str(exc)})
            _set_aside(path)
            return "bad"
        argv = [a.decode("utf-8", "surrogateescape") for a in raw.split(b"\0")]
        if argv and argv[-1] == "":
            argv.pop()
        reason = _read_text(os.path.join(path, "reason"))
        core_path = os.path.join(path, "core")
        try:
            fd = os.open(core_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)  # spool was full: args only
        outcome = self.deliver(argv, fd, spooled=True, note=reason, entry=path)
        kind = getattr(outcome, "outcome", "failed")
        log.info(
            "spooled core delivered" if kind in FINAL_OUTCOMES else "spooled core not delivered",
            extra={
                "entry": name,
                "outcome": kind,
                "reason": getattr(outcome, "reason", ""),
                "path": getattr(outcome, "path", None),
                "spool_reason": reason,
            },
        )
        if kind in FINAL_OUTCOMES:
            shutil.rmtree(path, ignore_errors=True)
            return "delivered"
        if kind == STOPPING:
            return "retry"
        attempts = int(_read_text(os.path.join(path, "attempts")) or 0) + 1
        with open(os.path.join(path, "attempts"), "w") as f:
            f.write(str(attempts))
        if attempts >= MAX_SPOOL_ATTEMPTS:
            _set_aside(path)
            return "failed"
        return "retry"



def _is_complete_entry(spool: str, name: str) -> bool:
    return (
        not name.startswith(".")
        and not name.endswith(SPOOL_TMP_SUFFIX)
        and not name.endswith(SPOOL_FAILED_SUFFIX)
        and os.path.isdir(os.path.join(spool, name))
    )


def _set_aside(path: str) -> None:
    try:
        os.rename(path, path + SPOOL_FAILED_SUFFIX)
    except OSError:
        shutil.rmtree(path, ignore_errors=True)



def _read_text(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""

