"""``coredump gcore`` on the node: a core of a running process, asked for through its own pod.

The user's CLI sets the annotation ``coredump-webhook.io/gcore-request`` (JSON ``{id, container,
pid, requestedAt}``) on their pod: the only permission needed is to patch that pod. The agent of
the pod's node sees it through its pod watch (:meth:`GcoreService.on_pod`, never blocking the
watch), maps the container and its namespace PID to a host PID (:func:`find_host_pid`: the
container ID in ``/proc/*/cgroup``, the PID in ``NSpid``), checks the process carries the
webhook's registration (environment cross-checked with the cgroup, as for a crash), runs
``gcore`` (the process is stopped only while it dumps), and hands the snapshot to the crash
path's writer: the same pattern expansion, safe writer and metadata, with ``signal`` 0 and
``gcore: true``. The answer is a ``CoreSnapshot`` Event on the pod naming the request id (taken,
with the path, or failed, with the reason): the agent needs no right to patch pods.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from webhook import constants
from webhook.agent.background import QueueWorker
from webhook.agent.crash_request import CrashRequest
from webhook.agent.podwatch import PodRecord
from webhook.agent.procinfo import container_process, identify, read_process
from webhook.agent.taken import TakenRequests
from webhook.diagnose.procstatus import parse_status

log = logging.getLogger(__name__)

#: Invalid annotations remembered (logged once each).
SEEN_MAX = 4096
#: The request ids taken so far, in the agent's host directory (survives restarts).
TAKEN_FILE = "gcore-taken"


class GcoreRefused(Exception):
    """The request cannot be served; the message goes into the pod's Event."""


@dataclass(frozen=True)
class GcoreRequest:
    """The annotation's content."""

    id: str
    container: str | None
    pid: int | None
    requested_at: float


def parse_request(raw: str) -> GcoreRequest:
    """Parse the annotation value; ValueError says what is wrong."""
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    rid = doc.get("id")
    if not isinstance(rid, str) or not rid or len(rid) > 64 or not all(c.isalnum() or c in "-_." for c in rid):
        raise ValueError("id must be 1-64 characters of [A-Za-z0-9._-]")
    container = doc.get("container") or None
    if container is not None and not isinstance(container, str):
        raise ValueError("container must be a string")
    pid = doc.get("pid")
    if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0):
        raise ValueError("pid must be a positive integer")
    at = doc.get("requestedAt")
    try:
        requested_at = _parse_time(at)
    except (TypeError, ValueError):
        raise ValueError(f"requestedAt must be an RFC 3339 time, got {at!r}") from None
    return GcoreRequest(rid, container, pid, requested_at)


def _parse_time(value: Any) -> float:
    import datetime as dt

    if not isinstance(value, str):
        raise TypeError(value)
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def find_host_pid(container_id: str, pod_uid: str, nspid: int | None = None, proc: str = "/proc") -> int:
    """The host PID of a container's process (:func:`procinfo.container_process`); raises
    :class:`GcoreRefused` with what was not found."""
    try:
        return container_process(container_id, pod_uid, nspid, proc)
    except LookupError as exc:
        raise GcoreRefused(str(exc)) from None


def snapshot_request(host_pid: int, record: PodRecord, req: GcoreRequest, now: float,
                     proc: str = "/proc") -> CrashRequest:
    """The crash path's request for a live process (what the kernel would have said), marked
    with the request id (``snapshot_id``: not rate limited, metadata says ``gcore``)."""
    with open(f"{proc}/{host_pid}/status") as f:
        status = parse_status(f.read())
    with open(f"{proc}/{host_pid}/comm") as f:
        comm = f.read().strip()
    nspid = status.nspid[-1] if status.nspid else host_pid
    return CrashRequest(global_pid=host_pid, pid=nspid, global_tid=host_pid, tid=nspid, signal=0, time=int(now),
                        rlimit_core=2**64 - 1, dump_mode=1, cpu=0, uid=status.uid or 0, gid=status.gid or 0,
                        hostname=record.hostname or record.view.name, comm=comm, snapshot_id=req.id)


def default_container(record: PodRecord) -> str | None:
    """The first prepared container (``coredump-webhook.io/targets``), else None."""
    try:
        targets = json.loads(record.annotations.get(constants.ANN_TARGETS, "[]"))
    except ValueError:
        targets = []
    return targets[0] if targets and isinstance(targets[0], str) else None


class GcoreService(QueueWorker):
    """Takes gcore requests seen by the pod watch; one snapshot at a time, in its own thread."""

    def __init__(self, processor: Any, *, host_dir: str, node_name: str, events: Any = None,
                 max_age: float = 600.0, timeout: float = 300.0, proc: str = "/proc",
                 clock: Callable[[], float] = time.time, snapshot: Callable[..., Any] | None = None) -> None:
        from webhook.diagnose import gcore

        self.processor = processor
        self.host_dir = host_dir
        self.node_name = node_name
        self.events = events
        self.max_age = max_age
        self.timeout = timeout
        self.proc = proc
        self.clock = clock
        self.snapshot = snapshot or gcore.snapshot
        self._seen: dict[str, None] = {}
        self.taken = TakenRequests(os.path.join(host_dir, TAKEN_FILE))
        self._lock = threading.Lock()
        self.results: list[dict] = []  # the summaries reported (tests, debugging)
        super().__init__("agent-gcore", maxsize=8)

    # --- from the pod watch (must not block) -------------------------------------------------
    def on_pod(self, record: PodRecord) -> None:
        raw = record.annotations.get(constants.ANN_GCORE_REQUEST)
        if not raw:
            return
        if record.node and self.node_name and record.node != self.node_name:
            return
        try:
            req = parse_request(raw)
        except ValueError as exc:
            key = f"invalid:{record.view.uid}:{raw}"
            if self._first_time(key):
                log.warning("invalid gcore request", extra={"pod": record.view.name, "error": str(exc)})
            return
        if not self.taken.claim(req.id):  # durable: a restarted agent does not take it again
            return
        age = self.clock() - req.requested_at
        if abs(age) > self.max_age:
            log.info("gcore request too old, ignored", extra={"pod": record.view.name, "id": req.id, "age": age})
            return
        try:
            self._queue.put_nowait((record, req))
        except queue.Full:
            self._report(record, req, None, failed="the agent is busy with other gcore requests")

    def _first_time(self, key: str) -> bool:
        with self._lock:
            if key in self._seen:
                return False
            self._seen[key] = None
            while len(self._seen) > SEEN_MAX:
                self._seen.pop(next(iter(self._seen)))
            return True

    # --- the work (QueueWorker's thread) -------------------------------------------------------
    def _handle(self, item: tuple[PodRecord, GcoreRequest]) -> None:
        self.take(*item)

    def _failed(self, item: tuple[PodRecord, GcoreRequest], exc: Exception) -> None:
        log.exception("gcore failed", extra={"id": item[1].id})

    def take(self, record: PodRecord, req: GcoreRequest) -> dict:
        """Serve one request (synchronously); returns the reported summary."""
        from webhook.diagnose.gcore import GcoreError, deliver

        container = req.container or default_container(record)
        try:
            if not container:
                raise GcoreRefused("no container named and the pod has no prepared target")
            # The running container's ID: the first listed for the name (status before lastState).
            cid = next((i for i, name in record.view.container_ids.items() if name == container), None)
            if cid is None:
                raise GcoreRefused(f"container {container} is not running in pod {record.view.name}")
            host_pid = find_host_pid(cid, record.view.uid, req.pid, self.proc)
            self._check_registered(host_pid, record, container)
            request = snapshot_request(host_pid, record, req, self.clock(), self.proc)
            workdir = os.path.join(self.host_dir, "staging")
            os.makedirs(workdir, mode=0o700, exist_ok=True)
            snap = self.snapshot(host_pid, workdir, timeout=self.timeout)
            box: dict[str, Any] = {}

            def write(stream: Any, _facts: dict) -> str:
                box["outcome"] = out = self.processor.handle(request, stream)
                return out.path or ""

            deliver(snap, write)
            out = box["outcome"]
            if out.outcome not in ("written", "partial"):
                raise GcoreRefused(f"{out.outcome}: {out.reason}")  # the processor reported it already
            log.info("gcore taken", extra={"id": req.id, "pod": record.view.name, "container": container,
                                           "pid": request.pid, "global_pid": host_pid, "path": out.path,
                                           "size": out.size, "seconds": round(snap.seconds, 3)})
            summary = {"gcore_request": req.id, "outcome": out.outcome, "path": out.path, "size": out.size}
            self.results.append(summary)
            return summary
        except (GcoreRefused, GcoreError, OSError) as exc:
            return self._report(record, req, container, failed=str(exc))

    def _check_registered(self, host_pid: int, record: PodRecord, container: str) -> None:
        """Only a process the webhook prepared (env + matching cgroup) may be snapshotted."""
        info = read_process(host_pid, self.proc)
        ident = identify(info.environ, info.cgroup)
        reg = ident.registration
        if reg is None or reg.pod_uid != record.view.uid:
            raise GcoreRefused(f"the process is not registered by the webhook ({ident.reason})")

    def _report(self, record: PodRecord, req: GcoreRequest, container: str | None, *, failed: str) -> dict:
        log.warning("gcore request failed", extra={"id": req.id, "pod": record.view.name, "reason": failed})
        summary = {"namespace": record.view.namespace, "pod": record.view.name, "pod_uid": record.view.uid,
                   "container": container, "node": self.node_name, "gcore": True, "gcore_request": req.id,
                   "outcome": "failed", "reason": failed, "pid": req.pid}
        self.results.append(summary)
        if self.events is not None:
            try:
                self.events.submit(summary)
            except Exception:  # noqa: BLE001
                log.exception("could not queue the gcore Event")
        return summary

    def flush(self, timeout: float = 60.0) -> bool:
        return super().flush(timeout)
