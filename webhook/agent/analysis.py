"""Crash signatures and saved binaries for the agent: what is done while pinned, and what is not.

*While the crashing process is pinned* (inside ``CrashProcessor.handle``), the executable and
every mapped file are opened through the kernel's references (:mod:`webhook.agent.binaries`:
``/proc/<pid>/exe`` and ``/proc/<pid>/map_files``, never a path from ``maps``) and
:func:`prepare_job` keeps those fds, with a duplicate of the core directory's fd (it keeps the
pod's volume reachable after ``/proc/<pid>/root`` vanished).

*Off the crash path* (:class:`SignatureWorker`, one thread, a bounded queue): the core and those
fds go to the unwinder (``signature.analyze_fds``: drgn in a confined child,
webhook/diagnose/unwind.py), so the frames are named from the very inodes the process mapped and
the abort machinery of the container's libc unwinds to the real frames; without them, the
executable alone (the node's own libraries never stand in for the container's), else the core
alone. The result (``signature``, ``backtrace``, ``signature_frames``, ``signature_source``) is
merged into ``<core>.json`` by writing a new file and renaming it over the old one (the metadata
file is ours: the one place where replacing is right).

The pod Event and the notification wait for the analysis, up to ``event_wait`` seconds, so they
carry the top frames: one Event per crash (no second "update" Event to aggregate, no extra RBAC
verb to patch Events), and a slow or stuck unwinder only delays it by that bound.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from webhook.agent import metadata as meta
from webhook.agent.background import QueueWorker
from webhook.agent.creds import Credentials, CredentialsError, as_process_credentials
from webhook.agent.mappings import MappedFile, close_all
from webhook.agent.writer import RESOLVE_NAME, openat2, replace_small_file
from webhook.diagnose.unwind_client import SERVER, Unwinder

log = logging.getLogger(__name__)



# --- while pinned ------------------------------------------------------------------------------
@dataclass
class SignatureJob:
    """What the worker needs once the process is gone; owns its fds and staging directory."""

    dirfd: int
    core_name: str
    json_name: str
    doc: dict
    #: fd of the executable (opened from /proc/<pid>/exe while pinned), or -1.
    exe_fd: int = -1
    #: Path of the executable inside the process's root.
    exe: str = ""
    #: The process's mapped files, open (kernel references taken while pinned); owned by the job.
    files: list[MappedFile] = field(default_factory=list)
    #: The crash summary for the Event and the notification (set by the crash processor).
    summary: dict | None = None
    #: Owner of the metadata file (the crashing process's for a pod, None for the node location).
    uid: int | None = None
    gid: int | None = None
    #: Credentials the metadata is rewritten with (the crashing process's for a pod, else None).
    creds: Credentials | None = None
    sent: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    timer: threading.Timer | None = None

    def close(self) -> None:
        for fd in (self.dirfd, self.exe_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.dirfd = self.exe_fd = -1
        close_all(self.files)
        self.files = []


def prepare_job(global_pid: int, dirfd: int, core_name: str, json_name: str, doc: dict, exe: str,
                files: list[MappedFile], *, uid: int | None,
                gid: int | None, proc: str = "/proc", creds: Credentials | None = None) -> SignatureJob:
    """Take the fds the analysis needs while the process is still there (``files`` become the job's;
    the executable is opened here only when they lack it)."""
    exe_fd = -1
    if global_pid > 0 and not any(f.is_exe and f.fd >= 0 for f in files):
        try:
            exe_fd = os.open(f"{proc}/{global_pid}/exe", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            exe_fd = -1
    return SignatureJob(os.dup(dirfd), core_name, json_name, doc, exe_fd, exe, list(files),
                        uid=uid, gid=gid, creds=creds)


# --- off the crash path ----------------------------------------------------------------------
def analyze_job(job: SignatureJob, *, timeout: float = 120.0, unwinder: Unwinder | None = None) -> dict:
    """Unwind a job's core; the metadata keys to merge (``signature_error`` when it failed).

    The unwinder gets the core and the process's files as the fds the job holds: the very
    inodes the process mapped, never a path (so never the node's own libraries either).
    """
    from webhook.diagnose.signature import SignatureError, analyze_fds
    from webhook.diagnose.unwind import FileRef

    core_fd = openat2(job.dirfd, job.core_name, os.O_RDONLY, resolve=RESOLVE_NAME)
    try:
        st = os.fstat(core_fd)
        if not (st.st_mode & 0o170000 == 0o100000) or st.st_size != job.doc.get("stored_size"):
            return {"signature_error": "the core file changed since it was written"}
        head = os.pread(core_fd, 18, 0)
        if head[:4] != b"\x7fELF" or int.from_bytes(head[16:18], "little" if head[5:6] == b"\x01" else "big") != 4:
            return {"signature_error": "not an ELF core file: not analyzed"}  # the unwinder never sees junk
        libraries = [FileRef(f.fd, f.start) for f in job.files if f.fd >= 0 and not f.is_exe]
        exe_fd = next((f.fd for f in job.files if f.fd >= 0 and f.is_exe), job.exe_fd)
        source = "mapped_files" if libraries else "exe" if exe_fd >= 0 else "core_only"
        try:
            result = analyze_fds(core_fd, exe_fd, libraries, timeout=timeout, unwinder=unwinder)
        except SignatureError as exc:
            return {"signature_error": str(exc)[:500], "signature_source": source}
        found = {**result.metadata(), "signature_source": source}
        if job.doc.get("gcore"):
            found["snapshot"] = True  # a live process's snapshot: never grouped with crashes
        return found
    finally:
        os.close(core_fd)


class SignatureWorker(QueueWorker):
    """One thread unwinding cores, one at a time; ``submit`` never blocks."""

    def __init__(self, sinks: Callable[[], list[Any]], *, unwinder: Sequence[str] = SERVER, timeout: float = 120.0,
                 event_wait: float = 30.0, maxsize: int = 16, memory_bytes: int = 0,
                 retention: tuple[int, int] = (0, 0), on_pruned: Callable[[dict], Any] | None = None,
                 max_age: float = 0.0) -> None:
        """``retention``: (keep_first, keep_latest) per signature in the core's directory
        (webhook/agent/retention.py); ``on_pruned(doc)`` hears of each core deleted;
        ``memory_bytes``: the unwinder's own address-space cap (webhook/rlimited.py)."""
        self.sinks = sinks
        self.memory_bytes = memory_bytes
        #: The unwinder server, started at the first core and kept (webhook/diagnose/unwind_client.py).
        self.unwinder = Unwinder(memory_bytes=memory_bytes, command=unwinder)
        self.retention = retention
        self.max_age = max_age
        self.on_pruned = on_pruned
        self.timeout = timeout
        self.event_wait = event_wait
        self.done = 0
        self.failed = 0
        self.dropped = 0
        super().__init__("agent-signatures", maxsize)

    def submit(self, job: SignatureJob) -> bool:
        """Queue a job; a full queue sends its summary at once and drops the analysis."""
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self.dropped += 1
            log.warning("signature queue full: no signature for this core", extra={"core": job.core_name})
            self._send(job)
            job.close()
            return False
        if job.summary is not None and self.event_wait >= 0:
            job.timer = threading.Timer(self.event_wait, self._send, (job,))
            job.timer.daemon = True
            job.timer.start()
        return True

    def _send(self, job: SignatureJob, extra: dict | None = None) -> None:
        """Post the Event / notification once per job (with frames when ``extra`` has them)."""
        with job.lock:
            if job.sent or job.summary is None:
                return
            job.sent = True
        if job.timer is not None:
            job.timer.cancel()
        summary = dict(job.summary)
        summary.update(extra or {})
        for sink in self.sinks():
            try:
                sink.submit(summary)
            except Exception:  # noqa: BLE001
                log.exception("could not queue a crash notification")

    def _failed(self, job: SignatureJob, exc: Exception) -> None:
        """One bad core must not stop the worker: count it and still send the summary."""
        self.failed += 1
        log.error("signature failed", exc_info=exc, extra={"core": job.core_name})
        self._send(job)

    def _finish(self, job: SignatureJob) -> None:
        job.close()

    def _handle(self, job: SignatureJob) -> None:
        try:
            found = analyze_job(job, timeout=self.timeout, unwinder=self.unwinder)
        except OSError as exc:
            found = {"signature_error": f"core unreadable: {exc.strerror or exc}"}
        close_all(job.files)  # the unwinder is done with them
        doc = {**job.doc, **found}
        try:
            for name in (job.core_name, job.json_name):  # deleted meanwhile: nothing to update
                os.stat(name, dir_fd=job.dirfd, follow_symlinks=False)
            with as_process_credentials(job.creds):  # on this worker thread only
                replace_small_file(job.dirfd, job.json_name, meta.dumps(doc), mode=0o644, uid=job.uid,
                                   gid=job.gid)
        except (OSError, CredentialsError) as exc:
            log.warning("could not update the metadata with the signature",
                        extra={"core": job.core_name, "error": str(exc)})
        if "signature" in found and (sum(self.retention) > 0 or self.max_age > 0):
            self._retain(job, found)
        if "signature" in found:
            self.done += 1
            log.info("crash signature", extra={"core": job.doc.get("path"), "signature": found["signature"],
                                               "frames": found["signature_frames"],
                                               "source": found["signature_source"]})
        else:
            self.failed += 1
            log.warning("no crash signature", extra={"core": job.doc.get("path"),
                                                    "error": found.get("signature_error")})
        self._send(job, {k: found[k] for k in ("signature", "signature_frames", "backtrace") if k in found})

    def _retain(self, job: SignatureJob, found: dict) -> None:
        from webhook.agent.retention import prune

        kind = "snapshot" if job.doc.get("gcore") else "crash"
        try:
            with as_process_credentials(job.creds):
                gone = prune(job.dirfd, found["signature"], kind, *self.retention, max_age=self.max_age,
                             now=time.time())
        except (OSError, CredentialsError) as exc:
            log.warning("retention failed", extra={"core": job.core_name, "error": str(exc)})
            return
        for doc in gone:
            # The metadata files are in the tenant's volume: a record is only ever named in the
            # namespace of the verified crash whose directory this is (a PVC is namespaced).
            if doc.get("namespace") != job.doc.get("namespace"):
                log.warning("pruned core's metadata names another namespace: its record left alone",
                            extra={"core": doc.get("file"), "pod": job.doc.get("pod")})
                continue
            if self.on_pruned is not None:
                try:
                    self.on_pruned(doc)
                except Exception:  # noqa: BLE001
                    log.exception("could not report a pruned core")

    def flush(self, timeout: float = 60.0) -> bool:
        return super().flush(timeout)

    def close(self, timeout: float = 5.0) -> None:
        super().close(timeout)
        self.unwinder.close()
