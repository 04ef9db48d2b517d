"""Crash signatures and saved binaries for the agent: what is done while pinned, and what is not.

*While the crashing process is pinned* (inside ``CrashProcessor.handle``):

- :func:`save_binaries` copies the executable and the libraries it mapped next to the core, as
  ``<core>.d/`` in sysroot layout. ``signature.save_mappings`` works with plain paths, so it never
  writes into the container: it fills a private staging directory on the node (``host_dir/
  staging/<random>``, 0700, ours), and each file is then copied into the core's directory through
  the safe writer (``openat2`` with ``RESOLVE_IN_ROOT`` from the core directory's fd, ``mkdirat``
  one name at a time, ``O_EXCL`` temporary names renamed without replacing). Nothing the
  container planted (symlinks, ``..``) can send a byte outside that directory.
- :func:`prepare_job` keeps what the analysis needs once the process is gone: a duplicate of the
  core directory's fd (it keeps the pod's volume reachable after ``/proc/<pid>/root`` vanished),
  an fd of the executable (``/proc/<pid>/exe``, the very inode that ran), the staging directory.

*Off the crash path* (:class:`SignatureWorker`, one thread, a bounded queue): ``gdb -batch`` over
the core (``signature.analyze``) with the saved binaries as sysroot when there are some, else the
executable through its fd and a sysroot that does not exist (the node's own libraries must never stand in for
the container's), else the core alone; the result (``signature``, ``backtrace``,
``signature_frames``, ``signature_source``) is merged into ``<core>.json`` by writing a new file and
renaming it over the old one (the metadata file is ours: the one place where replacing is right).

The pod Event and the notification wait for the analysis, up to ``event_wait`` seconds, so they
carry the top frames: one Event per crash (no second "update" Event to aggregate, no extra RBAC
verb to patch Events), and a slow or stuck gdb only delays it by that bound.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import queue
import secrets
import shutil
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from webhook.agent import metadata as meta
from webhook.agent.background import QueueWorker
from webhook.agent.creds import Credentials, CredentialsError, as_process_credentials
from webhook.agent.writer import RESOLVE_NAME, OutputFile, SafeRoot, openat2, replace_small_file

log = logging.getLogger(__name__)

#: Suffix of the directory of saved binaries next to a core.
BINARIES_SUFFIX = ".d"
COPY_CHUNK = 1 << 20


# --- while pinned ------------------------------------------------------------------------------
def staging_dir(host_dir: str) -> str:
    """A new private directory under ``host_dir/staging`` (node side, never the container's)."""
    base = os.path.join(host_dir, "staging")
    os.makedirs(base, mode=0o700, exist_ok=True)
    path = os.path.join(base, secrets.token_hex(8))
    os.mkdir(path, 0o700)
    return path


def _copy_into(dirfd: int, rel: str, src: str, uid: int | None, gid: int | None,
               creds: Credentials | None = None) -> str:
    """Copy ``src`` to ``rel`` below ``dirfd`` (resolved inside it); returns the name used.

    The directories and the file are created with ``creds`` (the crashing process's); the
    staging copy is read, and the new file filled, as the agent.
    """
    parent, name = posixpath.split(rel)
    with open(src, "rb") as fin:  # staging is the agent's (0700): opened before any switch
        root = SafeRoot(os.dup(dirfd), label="core directory")
        try:
            with as_process_credentials(creds):
                sub = root.open_dir(parent or "/", uid=uid, gid=gid)
                try:
                    out = OutputFile(sub, name, mode=0o644)
                except BaseException:
                    os.close(sub)
                    raise
        finally:
            root.close()
        try:
            with out:
                while chunk := fin.read(COPY_CHUNK):
                    out.write(chunk)
                out.chown(uid, gid)
                return out.commit()
        finally:
            os.close(sub)


def _make_unique_dir(dirfd: int, name: str, uid: int | None, gid: int | None) -> str:
    """mkdirat ``name`` (or ``name.1``...) in ``dirfd``: always a directory we just made."""
    for n in range(100):
        candidate = name if n == 0 else f"{name}.{n}"
        try:
            os.mkdir(candidate, 0o755, dir_fd=dirfd)
        except FileExistsError:
            continue
        if uid is not None or gid is not None:
            try:
                os.chown(candidate, -1 if uid is None else uid, -1 if gid is None else gid, dir_fd=dirfd,
                         follow_symlinks=False)
            except OSError:
                pass
        return candidate
    raise OSError(errno.EEXIST, "no free name for the binaries directory", name)


#: Top-level links of merged-/usr systems: the dynamic linker records libraries under these names
#: (``/lib/x86_64-linux-gnu/libc.so.6``) while /proc/<pid>/maps shows the real ``/usr/lib`` path;
#: gdb looks the recorded name up in the sysroot, so the links are recreated there.
ROOT_LINKS = ("lib", "lib64", "lib32", "libx32", "bin", "sbin")


def root_links(global_pid: int, proc: str = "/proc") -> dict[str, str]:
    """name -> relative target of the process root's top-level symlinks (``lib -> usr/lib``)."""
    links = {}
    for name in ROOT_LINKS:
        try:
            target = os.readlink(f"{proc}/{global_pid}/root/{name}")  # the link itself, not followed
        except OSError:
            continue
        target = target.lstrip("/")
        if target and ".." not in target.split("/"):
            links[name] = target
    return links


def _add_links(dirfd: int, links: dict[str, str]) -> list[str]:
    made = []
    for name, target in links.items():
        try:
            os.symlink(target, name, dir_fd=dirfd)  # symlinkat: creates, never follows
            made.append(name)
        except OSError:
            pass  # a real directory of that name exists (not merged /usr): nothing to add
    return made


def save_binaries(global_pid: int, dirfd: int, core_name: str, host_dir: str, budget: int, *,
                  uid: int | None, gid: int | None, proc: str = "/proc",
                  creds: Credentials | None = None) -> tuple[dict, str | None]:
    """Save the executable and libraries of the pinned process as ``<core_name>.d/``.

    Returns (metadata keys, the staging directory to use as sysroot, or None when nothing was
    saved). Never raises for the usual trouble: it is reported in the metadata. What is created
    below ``dirfd`` is created with ``creds`` (the crashing process's credentials, None: the
    agent's); the staging directory is always the agent's.
    """
    from webhook.inspect.signature import save_mappings

    stage = staging_dir(host_dir)
    try:
        saved = save_mappings(global_pid, stage, budget, proc=proc)
    except OSError as exc:
        shutil.rmtree(stage, ignore_errors=True)
        return {"binaries_error": f"{exc.strerror or exc}"}, None
    files = [s for s in saved if s.saved_as]
    if not files:
        shutil.rmtree(stage, ignore_errors=True)
        return {"binaries": [], "binaries_skipped": [{"path": s.path, "reason": s.skipped} for s in saved]}, None
    links = root_links(global_pid, proc)
    stage_fd = os.open(stage, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _add_links(stage_fd, links)
    finally:
        os.close(stage_fd)
    try:
        with as_process_credentials(creds):
            dirname = _make_unique_dir(dirfd, core_name + BINARIES_SUFFIX, uid, gid)
    except (OSError, CredentialsError) as exc:
        shutil.rmtree(stage, ignore_errors=True)
        return {"binaries_error": f"{getattr(exc, 'strerror', None) or exc}"}, None
    copied, skipped = [], [{"path": s.path, "reason": s.skipped} for s in saved if not s.saved_as]
    for s in files:
        try:
            _copy_into(dirfd, posixpath.join(dirname, s.path.lstrip("/")), s.saved_as, uid, gid, creds)
            copied.append(s.path)
        except (OSError, CredentialsError) as exc:
            skipped.append({"path": s.path, "reason": f"copy failed: {getattr(exc, 'strerror', None) or exc}"})
    try:
        bdir = openat2(dirfd, dirname, os.O_RDONLY | os.O_DIRECTORY, resolve=RESOLVE_NAME)
        try:
            with as_process_credentials(creds):
                _add_links(bdir, links)
        finally:
            os.close(bdir)
    except (OSError, CredentialsError):
        pass
    return {"binaries_dir": dirname, "binaries": copied, "binaries_skipped": skipped,
            "binaries_bytes": sum(s.size for s in files if s.path in copied)}, stage


@dataclass
class SignatureJob:
    """What the worker needs once the process is gone; owns its fds and staging directory."""

    dirfd: int
    core_name: str
    json_name: str
    doc: dict
    #: fd of the executable (opened from /proc/<pid>/exe while pinned), or -1.
    exe_fd: int = -1
    #: Path of the executable inside the process's root (for the saved-binaries sysroot).
    exe: str = ""
    #: Staging directory holding the saved binaries (sysroot layout), or None.
    sysroot: str | None = None
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
        self.drop_sysroot()

    def drop_sysroot(self) -> None:
        """Remove the staging copy of the binaries (the node's disk, not the saved ``.d``)."""
        if self.sysroot:
            shutil.rmtree(self.sysroot, ignore_errors=True)
            self.sysroot = None


def prepare_job(global_pid: int, dirfd: int, core_name: str, json_name: str, doc: dict, exe: str,
                sysroot: str | None, *, uid: int | None, gid: int | None, proc: str = "/proc",
                creds: Credentials | None = None) -> SignatureJob:
    """Take the fds the analysis needs while the process is still there."""
    try:
        exe_fd = os.open(f"{proc}/{global_pid}/exe", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        exe_fd = -1
    return SignatureJob(os.dup(dirfd), core_name, json_name, doc, exe_fd, exe, sysroot, uid=uid, gid=gid,
                        creds=creds)


# --- off the crash path ----------------------------------------------------------------------
def analyze_job(job: SignatureJob, *, gdb: str = "gdb", timeout: float = 120.0, no_sysroot: str = "",
                memory_bytes: int = 0) -> dict:
    """Run gdb for a job; the metadata keys to merge (``signature_error`` when it failed).

    ``no_sysroot`` is a path that does not exist and that nobody else can create (below our
    0700 staging directory): as gdb's sysroot it makes libraries unresolved rather than the
    node's own.
    """
    from webhook.inspect.signature import SignatureError, analyze

    core_fd = openat2(job.dirfd, job.core_name, os.O_RDONLY, resolve=RESOLVE_NAME)
    try:
        st = os.fstat(core_fd)
        if not (st.st_mode & 0o170000 == 0o100000) or st.st_size != job.doc.get("stored_size"):
            return {"signature_error": "the core file changed since it was written"}
        head = os.pread(core_fd, 18, 0)
        if head[:4] != b"\x7fELF" or int.from_bytes(head[16:18], "little" if head[5:6] == b"\x01" else "big") != 4:
            return {"signature_error": "not an ELF core file: not analyzed"}  # gdb never sees junk
        core = f"/proc/{os.getpid()}/fd/{core_fd}"
        saved_exe = os.path.join(job.sysroot, job.exe.lstrip("/")) if job.sysroot and job.exe else None
        if saved_exe and os.path.isfile(saved_exe):
            exe, sysroot, source = saved_exe, job.sysroot, "saved_binaries"
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
        return {**result.metadata(), "signature_source": source}
    finally:
        os.close(core_fd)


def frames_text(frames: list[str], n: int = 3) -> str:
    """'h < f < main': the top frames of a signature, innermost first."""
    return " < ".join(frames[:n])


class SignatureWorker(QueueWorker):
    """One thread running gdb over cores, one at a time; ``submit`` never blocks."""

    def __init__(self, sinks: Callable[[], list[Any]], *, gdb: str = "gdb", timeout: float = 120.0,
                 event_wait: float = 30.0, maxsize: int = 16, no_sysroot: str = "", memory_bytes: int = 0) -> None:
        self.sinks = sinks
        self.memory_bytes = memory_bytes
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
        job.drop_sysroot()  # gdb is done with it: gone before the result shows in the metadata
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

    def flush(self, timeout: float = 60.0) -> bool:
        return super().flush(timeout)
