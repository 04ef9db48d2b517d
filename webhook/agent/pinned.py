"""While the crashing process is still pinned: keep its binaries, prepare its signature job.

Both need the process (``/proc/<pid>/map_files``, its root, its executable) and so run before
the kernel releases it, right after the core got its name; the signature itself is computed
later by the worker (webhook/agent/analysis.py), off the crash path.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import posixpath
from collections.abc import Callable
from typing import Any

from webhook.agent.crash_request import CrashRequest
from webhook.agent.procinfo import ProcessInfo
from webhook.agent.settings import AgentSettings
from webhook.agent.target import Target
from webhook.agent.writer import SafeRoot

log = logging.getLogger(__name__)


def make_signatures(settings: AgentSettings, given: Any, sinks: Callable[[], list[Any]],
                    on_pruned: Callable[[dict], Any] | None) -> Any:
    """The signature worker: ``given`` (False: none), else built from the settings when drgn is
    there; its results go to ``sinks()`` (the processor's publish: Events only under verified names)."""
    if given is not None:
        return given or None
    if not settings.signatures:
        return None
    if importlib.util.find_spec("drgn") is None:
        log.info("drgn not found: crash signatures are off (pip install drgn in the agent's environment)")
        return None
    from webhook.agent.analysis import SignatureWorker

    s = settings
    return SignatureWorker(sinks,  # publish(): Events only under verified names
                           timeout=s.signature_timeout_seconds, event_wait=s.signature_event_wait_seconds,
                           maxsize=s.signature_queue_size,
                           memory_bytes=s.signature_memory_bytes,
                           retention=(s.retention_keep_first, s.retention_keep_latest),
                           max_age=s.pod_retention_max_age_seconds,
                           on_pruned=on_pruned)


class PinnedWork:
    """The steps of one crash that need its process still pinned (binaries, the signature job)."""

    def __init__(self, settings: AgentSettings, signatures: Any, proc: str = "/proc") -> None:
        self.settings = settings
        self.signatures = signatures
        self.proc = proc

    def keep_binaries(self, request: CrashRequest, proc: ProcessInfo | None, dirfd: int, final: str | None,
                      doc: dict, target: Target) -> tuple[list, dict]:
        """Still pinned: keep the binaries by build-id (and ``--save-binaries`` copies); returns
        the mapped files, still open, for the signature worker, and the root's links."""
        s = self.settings
        if not final or proc is None:
            return [], {}
        from webhook.agent.binaries import KeepOptions, keep_binaries, root_links

        opts = KeepOptions(symbols=s.symbols, symbols_budget=s.symbols_budget_bytes, save_binaries=s.save_binaries,
                           save_binaries_budget=s.save_binaries_budget_bytes, uid=target.uid, gid=target.gid,
                           creds=target.creds, keep_free=s.keep_free_bytes)
        want_files = self.signatures is not None and target.compression != "zstd"
        try:
            store_fd, store_rel = self._store_location(target, dirfd)
        except OSError as exc:  # the namespace's directory in the node location: the core's then
            log.warning("build-id store location unusable", extra={"pid": request.global_pid, "error": str(exc)})
            store_fd, store_rel = dirfd, ".symbols"
        try:
            keys, files = keep_binaries(request.global_pid, proc.exe, dirfd, final, store_fd, store_rel, opts,
                                        want_files=want_files, proc=self.proc)
        except Exception as exc:  # noqa: BLE001 - the core is written; binaries are a bonus
            log.warning("could not keep the binaries", extra={"pid": request.global_pid, "error": repr(exc)})
            return [], {}
        finally:
            if store_fd != dirfd:
                os.close(store_fd)
        base = posixpath.dirname(doc.get("path") or "")
        for key in ("binaries_dir", "sysroot"):
            if keys.get(key) and base:
                keys[key] = posixpath.join(base, keys[key])
        if keys.get("symbols_store") and base:
            keys["symbols_store"] = posixpath.normpath(posixpath.join(base, keys["symbols_store"]))
        doc.update(keys)
        return files, (root_links(request.global_pid, self.proc) if files else {})

    def _store_location(self, target: Target, dirfd: int) -> tuple[int, str]:
        """The build-id store's parent directory (fd) and its path from the core's directory:
        the core's directory in a pod volume, the namespace's directory in the node location."""
        from webhook.agent.symbols import STORE_DIR

        parts = [p for p in target.directory.split("/") if p]
        if target.pod or len(parts) < 2:
            return dirfd, STORE_DIR
        with SafeRoot.open(target.root_path) as root:
            fd = root.open_dir(parts[0])
        return fd, "/".join([".."] * (len(parts) - 1) + [STORE_DIR])

    def signature_job(self, proc: ProcessInfo | None, dirfd: int, final: str | None, json_name: str | None,
                      doc: dict, target: Target, files: list) -> Any:
        """Still pinned: what the signature worker needs later (None: no signature for this core)."""
        if not final or not json_name or self.signatures is None or target.compression == "zstd":
            from webhook.agent.mappings import close_all

            close_all(files)
            return None
        from webhook.agent.analysis import prepare_job

        # A spooled or vanished process: its PID may be another process's now, so no exe fd.
        return prepare_job(proc.global_pid if proc is not None else 0, dirfd, final, json_name, doc,
                           proc.exe if proc else "", files, uid=target.uid, gid=target.gid, proc=self.proc,
                           creds=target.creds)
