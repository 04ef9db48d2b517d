"""Crash signatures and saved binaries for the agent: what is done while pinned, and what is not.

*While the crashing process is pinned* (inside ``CrashProcessor.handle``), the executable and
every mapped file are opened through the kernel's references (:mod:`webhook.agent.binaries`:
``/proc/<pid>/exe`` and ``/proc/<pid>/map_files``, never a path from ``maps``) and
:func:`prepare_job` keeps those fds, with a duplicate of the core directory's fd (it keeps the
pod's volume reachable after ``/proc/<pid>/root`` vanished).

*Off the crash path* (:class:`SignatureWorker`, one thread, a bounded queue): ``gdb -batch`` over
the core (``signature.analyze``) with a private sysroot on the node (``host_dir/staging/<random>``,
0700, ours) whose entries are links to those fds, so gdb reads the very inodes the process mapped
and the abort machinery of the container's libc unwinds to the real frames; without them, the
executable through its fd and a sysroot that does not exist (the node's own libraries must never
stand in for the container's), else the core alone; the result (``signature``, ``backtrace``,
``signature_frames``, ``signature_source``) is merged into ``<core>.json`` by writing a new file and
renaming it over the old one (the metadata file is ours: the one place where replacing is right).

The pod Event and the notification wait for the analysis, up to ``event_wait`` seconds, so they
carry the top frames: one Event per crash (no second "update" Event to aggregate, no extra RBAC
verb to patch Events), and a slow or stuck gdb only delays it by that bound.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from webhook.agent import metadata as meta
from webhook.agent.background import QueueWorker
from webhook.agent.creds import Credentials, CredentialsError, as_process_credentials
from webhook.agent.mappings import MappedFile, close_all
from webhook.agent.writer import RESOLVE_NAME, openat2, replace_small_file

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
    #: The process root's top-level links (``lib -> usr/lib``) for the private sysroot.
    links: dict[str, str] = field(default_factory=dict)
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
                files: list[MappedFile], links: dict[str, str] | None = None, *, uid: int | None,
                gid: int | None, proc: str = "/proc", creds: Credentials | None = None) -> SignatureJob:
    """Take the fds the analysis needs while the process is still there (``files`` become the job's)."""
    exe_fd = -1
    if global_pid > 0:
        try:
            exe_fd = os.open(f"{proc}/{global_pid}/exe", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            exe_fd = -1
    return SignatureJob(os.dup(dirfd), core_name, json_name, doc, exe_fd, exe, list(files), dict(links or {}),
                        uid=uid, gid=gid, creds=creds)


def private_sysroot(job: SignatureJob, staging: str) -> tuple[str, str | None] | None:
    """A new 0700 directory below ``staging`` whose paths (as the process saw them) are links to
    the job's open files (``/proc/<agent>/fd/N``: the very inodes mapped); (sysroot, exe link)."""
    usable = [f for f in job.files if f.fd >= 0 and f.path.startswith("/")]
    if not usable:
        return None
    os.makedirs(staging, mode=0o700, exist_ok=True)
    root = os.path.join(staging, secrets.token_hex(8))
    os.mkdir(root, 0o700)
    exe_link = None
    me = os.getpid()
    for f in usable:
        parts = [p for p in f.path.split("/") if p and p != "."]
        if not parts or ".." in parts:
            continue
        target = os.path.join(root, *parts)
        try:
            os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
            os.symlink(f"/proc/{me}/fd/{f.fd}", target)
        except OSError:
            continue  # under one of our own links, or a name given twice
        if f.is_exe:
            exe_link = target
    for name, link in job.links.items():
        try:
            os.symlink(link, os.path.join(root, name))
        except OSError:
            pass
    return root, exe_link


# --- off the crash path ----------------------------------------------------------------------
def analyze_job(job: SignatureJob, *, gdb: str = "gdb", timeout: float = 120.0, no_sysroot: str = "",
                memory_bytes: int = 0) -> dict:
    """Run gdb for a job; the metadata keys to merge (``signature_error`` when it failed).

    ``no_sysroot`` is a path that does not exist and that nobody else can create (below our
    0700 staging directory): as gdb's sysroot it makes libraries unresolved rather than the
    node's own.
    """
    from webhook.diagnose.signature import SignatureError, analyze

    core_fd = openat2(job.dirfd, job.core_name, os.O_RDONLY, resolve=RESOLVE_NAME)
    try:
        st = os.fstat(core_fd)
        if not (st.st_mode & 0o170000 == 0o100000) or st.st_size != job.doc.get("stored_size"):
            return {"signature_error": "the core file changed since it was written"}
        head = os.pread(core_fd, 18, 0)
        if head[:4] != b"\x7fELF" or int.from_bytes(head[16:18], "little" if head[5:6] == b"\x01" else "big") != 4:
            return {"signature_error": "not an ELF core file: not analyzed"}  # gdb never sees junk
        core = f"/proc/{os.getpid()}/fd/{core_fd}"
        staging = os.path.dirname(no_sysroot) if no_sysroot else os.path.join(tempfile.gettempdir(), "coredump-webhook-staging")
        private = private_sysroot(job, staging)
        made = private[0] if private else None
        if private and not private[1]:
            shutil.rmtree(private[0], ignore_errors=True)
            made = private = None
        if private and private[1]:
            sysroot, exe, source = private[0], private[1], "mapped_files"
        else:
            if job.exe_fd >= 0:
                exe, source = f"/proc/{os.getpid()}/fd/{job.exe_fd}", "exe"
            else:
                exe, source = None, "core_only"
            sysroot = no_sysroot or f"/nonexistent/coredump-no-sysroot-{secrets.token_hex(8)}"
        try:
            result = analyze(exe, core, sysroot=sysroot, gdb=gdb, timeout=timeout, memory_bytes=memory_bytes)
        except SignatureError as exc:
            return {"signature_error": str(exc)[:500], "signature_source": source}
        finally:
            if made:
                shutil.rmtree(made, ignore_errors=True)
        found = {**result.metadata(), "signature_source": source}
        if job.doc.get("gcore"):
            found["snapshot"] = True  # a live process's snapshot: never grouped with crashes
        return found
    finally:
        os.close(core_fd)


class SignatureWorker(QueueWorker):
    """One thread running gdb over cores, one at a time; ``submit`` never blocks."""

    def __init__(self, sinks: Callable[[], list[Any]], *, gdb: str = "gdb", timeout: float = 120.0,
                 event_wait: float = 30.0, maxsize: int = 16, no_sysroot: str = "", memory_bytes: int = 0,
                 retention: tuple[int, int] = (0, 0), on_pruned: Callable[[dict], Any] | None = None,
                 max_age: float = 0.0) -> None:
        """``retention``: (keep_first, keep_latest) per signature in the core's directory
        (webhook/agent/retention.py); ``on_pruned(doc)`` hears of each core deleted;
        ``memory_bytes``: gdb's own address-space cap (webhook/rlimited.py)."""
        self.sinks = sinks
        self.memory_bytes = memory_bytes
        self.retention = retention
        self.max_age = max_age
        self.on_pruned = on_pruned
        self.no_sysroot = no_sysroot
        self.gdb = gdb
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
            found = analyze_job(job, gdb=self.gdb, timeout=self.timeout, no_sysroot=self.no_sysroot,
                                memory_bytes=self.memory_bytes)
        except OSError as exc:
            found = {"signature_error": f"core unreadable: {exc.strerror or exc}"}
        close_all(job.files)  # gdb is done with them
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
