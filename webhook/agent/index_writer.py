"""Writing the crash index: :class:`IndexWriter` writes the CoreDumps (webhook/agent/index.py)
from its own thread:

- ``submit()`` never blocks: a bounded queue, the overflow dropped and counted;
- writes are rate limited per node (a token bucket, ``writes_per_second``) and batched: the
  count updates waiting for one record become one write;
- a signature's quota, the retention rule of the files (webhook/agent/index_state.py): the first
  N crashes of one signature in one workload (per namespace, per node) keep their own CoreDump,
  the latest M have one each, and past N + M the oldest of the latest M is rolled forward to the
  newest core, its ``status.count`` grown by one instead of adding objects; the quota survives a
  restart (a small state file in the agent's host directory);
- transient failures are retried with backoff (a bounded number of times, never blocking the
  queue for long); an already existing name (a retried create) is success; a record deleted by a
  user is created again.

The agent may ``create``, ``update`` and ``delete`` CoreDumps and nothing else: it never reads
them back, it keeps what it wrote (name, body, resourceVersion) in memory. It deletes only a record
it wrote whose core retention deleted (the core and its record go together); where the delete is
refused (RBAC of an older install) the record says ``status.state: Pruned`` instead.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from webhook.agent.index import build_coredump, coredump_name, quota_key, verified_namespace
from webhook.agent.index_edge import ApiFailure, CustomObjectsEdge
from webhook.agent.index_state import QuotaState, Slot
from webhook.agent.metadata import iso_time

log = logging.getLogger(__name__)

#: The quota state's file in the agent's host directory (index_state.py).
STATE_FILE = "index-state.json"


@dataclass
class _Job:
    kind: str  # "slot" (create or roll a quota record), "state" or "delete"
    key: tuple
    body: dict | None = None
    attempts: int = 0
    not_before: float = 0.0
    slot: Slot | None = None


class IndexWriter:
    """Writes CoreDumps from one daemon thread; ``submit`` never blocks (see the module doc)."""

    def __init__(self, edge: Any, *, keep_first: int = 3, keep_latest: int = 5, state_path: str | None = None,
                 writes_per_second: float = 5.0,
                 maxsize: int = 1024, max_attempts: int = 5, backoff: float = 1.0,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
                 pod_lookup: Callable[[str], Any] | None = None, pod_gone: Callable[[str], bool] | None = None,
                 sweep_interval: float = 30.0) -> None:
        """``keep_first``/``keep_latest``: records per quota key (index_state.py: first N, latest M
        rolled forward, the rest counted); ``state_path``: the file that keeps them across
        restarts (None: memory only). ``pod_lookup(uid)``: the pod watch's view (volumes);
        ``pod_gone(uid)``: True once the watch (synced) knows the pod was deleted: its emptyDir
        cores are then marked Gone."""
        self.edge = edge
        self.pod_lookup = pod_lookup
        self.pod_gone = pod_gone
        self.sweep_interval = sweep_interval
        self._next_sweep = monotonic() + sweep_interval
        self.state = QuotaState(state_path, keep_first, keep_latest)
        self.save_interval = 1.0
        self._next_save = monotonic()
        self.rate = max(0.01, writes_per_second)
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.clock = clock
        self.monotonic = monotonic
        self.created = self.updated = self.deleted = self.failed = self.dropped = self.skipped = 0
        self.writes: list[tuple[str, str, str]] = []  # (verb, namespace, name): tests, debugging
        #: (namespace, name) -> the last body written, as the server answered it (bounded).
        self._written: dict[tuple[str, str], dict] = dict(self.state.emptydir)  # kept across restarts
        self._lock = threading.Lock()
        self._inbox: queue.Queue = queue.Queue(maxsize=maxsize)
        self._ready: list[_Job] = []
        self._tokens = 1.0
        self._last = monotonic()
        self._idle = threading.Event()
        self._idle.set()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="agent-index", daemon=True)
        self._thread.start()

    # --- from the crash path's sinks (never blocks) ---------------------------------------
    def submit(self, summary: dict) -> bool:
        view = None
        if self.pod_lookup is not None and summary.get("pod_uid"):
            try:
                view = self.pod_lookup(str(summary["pod_uid"]))
            except Exception:  # noqa: BLE001 - a cache, never fatal
                view = None
        body = build_coredump(summary, self.clock(), view)
        if body is None:
            self.skipped += 1
            return False
        return self._put(("crash", body), summary)

    def mark_pruned(self, doc: dict) -> bool:
        """A core was deleted by retention: its CoreDump goes with it, when this agent wrote it
        (never anyone else's); where the delete is refused (an older install's RBAC) it says
        ``Pruned`` instead."""
        if verified_namespace(doc) is None:
            return False
        return self._put(("pruned", (str(doc["namespace"]), coredump_name(doc))), doc)

    def _put(self, item: tuple, summary: dict) -> bool:
        try:
            self._idle.clear()
            self._inbox.put_nowait(item)
            return True
        except queue.Full:
            self.dropped += 1
            log.warning("index queue full: a CoreDump write dropped", extra={"pod": summary.get("pod")})
            return False

    # --- the thread ------------------------------------------------------------------------
    def _plan(self, item: tuple) -> None:
        """A new crash: a create while the key's first N and latest M are not all there, else
        the oldest latest record rolled forward to it (index_state.py). A pruned core: its record
        is deleted, when this agent wrote it (it never reads records)."""
        what, body = item
        if what == "pruned":
            namespace, core = body
            found = self.state.find(namespace, core)
            if found is None:
                return
            key, slot = found
            self._ready = [j for j in self._ready if j.slot is not slot]  # nothing more to write to it
            self.state.forget(key, slot)
            self._ready.append(_Job("delete", (namespace, slot.name), self._written.get((namespace, slot.name))))
            return
        key = quota_key(body)
        with self._lock:
            action, slot = self.state.place(key, body["metadata"]["name"], body)
            if action != "fold":  # a folded crash rides on the roll already queued
                self._ready.append(_Job("slot", key, slot=slot))

    def _take_token(self) -> float:
        """0 when a write may go now, else the seconds to wait (the per-node rate limit)."""
        now = self.monotonic()
        self._tokens = min(max(1.0, self.rate), self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate

    def _run(self) -> None:
        while not self._stop:
            self._receive()
            now = self.monotonic()
            self._housekeep(now)
            self._write_due(now)

    def _receive(self) -> None:
        """Plan what arrived: wait briefly for one body, then drain what is there (several count
        updates become one write)."""
        try:
            timeout = 0.05 if self._ready else 0.5
            body = self._inbox.get(timeout=timeout)
            self._plan(body)
            while True:
                self._plan(self._inbox.get_nowait())
        except queue.Empty:
            pass

    def _housekeep(self, now: float) -> None:
        """The periodic sweep, and the state saved when it changed."""
        if now >= self._next_sweep:
            self._next_sweep = now + self.sweep_interval
            self._sweep()
        if self.state.dirty and (now >= self._next_save or not self._ready):
            self._next_save = now + self.save_interval  # at most once a second in a storm
            self.state.save()

    def _write_due(self, now: float) -> None:
        """One due job written when the rate allows (idle is signalled when nothing is left)."""
        due = [j for j in self._ready if j.not_before <= now]
        if not due:
            if not self._ready and self._inbox.empty() and not self.state.dirty:
                self._idle.set()
            return
        wait = self._take_token()
        if wait > 0:
            time.sleep(min(wait, 0.5))
            return
        job = due[0]
        self._ready.remove(job)
        self._write_or_retry(job)

    def _write_or_retry(self, job: _Job) -> None:
        """Write one job; an API failure is retried (or given up), anything else counted."""
        try:
            self._write(job)
        except ApiFailure as exc:
            self._retry(job, exc)
        except Exception as exc:  # noqa: BLE001 - the thread must go on
            self.failed += 1
            log.exception("CoreDump write failed", extra={"error": str(exc)})

    def _retry(self, job: _Job, exc: ApiFailure) -> None:
        job.attempts += 1
        transient = exc.status in (0, 429) or exc.status >= 500
        if transient and job.attempts < self.max_attempts:
            job.not_before = self.monotonic() + self.backoff * 2 ** (job.attempts - 1)
            self._ready.append(job)
            return
        self.failed += 1
        log.warning("CoreDump not written", extra={"error": str(exc), "attempts": job.attempts})
        self._given_up(job)

    def _given_up(self, job: _Job) -> None:
        """A quota record's write failed for good: a record never created frees its place (its
        count goes on with the next one); a roll leaves the record as it was."""
        slot = job.slot
        if slot is None:
            return
        with self._lock:
            if not slot.created:
                self.state.forget(job.key, slot)
            slot.pending, slot.body = "", None

    def _sweep(self) -> None:
        """emptyDir cores whose pod was deleted cannot be reached any more: their records say Gone."""
        if self.pod_gone is None:
            return
        for key, body in list(self._written.items()):
            spec, status = body.get("spec") or {}, body.get("status") or {}
            if (spec.get("location") or {}).get("volumeType") != "emptyDir" or status.get("state") != "Present":
                continue
            try:
                gone = self.pod_gone(str(spec.get("podUID") or ""))
            except Exception:  # noqa: BLE001
                gone = False
            if gone:
                marked = _with_state(body, "Gone", self.clock())
                self._written[key] = marked  # not twice, even before the answer
                self._ready.append(_Job("state", key, marked))

    def _remember(self, body: dict | None) -> None:
        if body is None:
            return
        meta = body["metadata"]
        self._written[(meta.get("namespace", ""), meta.get("name", ""))] = body
        while len(self._written) > 4096:
            self._written.pop(next(iter(self._written)))
        with self._lock:
            self.state.watch_emptydir(body)

    def _delete(self, job: _Job) -> None:
        """The record of a pruned core: deleted; refused (403: RBAC from before the agent had
        ``delete``) -> marked Pruned when its body is known; already gone (404) -> nothing."""
        namespace, name = job.key
        try:
            self.edge.delete(namespace, name)
        except ApiFailure as exc:
            if exc.status == 403:
                if job.body is not None:
                    self._ready.append(_Job("state", job.key, _with_state(job.body, "Pruned", self.clock())))
            elif exc.status != 404:
                raise
            return
        self.writes.append(("delete", namespace, name))
        self.deleted += 1
        self._written.pop((namespace, name), None)
        with self._lock:
            self.state.drop_emptydir(namespace, name)

    def _answered(self, verb: str, meta: dict, answer: Any) -> dict | None:
        self.writes.append((verb, meta["namespace"], meta["name"]))
        if verb == "create":
            self.created += 1
        else:
            self.updated += 1
        if not (isinstance(answer, dict) and isinstance(answer.get("metadata"), dict)):
            return None
        self._remember(answer)
        with self._lock:
            self.state.answered(meta["namespace"], meta["name"], str(answer["metadata"].get("resourceVersion") or ""))
        return answer

    def _write(self, job: _Job) -> None:
        if job.kind == "delete":
            self._delete(job)
            return
        if job.kind == "slot":
            self._write_slot(job)
            return
        assert job.body is not None  # "state": Gone or Pruned on a record this agent wrote
        meta = job.body["metadata"]
        try:
            answer = self.edge.replace(meta["namespace"], meta["name"], job.body)
        except ApiFailure as exc:
            if exc.status in (404, 409):  # deleted or changed meanwhile: nothing to say
                with self._lock:
                    self.state.drop_emptydir(meta["namespace"], meta["name"])
                return
            raise
        self._answered("update", meta, answer)

    def _write_slot(self, job: _Job) -> None:
        """Create a quota record, or roll one forward to the newest core: the whole object,
        its count absolute (a retried write never counts twice)."""
        slot = job.slot
        assert slot is not None
        with self._lock:
            if slot.pending == "" or slot.body is None:
                return  # forgotten meanwhile (its core pruned)
            body = _slot_body(slot)
            verb = slot.pending
        if verb == "roll" and not slot.rv:
            verb = "fresh"  # created (409) but its version never seen: a new record for this core
        meta = body["metadata"]
        if verb == "roll":
            try:
                answer = self.edge.replace(meta["namespace"], meta["name"], body)
            except ApiFailure as exc:
                if exc.status not in (404, 409):
                    raise
                verb = "fresh"  # deleted by a user (404) or changed by someone (409): a successor
            else:
                with self._lock:
                    slot.pending, slot.body = "", None
                self._answered("update", meta, answer)
                return
        if verb == "fresh":
            with self._lock:  # under the core's own name, the count carried over
                slot.name, slot.rv, slot.created, slot.pending = slot.core, "", False, "create"
                self.state.dirty = True
                body = _slot_body(slot)
            meta = body["metadata"]
        try:
            answer = self.edge.create(meta["namespace"], body)
        except ApiFailure as exc:
            if exc.status != 409:  # 409: a retried create that had gone through
                raise
            answer = None
        with self._lock:
            slot.created, slot.pending, slot.body = True, "", None
            self.state.dirty = True
        self._answered("create", meta, answer)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything submitted was written or given up (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._idle.wait(0.05) and self._inbox.empty() and not self._ready:
                return True
        return False

    def close(self, timeout: float = 5.0) -> None:
        self.flush(timeout)
        self._stop = True
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.state.save()


def _with_state(body: dict, state: str, now: float) -> dict:
    return {**body, "status": {**(body.get("status") or {}), "state": state, "lastSeen": iso_time(now)}}


def _slot_body(slot: Slot) -> dict:
    """The object a quota record is written as: the newest core it describes, under the
    record's name and version, with the crashes it counts."""
    assert slot.body is not None
    meta = {k: v for k, v in slot.body["metadata"].items() if k in ("namespace", "labels", "annotations")}
    meta["name"] = slot.name
    if slot.rv:
        meta["resourceVersion"] = slot.rv
    status = {**(slot.body.get("status") or {}), "count": slot.count}  # lastSeen: when that crash came
    return {**slot.body, "metadata": meta, "status": status}


def index_quota(settings: Any) -> tuple[int, int]:
    """(first N, latest M) CoreDumps per quota key: the retention rule of the files when it is on,
    so records and cores go together; with retention off (0 and 0: every file kept),
    ``index_keep_per_signature`` records, the last of them rolled forward to the newest crash."""
    first, latest = max(0, settings.retention_keep_first), max(0, settings.retention_keep_latest)
    if first + latest > 0:
        return first, max(1, latest)
    return max(0, settings.index_keep_per_signature - 1), 1


def make_index_writer(settings: Any, pod_lookup: Callable[[str], Any] | None = None,
                      pod_gone: Callable[[str], bool] | None = None) -> IndexWriter | None:
    """In-cluster config, else the local kubeconfig; None when disabled or neither works."""
    if not settings.index:
        return None
    from webhook.kubeclient import api_client_or_none

    api = api_client_or_none("crash index")
    if api is None:
        return None
    first, latest = index_quota(settings)
    return IndexWriter(CustomObjectsEdge(api), keep_first=first, keep_latest=latest,
                       state_path=os.path.join(settings.host_dir, STATE_FILE),
                       writes_per_second=settings.index_writes_per_second, maxsize=settings.index_queue_size,
                       pod_lookup=pod_lookup, pod_gone=pod_gone)
