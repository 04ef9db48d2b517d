"""Capturing one core into its target, in the order the crash path needs.

The files are created with the crashing process's credentials (a pod's target carries them),
the pipe is streamed into the temporary core (``stream``), the core is named and its binaries
kept while the process is still pinned (``pinned``); then the process is released and what can
wait runs: the hash and the holes (``finish``), the fsync, and the metadata, written once with
the computed hash into the space reserved for it. Each dump is in the in-flight journal while
it runs, so a killed agent's successor finds its leftovers (``inflight``).
"""

from __future__ import annotations

import logging
import os
import posixpath
from typing import Any, BinaryIO

from webhook import constants
from webhook.agent import journal as journal_mod
from webhook.agent import metadata as meta
from webhook.agent.crash_request import CrashOutcome, CrashRequest, Handled, who_fields
from webhook.agent.creds import CredentialsError, as_process_credentials
from webhook.agent.finish import finish_core
from webhook.agent.identity import Resolved
from webhook.agent.metafile import ReservedMetadata
from webhook.agent.pinned import PinnedWork
from webhook.agent.procinfo import Identity, ProcessInfo
from webhook.agent.release import release_now
from webhook.agent.settings import AgentSettings
from webhook.agent.stream import StreamLimits, StreamResult, stream_core
from webhook.agent.target import NoPodTarget, Target, create_files
from webhook.agent.writer import OutputFile, SafeRoot

log = logging.getLogger(__name__)


class Capture:
    """Writes cores into their targets; safe to call from several threads at once."""

    def __init__(self, settings: AgentSettings, journal: journal_mod.Journal | None, pinned: PinnedWork) -> None:
        self.settings = settings
        self.journal = journal
        self.pinned = pinned

    def write(self, request: CrashRequest, core: int | BinaryIO, proc: ProcessInfo | None, ident: Identity,
              who: Resolved, target: Target, start: float,
              fallback_reason: str | None = None, fallback_detail: str = "") -> Handled:
        if not target.pod:
            os.makedirs(self.settings.node_cores_dir, mode=0o700, exist_ok=True)
        try:
            root = SafeRoot.open(target.root_path)  # as root, before any switch: /proc/<pid>/root needs it
        except OSError as exc:
            if target.pod:
                raise NoPodTarget("root_unreachable", str(exc)) from None
            raise
        names = journal_mod.tmp_names(target.name)
        token = None
        if self.journal is not None:  # before anything is created: a killed agent's successor finds it
            token = self.journal.begin(journal_mod.entry_for(
                request, who, target, names, node=self.settings.node_name, exe=proc.exe if proc else "",
                registered=ident.registration is not None, identification=fallback_reason or ident.reason))
        try:
            try:
                # The kernel would create the core with the process's credentials (a pod's
                # target carries them; the node location's has none): so do we.
                with as_process_credentials(target.creds):
                    dirfd, out, meta_out = create_files(root, target, names,
                                                        keep_free_bytes=self.settings.keep_free_bytes)
            except CredentialsError as exc:
                raise NoPodTarget("credentials_unavailable", str(exc)) from None
            try:
                # Creation proved the permission: streaming, fsync and the rename run as the agent.
                return self._stream(request, core, proc, ident, who, target, dirfd, out, start, fallback_reason,
                                    meta_out, fallback_detail=fallback_detail)
            finally:
                meta_out.discard()  # a no-op once the metadata is committed
                os.close(dirfd)
        finally:
            if self.journal is not None:
                self.journal.end(token)
            root.close()

    def _stream(self, request: CrashRequest, core: int | BinaryIO, proc: ProcessInfo | None, ident: Identity,
                who: Resolved, target: Target, dirfd: int, out: OutputFile, start: float,
                fallback_reason: str | None, meta_out: ReservedMetadata, fallback_detail: str = "") -> Handled:
        limits = self._limits(target, start)
        result = _copy(core, out, target, limits)  # the only step that needs the pipe
        final, commit_error = _name(out, target, result)
        view_dir, path, host_path = _paths(target, final)
        doc = self._describe(request, proc, ident, who, target, result, path, final, fallback_reason,
                             fallback_detail)
        pinned = None if request.spooled else proc  # a spooled core's process is gone: no binaries of it
        files, _links = self.pinned.keep_binaries(request, pinned, dirfd, final, doc, target)
        job = self.pinned.signature_job(pinned, dirfd, final, final and final + constants.METADATA_SUFFIX, doc,
                                        target, files)

        # --- the process is let go here (webhook/agent/release.py): the rest can wait ---------
        release_now()
        if final:
            result = _finish(out, result, limits, path, self.settings.digest)
        disk_size, file_id = _disk_usage(dirfd, final)
        outcome, reason = _verdict(result, final, commit_error, fallback_reason or ident.reason)
        # Only now, with the hash computed (or known to be missing: null), is the metadata written.
        doc.update(size=result.size, disk_size=disk_size, digest=result.digest or None,
                   truncated=not result.complete, truncated_reason=result.reason)
        json_name = _commit_metadata(meta_out, final, doc, target, path)
        metadata_path = posixpath.join(view_dir, json_name) if json_name else None
        job = _attach_metadata(job, json_name)
        outcome_obj = CrashOutcome(
            outcome, reason, path=path, metadata_path=metadata_path, size=result.size, disk_size=disk_size,
            destination=target.destination, host_path=host_path, digest=result.digest or None,
            compression=target.compression, truncated=not result.complete, file_id=file_id,
            **who_fields(who))
        return outcome_obj, doc, job

    def _limits(self, target: Target, start: float) -> StreamLimits:
        s = self.settings
        return StreamLimits(max_bytes=target.max_bytes, max_reason=target.max_reason,
                            keep_free_bytes=s.keep_free_bytes, deadline=start + s.dump_timeout_seconds,
                            compression=target.compression, zstd_level=s.zstd_level,
                            zstd_threads=s.zstd_threads)

    def _describe(self, request: CrashRequest, proc: ProcessInfo | None, ident: Identity, who: Resolved,
                  target: Target, result: StreamResult, path: str | None, final: str | None,
                  fallback_reason: str | None, fallback_detail: str) -> dict[str, Any]:
        """The metadata document, but for what is known only after the release (size, hash)."""
        s = self.settings
        exe = proc.exe if proc else ""
        doc = meta.build(
            node=s.node_name, namespace=who.namespace, pod=who.pod, pod_uid=who.pod_uid, container=who.container,
            container_id=who.container_id, image=who.image, labels=who.labels, owner=who.owner, runtime=who.runtime,
            registered=ident.registration is not None, identification=fallback_reason or ident.reason,
            destination=target.destination, pid=request.pid, global_pid=request.global_pid, tid=request.tid,
            global_tid=request.global_tid, uid=request.uid, gid=request.gid, signal=request.signal, exe=exe,
            comm=request.comm, hostname=request.hostname, time=request.time, path=path or "", file=final or "",
            size=result.size, stored_size=result.written, disk_size=0, digest=None,
            compression=target.compression, truncated=not result.complete, reason=result.reason,
            pattern=target.pattern, rlimit_core=request.rlimit_core, dump_mode=request.dump_mode,
            spool_reason=request.spool_reason)
        doc["identity"] = who.state
        if fallback_reason:  # why a registered pod's core is in the node location
            doc["fallback_reason"], doc["fallback_detail"] = fallback_reason, fallback_detail or None
        if who.mismatches:
            doc["identity_mismatches"] = sorted(who.mismatches)  # the fields only, never the claims
        if request.snapshot_id:
            doc["gcore"] = True
            doc["gcore_request"] = request.snapshot_id
        return doc


def _copy(core: int | BinaryIO, out: OutputFile, target: Target, limits: StreamLimits) -> StreamResult:
    """The core from the pipe into the temporary file (discarded if anything raises)."""
    try:
        out.chown(target.uid, target.gid)
        return stream_core(core, out.fd, limits)
    except BaseException:
        out.discard()
        raise


def _name(out: OutputFile, target: Target, result: StreamResult) -> tuple[str | None, str | None]:
    """The core's final name, when anything was captured (a cut one ``.partial``), and why the
    rename failed (then the file is discarded)."""
    if not (result.complete or result.size > 0):
        out.discard()
        return None, None
    ext = ".zst" if target.compression == "zstd" else ""
    try:
        # Named now (the binaries and the signature job need the name while the process
        # is pinned); made durable after the release.
        return out.commit(target.name, ext if result.complete else ext + constants.PARTIAL_SUFFIX,
                          sync=False), None
    except OSError as exc:
        out.discard()
        return None, f"{exc.strerror or exc}"


def _paths(target: Target, final: str | None) -> tuple[str, str | None, str | None]:
    """(the directory as the container sees it, the core's path there, the core's path as the
    agent sees it); the node location's paths are the agent's."""
    host_dir = posixpath.join(target.root_path, target.directory.lstrip("/"))
    view_dir = target.directory if target.pod else host_dir  # the node location: the agent's path
    path = posixpath.join(view_dir, final) if final else None
    host_path = posixpath.join(host_dir, final) if final else None
    return view_dir, path, host_path


def _finish(out: OutputFile, result: StreamResult, limits: StreamLimits, path: str | None,
            algorithm: str) -> StreamResult:
    """After the release: what can wait (finish.py), then the core made durable."""
    result = finish_core(out.fd, result, limits, algorithm)  # the digest from the page cache; holes
    try:
        out.sync()
    except OSError as exc:
        log.warning("could not fsync the core", extra={"path": path, "error": str(exc)})
    return result


def _disk_usage(dirfd: int, final: str | None) -> tuple[int, tuple[int, int] | None]:
    """Bytes the core takes on disk and its (st_dev, st_ino); (0, None) when unknown."""
    if not final:
        return 0, None
    try:
        st = os.stat(final, dir_fd=dirfd, follow_symlinks=False)
    except OSError:
        return 0, None
    return st.st_blocks * 512, (st.st_dev, st.st_ino)


def _verdict(result: StreamResult, final: str | None, commit_error: str | None,
             written_reason: str) -> tuple[str, str]:
    """The outcome and its reason."""
    if commit_error:
        outcome, reason = "failed", f"commit_failed: {commit_error}"
    elif result.complete:
        outcome, reason = "written", written_reason
    elif final:
        outcome, reason = "partial", result.reason or "unknown"
    else:
        outcome, reason = "failed", f"{result.reason}: nothing captured"
    if result.detail and outcome != "written":
        reason = f"{reason} ({result.detail})"
    return outcome, reason


def _commit_metadata(meta_out: ReservedMetadata, final: str | None, doc: dict[str, Any], target: Target,
                     path: str | None) -> str | None:
    """The metadata file's name once written, None when there is no core or it could not be."""
    if not final:
        return None
    try:  # into the space reserved before the core streamed (created with the process's creds)
        return meta_out.commit(final + constants.METADATA_SUFFIX, doc, meta.dumps, uid=target.uid,
                               gid=target.gid)
    except OSError as exc:
        log.warning("could not write the metadata", extra={"path": path, "error": str(exc)})
        return None


def _attach_metadata(job: Any, json_name: str | None) -> Any:
    """The signature job learns its metadata file; without one it has nothing to annotate."""
    if job is None:
        return None
    if json_name:
        job.json_name = json_name
        return job
    job.close()
    return None

