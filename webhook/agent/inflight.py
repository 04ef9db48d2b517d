"""Dumps a killed agent left in flight, found again by its successor and saved or reported.

Every dump is recorded in the in-flight journal while it runs (``HOSTDIR/inflight/<id>.json``,
webhook/agent/journal.py). An agent killed mid-dump (SIGKILL, OOM, node pressure) leaves the
entry behind, and its successor's :func:`recover` handles each one:

- it reaches the temporary file again (webhook/agent/reach.py): the node location directly; a
  pod's volume through a live process of the same container, else through a live process of any
  container on this node that mounts the same storage, the temporary file being looked up inside
  that process's root with ``openat2``;
- something was written: the file becomes ``<name>.partial`` (never replacing a name) with its
  metadata, ``truncated_reason: agent_restarted``, and the crash's Event says so;
- nothing was written: the temporary files are removed;
- it cannot be reached (the container is gone, no other live container mounts its storage): the loss and the leftover's path are logged,
  counted and posted as an Event on the pod.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from webhook import constants
from webhook import digest as digests
from webhook.agent import metadata as meta
from webhook.agent.identity import HOST, UNVERIFIED, VERIFIED
from webhook.agent.journal import Journal, discard_entry
from webhook.agent.reach import Peer, roots
from webhook.agent.writer import (
    MAX_SUFFIX,
    RESOLVE_NAME,
    TMP_PREFIX,
    SafeRoot,
    openat2,
    rename_noreplace,
    write_small_file,
)

log = logging.getLogger(__name__)

REASON = "agent_restarted"


class RecoveryMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.recovered = Counter("coredump_agent_inflight_recovered",
                                 "Dumps a killed agent left in flight, by what its successor did "
                                 "(partial, removed_empty, unreachable, gone)", ["result"], registry=registry)


@dataclass
class Recovered:
    """What became of one leftover (also what the log line, the Event and tests see)."""

    result: str  # partial, removed_empty, unreachable, gone
    entry: dict[str, Any]
    path: str | None = None  # the .partial, as the container sees it
    leftover: str | None = None  # the temporary file, as the container sees it
    size: int = 0
    detail: str = ""
    #: Whose root it was reached through when not the crashed container's ("<ns>/<pod>/<container>").
    via: str = ""
    #: (st_dev, st_ino) of the .partial: proves it is the same file when its names are filled in
    #: later (webhook/agent/pending.py).
    file_id: tuple[int, int] | None = None



def _exists(dirfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except OSError:
        return None


def _commit_existing(dirfd: int, tmp: str, base: str) -> str:
    """Rename ``tmp`` to ``base`` (or ``base`` with ``.1``... before the ``.partial``)."""
    stem, ext = base, ""
    for suffix in (".zst" + constants.PARTIAL_SUFFIX, constants.PARTIAL_SUFFIX):
        if base.endswith(suffix):
            stem, ext = base[: -len(suffix)], suffix
            break
    for n in range(MAX_SUFFIX + 1):
        candidate = (stem if n == 0 else f"{stem}.{n}") + ext
        try:
            rename_noreplace(dirfd, tmp, candidate)
            return candidate
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise
    raise OSError(errno.EEXIST, "every suffixed name exists", base)


def _digest(dirfd: int, name: str, algorithm: str) -> str:
    fd = openat2(dirfd, name, os.O_RDONLY | os.O_NOFOLLOW, resolve=RESOLVE_NAME)
    h = digests.new(algorithm)
    try:
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
    finally:
        os.close(fd)
    return digests.format_digest(algorithm, h.hexdigest())


def identity_of(entry: dict[str, Any]) -> str:
    """The entry's identity state (webhook/agent/identity.py). An entry without one (written
    before it was recorded) had its names from the watch only: the rule of ``Resolved.state``."""
    state = entry.get("identity")
    if state in (VERIFIED, UNVERIFIED, HOST):
        return state
    if entry.get("namespace") and entry.get("pod"):
        return VERIFIED
    return UNVERIFIED if entry.get("pod_uid") else HOST


def _verified_names(entry: dict[str, Any]) -> dict[str, Any]:
    """namespace, pod, container, image, labels, owner: the watch's, or nothing when unverified."""
    if identity_of(entry) != VERIFIED:
        return {"namespace": None, "pod": None, "container": None, "image": None, "labels": {}, "owner": None}
    return {k: entry.get(k) for k in ("namespace", "pod", "container", "image", "owner")} | {
        "labels": entry.get("labels") or {}}


def _metadata(entry: dict[str, Any], path: str, file: str, size: int, disk: int, digest: str | None, node: str) -> dict:
    names = _verified_names(entry)
    doc = meta.build(
        node=node or entry.get("node", ""), namespace=names["namespace"], pod=names["pod"],
        pod_uid=entry.get("pod_uid"), container=names["container"], container_id=entry.get("container_id"),
        image=names["image"], labels=names["labels"], owner=names["owner"],
        runtime=entry.get("runtime"), registered=bool(entry.get("registered")),
        identification=entry.get("identification", ""), destination=entry.get("destination", ""),
        pid=int(entry.get("pid", 0)), global_pid=int(entry.get("global_pid", 0)), tid=int(entry.get("tid", 0)),
        global_tid=int(entry.get("global_tid", 0)), uid=int(entry.get("uid", 0)), gid=int(entry.get("gid", 0)),
        signal=int(entry.get("signal", 0)), exe=entry.get("exe", ""), comm=entry.get("comm", ""),
        hostname=entry.get("hostname", ""), time=int(entry.get("time", 0)), path=path, file=file,
        size=size if entry.get("compression", "none") == "none" else 0, stored_size=size, disk_size=disk,
        digest=digest, compression=entry.get("compression", "none"), truncated=True, reason=REASON,
        pattern=entry.get("pattern", ""), rlimit_core=int(entry.get("rlimit_core", 0)),
        dump_mode=int(entry.get("dump_mode", 0)), spool_reason=entry.get("spool_reason", ""))
    doc["identity"] = identity_of(entry)
    doc["agent_restarted_at"] = meta.iso_time(time.time())
    return doc


def recover_entry(entry: dict[str, Any], *, node_cores_dir: str, node: str = "", proc: str = "/proc",
                  peers: Callable[[dict[str, Any]], list[Peer]] | None = None,
                  digest: str = digests.DEFAULT) -> Recovered:
    """Turn one leftover into a ``.partial`` with metadata, remove it, or say it is unreachable."""
    directory = entry.get("directory") or "/"
    tmp, meta_tmp, name = entry.get("tmp_name", ""), entry.get("meta_tmp_name", ""), entry.get("name", "")
    view_dir = directory if entry.get("destination") == "pod" else posixpath.join(node_cores_dir,
                                                                                  directory.lstrip("/"))
    leftover = posixpath.join(view_dir, tmp)
    if not tmp.startswith(TMP_PREFIX) or "/" in tmp or (meta_tmp and "/" in meta_tmp) or not name or "/" in name:
        return Recovered("gone", entry, leftover=leftover, detail="malformed journal entry")
    reached_any = False
    for root_path, inside, via in roots(entry, node_cores_dir, proc, peers):
        try:
            root = SafeRoot.open(root_path)
        except OSError:
            continue
        try:
            try:
                dirfd = root.open_dir(inside, create=False)
            except OSError:
                continue
            try:
                reached_any = True
                st = _exists(dirfd, tmp)
                if st is None:
                    continue  # another process may see another mount here
                rec = _finish(entry, dirfd, st, tmp, meta_tmp, name, view_dir, leftover, node, via, digest)
                rec.via = via
                return rec
            finally:
                os.close(dirfd)
        finally:
            root.close()
    if reached_any:
        return Recovered("gone", entry, leftover=leftover, detail="the temporary file is no longer there")
    claim = entry.get("volume") if isinstance(entry.get("volume"), dict) else None
    detail = "no live process of the container to reach its volume through"
    if claim:
        detail += f", nor of another container on this node mounting {claim.get('source')}"
    return Recovered("unreachable", entry, leftover=leftover, detail=detail)


def _finish(entry: dict[str, Any], dirfd: int, st: os.stat_result, tmp: str, meta_tmp: str, name: str,
            view_dir: str, leftover: str, node: str, via: str = "", digest: str = digests.DEFAULT) -> Recovered:
    if st.st_size == 0:
        for n in (tmp, meta_tmp):
            if n:
                try:
                    os.unlink(n, dir_fd=dirfd)
                except OSError:
                    pass
        return Recovered("removed_empty", entry, leftover=leftover)
    ext = ".zst" if entry.get("compression") == "zstd" else ""
    final = _commit_existing(dirfd, tmp, name + ext + constants.PARTIAL_SUFFIX)
    path = posixpath.join(view_dir, final)
    # The digest covers a core's original bytes (`coredump get` checks the decompressed download):
    # a cut zstd stream's original bytes are not at hand, so its digest stays null, never a wrong one.
    value = None if ext else _digest(dirfd, final, digest)
    doc = _metadata(entry, path, final, st.st_size, st.st_blocks * 512, value, node)
    if via:  # the crashed container was gone: reached through another container on its storage
        doc["recovered_through"] = via
    data = meta.dumps(doc)
    uid, gid = entry.get("uid_owner"), entry.get("gid_owner")
    written = False
    if meta_tmp and _exists(dirfd, meta_tmp) is not None:  # the space reserved for it (metafile.py)
        try:
            fd = openat2(dirfd, meta_tmp, os.O_WRONLY | os.O_NOFOLLOW, resolve=RESOLVE_NAME)
            try:
                os.pwrite(fd, data, 0)
                os.ftruncate(fd, len(data))
                os.fsync(fd)
            finally:
                os.close(fd)
            _commit_existing(dirfd, meta_tmp, final + constants.METADATA_SUFFIX)
            written = True
        except OSError as exc:
            log.warning("could not use the reserved metadata file", extra={"path": path, "error": str(exc)})
    if not written:
        write_small_file(dirfd, final + constants.METADATA_SUFFIX, data, uid=uid, gid=gid)
        if meta_tmp:
            try:
                os.unlink(meta_tmp, dir_fd=dirfd)
            except OSError:
                pass
    return Recovered("partial", entry, path=path, leftover=leftover, size=st.st_size, file_id=(st.st_dev, st.st_ino))


def recover(journal: Journal, *, node_cores_dir: str, node: str = "", events: Any = None,
            registry: CollectorRegistry | None = None, proc: str = "/proc",
            on_result: Callable[[Recovered], None] | None = None,
            peers: Callable[[dict[str, Any]], list[Peer]] | None = None, pending: Any = None,
            pod_record: Callable[[str], Any] | None = None, digest: str = digests.DEFAULT) -> list[Recovered]:
    """Handle every leftover of earlier agents (see the module doc); never raises. ``peers``
    (:func:`peers_on_node`): other containers on an entry's storage, tried when its own are gone.
    ``pending`` (webhook.agent.pending.PendingIdentities) takes the recovered cores of pods the
    watch did not know at the crash, as for a live unverified crash: their names are filled in,
    and their Event posted, once it does; ``pod_record`` (the watch's ``PodIndex.record``) tells
    whether it already does (its list may have come before the recovery)."""
    metrics = RecoveryMetrics(registry) if registry is not None else None
    results = []
    for path, entry in journal.leftovers():
        try:
            rec = recover_entry(entry, node_cores_dir=node_cores_dir, node=node, proc=proc, peers=peers, digest=digest)
        except Exception as exc:  # noqa: BLE001 - one bad leftover never stops the others
            log.exception("in-flight recovery failed", extra={"entry": path})
            rec = Recovered("unreachable", entry, detail=f"recovery failed: {exc}")
        _report(rec, events, metrics, pending, pod_record)
        if on_result is not None:
            on_result(rec)
        results.append(rec)
        discard_entry(path)
    return results


#: How each result is logged (any other is a core lost).
_RESULT_LOG = {
    "partial": (logging.WARNING, "core of a dump cut by the agent's restart kept as partial"),
    "removed_empty": (logging.INFO, "empty leftover of a dump cut by the agent's restart removed"),
}
_LOST = (logging.ERROR, "core lost: the agent was restarted mid-dump and its leftover cannot be recovered")
#: The entry's keys a recovered crash's summary carries.
_SUMMARY_KEYS = ("namespace", "pod", "pod_uid", "container", "container_id", "pid", "global_pid", "signal", "comm",
                 "image", "node", "destination")


def _report(rec: Recovered, events: Any, metrics: RecoveryMetrics | None, pending: Any = None,
            pod_record: Callable[[str], Any] | None = None) -> None:
    e = dict(rec.entry, **_verified_names(rec.entry))
    state = identity_of(e)
    level, message = _RESULT_LOG.get(rec.result, _LOST)
    log.log(level, message, extra=_log_line(rec, e, state))
    if metrics is not None:
        metrics.recovered.labels(rec.result).inc()
    if rec.result == "removed_empty":
        return
    summary = _recovered_summary(rec, e, state)
    if state == UNVERIFIED and pending is not None:  # named (and announced) once the watch knows the pod
        _keep_for_later(rec, e, summary, pending, pod_record)
        return
    if events is None or state != VERIFIED:
        return
    try:
        events.submit(summary)
    except Exception:  # noqa: BLE001
        log.exception("could not queue the Event of a recovered dump")


def _log_line(rec: Recovered, e: dict, state: str) -> dict:
    return {"result": rec.result, "namespace": e.get("namespace"), "pod": e.get("pod"),
            "container": e.get("container"), "pod_uid": e.get("pod_uid"), "container_id": e.get("container_id"),
            "identity": state, "pid": e.get("pid"), "global_pid": e.get("global_pid"),
            "comm": e.get("comm"), "path": rec.path, "leftover": rec.leftover, "size": rec.size,
            "detail": rec.detail, "via": rec.via or None}


def _recovered_summary(rec: Recovered, e: dict, state: str) -> dict[str, Any]:
    """What the Event sink gets for a recovered dump: kept as partial, or failed."""
    summary: dict[str, Any] = {k: e.get(k) for k in _SUMMARY_KEYS}
    summary["identity"] = state
    summary["signal_name"] = meta.signal_name(int(e.get("signal") or 0))
    if rec.result == "partial":
        summary.update(outcome="partial", path=rec.path, size=rec.size, truncated_reason=REASON, reason=REASON)
    else:
        summary.update(outcome="failed", path=None, size=0,
                       reason=f"{REASON}: dump cut by the agent's restart; leftover {rec.leftover} ({rec.detail})")
    return summary


def _keep_for_later(rec: Recovered, e: dict, summary: dict[str, Any], pending: Any,
                    pod_record: Callable[[str], Any] | None) -> None:
    """An unverified crash waits in ``pending`` until the pod watch names it (now, if it already can)."""
    if rec.result == "partial":
        summary["file_id"] = list(rec.file_id) if rec.file_id else None
        if e.get("destination") == "node":
            summary["host_path"] = rec.path
    try:
        pending.add(summary)
        known = pod_record(summary["pod_uid"]) if pod_record is not None else None
        if known is not None:  # listed before it was added: fill it in now
            pending.on_pod(known)
    except Exception:  # noqa: BLE001
        log.exception("could not keep an unverified recovered crash for later")
