"""Dumps in flight, recorded in the host dir, so a killed agent's leftovers are found again.

Before the crash path creates a core's temporary file it writes ``HOSTDIR/inflight/<id>.json``:
where (destination, directory inside the root, temporary names, final name), whose (pod,
container, container ID) and what (the kernel's values). The entry is removed once the dump is
done, whatever its outcome. An agent killed mid-dump (SIGKILL, OOM, node pressure) leaves the
entry behind, and its successor's :func:`recover` handles each one:

- it reaches the temporary file again: the node location directly; a pod's volume through a live
  process of the same container (by container ID, from ``/proc/<pid>/cgroup``: the kernel's
  word), else through a live process of any container on this node that mounts the same storage
  (the entry's ``volume``: same PVC in the same namespace, same NFS export, same hostPath, or the
  same pod's volume; webhook/agent/podvolumes.py) at a path under which the directory lies, the
  temporary file being looked up inside that process's root with ``openat2``;
- something was written: the file becomes ``<name>.partial`` (never replacing a name) with its
  metadata, ``truncated_reason: agent_restarted``, and the crash's Event says so;
- nothing was written: the temporary files are removed;
- it cannot be reached (the container is gone, no other live container mounts its storage): the loss and the leftover's path are logged,
  counted and posted as an Event on the pod.

The entry is written without fsync: it must survive the agent's death, which the page cache
does; a node that loses power restarts its containers, whose leftovers are then unreachable
anyway (they are reported as such).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import posixpath
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from webhook import constants
from webhook import digest as digests
from webhook.agent import metadata as meta
from webhook.agent.identity import HOST, UNVERIFIED, VERIFIED
from webhook.agent.metafile import reserved_tmp_name
from webhook.agent.podvolumes import claim_of, translate
from webhook.agent.procinfo import parse_cgroup
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

JOURNAL_DIR = "inflight"
REASON = "agent_restarted"
_ENTRY_SUFFIX = ".json"


def tmp_names(name: str) -> tuple[str, str]:
    """Temporary names for a core and its metadata (the writer's prefix; distinct random tokens,
    so even names cut at 255 bytes never collide)."""
    return f"{TMP_PREFIX}{secrets.token_hex(6)}.{name}"[:255], reserved_tmp_name(name)


#: This agent process: its own entries are never "left over" for it, whichever Journal wrote them.
INSTANCE = f"{os.getpid()}-{time.time_ns()}"


class Journal:
    """``HOSTDIR/inflight``: one small JSON file per dump in flight."""

    def __init__(self, host_dir: str, instance: str = INSTANCE) -> None:
        self.dir = os.path.join(host_dir, JOURNAL_DIR)
        self.instance = instance

    def begin(self, entry: dict[str, Any]) -> str | None:
        """Record one dump; returns its token for :meth:`end` (None when it could not be
        recorded: logged, and the dump goes on: the journal never costs a core)."""
        token = f"{int(time.time())}-{secrets.token_hex(6)}"
        body = dict(entry, id=token, instance=self.instance, recorded_at=time.time())
        try:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            tmp = os.path.join(self.dir, f".{token}.tmp")
            with open(tmp, "w") as f:
                json.dump(body, f)
            os.rename(tmp, os.path.join(self.dir, token + _ENTRY_SUFFIX))
        except OSError as exc:
            log.warning("could not record the dump in flight", extra={"error": str(exc), "pid": entry.get("global_pid")})
            return None
        return token

    def end(self, token: str | None) -> None:
        if token is None:
            return
        try:
            os.unlink(os.path.join(self.dir, token + _ENTRY_SUFFIX))
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not clear a finished dump from the journal", extra={"error": str(exc)})

    def leftovers(self) -> list[tuple[str, dict[str, Any]]]:
        """Entries written by other (earlier) agents: (path, entry); unreadable ones are removed."""
        found = []
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return found
        for name in names:
            path = os.path.join(self.dir, name)
            if name.startswith("."):
                if name.endswith(".tmp"):
                    _unlink(path)  # a write cut by the agent's death: the dump had not started
                continue
            if not name.endswith(_ENTRY_SUFFIX):
                continue
            try:
                with open(path) as f:
                    entry = json.load(f)
                if not isinstance(entry, dict):
                    raise ValueError("not an object")
            except (OSError, ValueError) as exc:
                log.error("unreadable in-flight journal entry removed", extra={"entry": path, "error": str(exc)})
                _unlink(path)
                continue
            if entry.get("instance") != self.instance:
                found.append((path, entry))
        return found


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


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


#: Another container's view of an entry's storage: (root path, directory inside it, "<ns>/<pod>/<container>").
Peer = tuple[str, str, str]


def _same_container_pids(container_id: str, proc: str, prefer: int | None) -> list[int]:
    """Live processes whose cgroup names ``container_id`` (the original PID first)."""
    return _container_pids({container_id}, proc, prefer).get(container_id, [])


def _container_pids(container_ids: set[str], proc: str, prefer: int | None = None) -> dict[str, list[int]]:
    """Live processes of these containers (by the container ID their cgroup names), one /proc scan."""
    pids: dict[str, list[int]] = {}
    try:
        names = [n for n in os.listdir(proc) if n.isdigit()]
    except OSError:
        return pids
    if prefer:
        names.sort(key=lambda n: n != str(prefer))
    for name in names:
        try:
            with open(f"{proc}/{name}/cgroup") as f:
                ident = parse_cgroup(f.read())
            if ident.container_id not in container_ids:
                continue
            with open(f"{proc}/{name}/stat") as f:
                state = f.read().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            pids.setdefault(ident.container_id, []).append(int(name))
    return pids


def peers_on_node(records: Callable[[], list[Any]], proc: str = "/proc",
                  ready: Callable[[], bool] | None = None) -> Callable[[dict[str, Any]], list[Peer]]:
    """``peers(entry)`` for :func:`recover`: live containers of this node's pods (the pod watch's
    ``PodIndex.records``) that mount the entry's storage; ``ready()`` waits for the watch's list."""

    def peers(entry: dict[str, Any]) -> list[Peer]:
        claim = entry.get("volume")
        if not isinstance(claim, dict) or not claim.get("source"):
            return []
        if ready is not None and not ready():
            log.warning("the pod watch has not listed the pods: no other pod on the claim can be found",
                        extra={"pod": entry.get("pod"), "namespace": entry.get("namespace")})
        wanted: list[tuple[str, str, str]] = []  # (container ID, directory, who)
        for record in records():
            view = record.view
            for cid, name in view.container_ids.items():
                if cid == entry.get("container_id"):
                    continue  # tried first, by recover_entry
                for directory in translate(claim, view.mounts.get(name, ())):
                    wanted.append((cid, directory, f"{view.namespace}/{view.name}/{name}"))
        if not wanted:
            return []
        live = _container_pids({cid for cid, _, _ in wanted}, proc)
        return [(f"{proc}/{pid}/root", directory, who) for cid, directory, who in wanted
                for pid in live.get(cid, [])]

    return peers


def _roots(entry: dict[str, Any], node_cores_dir: str, proc: str,
           peers: Callable[[dict[str, Any]], list[Peer]] | None = None) -> Iterator[Peer]:
    """Where the entry's directory may be reached from, in order: (root, directory, via)."""
    directory = entry.get("directory") or "/"
    if entry.get("destination") == "node":
        yield node_cores_dir, directory, ""
        return
    cid = entry.get("container_id")
    if cid:
        for pid in _same_container_pids(cid, proc, entry.get("global_pid")):
            yield f"{proc}/{pid}/root", directory, ""
    if peers is not None:
        yield from peers(entry)


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


def _metadata(entry: dict[str, Any], path: str, file: str, size: int, disk: int, digest: str, node: str) -> dict:
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
    for root_path, inside, via in _roots(entry, node_cores_dir, proc, peers):
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
    doc = _metadata(entry, path, final, st.st_size, st.st_blocks * 512, _digest(dirfd, final, digest), node)
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
        _unlink(path)
    return results


def _report(rec: Recovered, events: Any, metrics: RecoveryMetrics | None, pending: Any = None,
            pod_record: Callable[[str], Any] | None = None) -> None:
    e = dict(rec.entry, **_verified_names(rec.entry))
    state = identity_of(e)
    line = {"result": rec.result, "namespace": e.get("namespace"), "pod": e.get("pod"),
            "container": e.get("container"), "pod_uid": e.get("pod_uid"), "container_id": e.get("container_id"),
            "identity": state, "pid": e.get("pid"), "global_pid": e.get("global_pid"),
            "comm": e.get("comm"), "path": rec.path, "leftover": rec.leftover, "size": rec.size,
            "detail": rec.detail, "via": rec.via or None}
    if rec.result == "partial":
        log.warning("core of a dump cut by the agent's restart kept as partial", extra=line)
    elif rec.result == "removed_empty":
        log.info("empty leftover of a dump cut by the agent's restart removed", extra=line)
    else:
        log.error("core lost: the agent was restarted mid-dump and its leftover cannot be recovered", extra=line)
    if metrics is not None:
        metrics.recovered.labels(rec.result).inc()
    if rec.result == "removed_empty":
        return
    summary = {k: e.get(k) for k in ("namespace", "pod", "pod_uid", "container", "container_id", "pid",
                                     "global_pid", "signal", "comm", "image", "node", "destination")}
    summary["identity"] = state
    summary["signal_name"] = meta.signal_name(int(e.get("signal") or 0))
    if rec.result == "partial":
        summary.update(outcome="partial", path=rec.path, size=rec.size, truncated_reason=REASON, reason=REASON)
    else:
        summary.update(outcome="failed", path=None, size=0,
                       reason=f"{REASON}: dump cut by the agent's restart; leftover {rec.leftover} ({rec.detail})")
    if state == UNVERIFIED and pending is not None:  # named (and announced) once the watch knows the pod
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
        return
    if events is None or state != VERIFIED:
        return
    try:
        events.submit(summary)
    except Exception:  # noqa: BLE001
        log.exception("could not queue the Event of a recovered dump")


def entry_for(request: Any, who: Any, target: Any, names: tuple[str, str], *, node: str, exe: str,
              registered: bool, identification: str) -> dict[str, Any]:
    """The journal entry of one dump (plain JSON types). The names are kept only when the pod
    watch verified them (``identity``: who.state)."""
    verified = who.state == VERIFIED
    return {
        "destination": target.destination, "directory": target.directory, "name": target.name,
        "tmp_name": names[0], "meta_tmp_name": names[1], "compression": target.compression,
        "uid_owner": target.uid, "gid_owner": target.gid, "pattern": target.pattern, "node": node,
        "identity": who.state, "namespace": who.namespace if verified else None,
        "pod": who.pod if verified else None, "pod_uid": who.pod_uid,
        "container": who.container if verified else None, "container_id": who.container_id,
        "image": who.image if verified else None, "labels": dict(who.labels or {}) if verified else {},
        "owner": who.owner if verified else None, "runtime": who.runtime, "registered": registered,
        "identification": identification,
        "pid": request.pid, "global_pid": request.global_pid, "tid": request.tid, "global_tid": request.global_tid,
        "uid": request.uid, "gid": request.gid, "signal": request.signal, "comm": request.comm,
        "hostname": request.hostname, "time": request.time, "rlimit_core": request.rlimit_core,
        "dump_mode": request.dump_mode, "spool_reason": request.spool_reason, "exe": exe,
        # the storage the directory lies on (podvolumes.py): another pod on it can reach the leftover
        "volume": claim_of(getattr(who, "mounts", ()) or (), target.directory) if target.destination == "pod"
        else None,
    }
