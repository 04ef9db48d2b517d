"""The crash path's decisions: from the kernel's core pipe and the helper's arguments to a core on disk.

``CrashProcessor.handle`` identifies the crashing process from ``/proc/<%P>`` (registration in
its environment, cross-checked with its cgroup) and decides where its core goes: a registered
pod's own volume, named by its pattern as the kernel would (``target``), else the node
location; processes without a registration are skipped, chained to the previous pipe helper
or written to the node location. ``capture`` writes the core within the node's limits
(``stream``, ``limits``), with ``<name>.json`` next to it (``metadata``). Logs, metrics, the pod
Event and the notification never delay the answer to the helper.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any, BinaryIO

from webhook.agent import chain as chain_mod
from webhook.agent import journal as journal_mod
from webhook.agent import metadata as meta
from webhook.agent import metrics as metrics_mod
from webhook.agent.capture import Capture
from webhook.agent.crash_request import CrashOutcome, CrashRequest, Handled, who_fields
from webhook.agent.identity import VERIFIED, Resolved, report_mismatches, resolve
from webhook.agent.limits import RateLimiter
from webhook.agent.pinned import PinnedWork, make_signatures
from webhook.agent.pod_retention import POD_DIRS_FILE, PodDirs
from webhook.agent.procinfo import CgroupIdentity, Identity, ProcessGone, ProcessInfo, identify, read_process
from webhook.agent.settings import AgentSettings
from webhook.agent.target import NoPodTarget, TargetPlanner

log = logging.getLogger(__name__)

#: Below this soft RLIMIT_CORE an unregistered process gets no core (systemd-coredump's rule).
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class CrashProcessor:
    """Handles crashes; safe to call from several threads at once."""

    def __init__(self, settings: AgentSettings, previous_pattern: str | None = None, *,
                 clock: Callable[[], float] = time.time, events: Any = None, notifier: Any = None,
                 metrics: metrics_mod.AgentMetrics | None = None,
                 pod_lookup: Callable[[str], meta.PodView | None] | None = None,
                 proc: str = "/proc", signatures: Any = None, journal: Any = None,
                 pending: Any = None, index: Any = None, pod_gone: Callable[[str], bool] | None = None) -> None:
        """``events``/``notifier``/``index``: objects with ``submit(dict)``; None builds them from
        the settings (``events``, ``notify_url``, ``index``: the CoreDump writer), False disables
        them. ``pod_lookup(pod_uid)`` is the pod watch's cache (namespace, names, image, labels,
        owner); it must not block. ``pod_gone(pod_uid)``: the watch knows the pod was deleted (the
        index marks its emptyDir cores Gone). ``journal``: the in-flight record (journal.Journal;
        None builds it in the host dir, False disables it). ``pending``
        (``webhook.agent.pending.PendingIdentities``) takes the summaries of crashes the watch did
        not know yet: their Event, notification and CoreDump wait for the verified names."""
        self.settings = settings
        self.previous_pattern = previous_pattern.strip() if previous_pattern else None
        self.clock = clock
        self.metrics = metrics or metrics_mod.get()
        self.pod_lookup = pod_lookup
        self.pending = pending
        self.proc = proc
        self.rate = RateLimiter(settings.rate_limit_count, settings.rate_limit_seconds, clock=clock)
        self.events, self.notifier, self.index = _sinks(settings, events, notifier, index, pod_lookup, pod_gone)
        self.targets = TargetPlanner(settings, proc)
        self.journal = journal_mod.Journal(settings.host_dir) if journal is None else (journal or None)
        # pod-volume directories written to: the retention loop prunes them (pod_retention.py)
        self.pod_dirs = PodDirs(os.path.join(settings.host_dir, POD_DIRS_FILE))
        # Crash signatures (webhook/agent/analysis.py): None builds the worker from the
        # settings, False disables it; a crash's job goes to it once _report has the summary.
        self.signatures = make_signatures(settings, signatures, lambda: [self],
                                          self.index.mark_pruned if self.index is not None else None)
        self.pinned = PinnedWork(settings, self.signatures, proc)
        self.capture = Capture(settings, self.journal, self.pinned)

    # --- the entry point ------------------------------------------------------------------------
    def handle(self, request: CrashRequest, core: int | BinaryIO) -> CrashOutcome:
        """Save one core (or decide not to); never raises."""
        start = time.monotonic()
        doc: dict[str, Any] | None = None
        job: Any = None
        try:
            outcome, doc, job = self._handle(request, core, start)
        except Exception as exc:  # noqa: BLE001 - the crash path must answer, whatever happened
            log.exception("crash handling failed", extra={"pid": request.global_pid})
            outcome = CrashOutcome("failed", f"internal_error: {exc}")
        outcome.duration = time.monotonic() - start
        outcome.pid = request.pid
        outcome.global_pid = request.global_pid
        outcome.signal = request.signal
        outcome.comm = request.comm
        outcome.node = self.settings.node_name
        try:
            self._report(outcome, doc, job)
        except Exception:  # noqa: BLE001
            log.exception("crash reporting failed")
        return outcome


    # --- decisions ------------------------------------------------------------------------------
    def _handle(self, request: CrashRequest, core: int | BinaryIO, start: float) -> Handled:
        ident, proc = self._identify(request)
        who = self._who(ident, request)
        if ident.registration is not None and proc is not None:
            return self._registered(request, core, proc, ident, who, start)
        return self._unregistered(request, core, proc, ident, who, start)

    def _identify(self, request: CrashRequest) -> tuple[Identity, ProcessInfo | None]:
        """The crashed process and what it says it is; for a spooled core, who it was from the
        helper's record, and a live process of its container."""
        if request.spooled:
            from webhook.agent.spooled import spooled_identity

            return spooled_identity(request.spool_entry, self.proc)
        try:
            proc = read_process(request.global_pid, self.proc)
            return identify(proc.environ, proc.cgroup), proc
        except ProcessGone:
            return Identity(None, CgroupIdentity(), "process_gone"), None

    def _registered(self, request: CrashRequest, core: int | BinaryIO, proc: ProcessInfo, ident: Identity,
                    who: Resolved, start: float) -> Handled:
        """A registered pod's core: into its own volume, else (nothing read yet) the node location."""
        key = who.rate_key("")  # the container ID from the cgroup: renaming changes nothing
        if not request.snapshot_id and not self.rate.allow(key):  # a gcore was asked for
            return self._rate_limited(who, key), None, None
        try:
            if who.unwritable:  # a read-only mount the webhook recorded: no attempt that must fail
                raise NoPodTarget("pod_volume_read_only", who.unwritable)
            return self.capture.write(request, core, proc, ident, who,
                                      self.targets.pod_target(request, proc, ident), start)
        except NoPodTarget as exc:  # nothing read yet: the node location gets it
            log.warning("pod destination unusable, using the node location",
                        extra={"pid": request.global_pid, "reason": exc.reason, "detail": exc.detail,
                               "namespace": who.namespace, "pod": who.pod, "container": who.container})
            return self.capture.write(request, core, proc, ident, who,
                                      self.targets.node_target(request, proc, who, True),
                                      start, fallback_reason=exc.reason, fallback_detail=exc.detail)

    def _unregistered(self, request: CrashRequest, core: int | BinaryIO, proc: ProcessInfo | None,
                      ident: Identity, who: Resolved, start: float) -> Handled:
        """No registration: skipped, chained to the previous pipe helper, or the node location."""
        mode = self._unregistered_mode(proc)
        if mode == "skip":
            return CrashOutcome("skipped", ident.reason, **who_fields(who)), None, None
        if mode == "chain":
            return self._chain(request, core, proc, ident, who, start), None, None
        if request.rlimit_core < PAGE_SIZE and proc is not None:
            return CrashOutcome("skipped", f"{ident.reason}; rlimit_core {request.rlimit_core} below a page",
                                **who_fields(who)), None, None
        key = who.rate_key(request.comm)
        if not self.rate.allow(key):
            return self._rate_limited(who, key), None, None
        target = self.targets.node_target(request, proc, who, False)
        return self.capture.write(request, core, proc, ident, who, target, start)

    def _unregistered_mode(self, proc: ProcessInfo | None) -> str:
        """``skip``, ``chain`` (only when the previous pattern is a pipe to chain to) or ``node``."""
        mode = self.settings.unregistered
        if mode == "auto":
            mode = "chain" if chain_mod.is_pipe(self.previous_pattern) else "node"
        if proc is None:
            mode = "node"  # spooled or vanished: only the node location makes sense
        if mode == "chain" and not chain_mod.is_pipe(self.previous_pattern):
            mode = "node"
        if mode not in ("skip", "chain", "node"):
            log.warning("unknown 'unregistered' setting, using node", extra={"setting": mode})
            mode = "node"
        return mode

    def _who(self, ident: Identity, request: CrashRequest) -> Resolved:
        """Names from the cgroup and the pod watch; the registration's names are only compared."""
        who = resolve(ident.cgroup, ident.registration, self.pod_lookup)
        if who.mismatches:
            report_mismatches(who, self.metrics, request.global_pid)
        if who.pod_uid and not who.verified:
            self.metrics.unverified.inc()
        return who


    def _rate_limited(self, who: Resolved, key: tuple[str, str]) -> CrashOutcome:
        self.metrics.rate_limited.labels(who.namespace or "").inc()  # verified, or ""
        dropped = self.rate.dropped(key)
        return CrashOutcome("rate_limited",
                            f"more than {self.settings.rate_limit_count} core(s) in "
                            f"{self.settings.rate_limit_seconds:g}s for this container",
                            dropped=dropped, **who_fields(who))

    def _chain(self, request: CrashRequest, core: int | BinaryIO, proc: ProcessInfo | None, ident: Identity,
               who: Resolved, start: float) -> CrashOutcome:
        assert self.previous_pattern
        fd = core if isinstance(core, int) else core.fileno()
        remaining = max(1.0, start + self.settings.dump_timeout_seconds - time.monotonic())
        try:
            result = chain_mod.run_previous(self.previous_pattern, request.crash_info(proc.exe if proc else ""), fd,
                                            timeout=remaining, global_pid=request.global_pid)
        except chain_mod.ChainError as exc:
            return CrashOutcome("failed", f"{ident.reason}; chain: {exc}", destination="chain",
                                **who_fields(who))
        if result.returncode is None:
            return CrashOutcome("failed", f"{ident.reason}; previous helper {result.argv[0]} timed out",
                                destination="chain", **who_fields(who))
        return CrashOutcome("chained", f"{ident.reason}; previous helper {result.argv[0]} exited "
                                       f"{result.returncode}", destination="chain", **who_fields(who))

    # --- visibility -----------------------------------------------------------------------------
    def _report(self, outcome: CrashOutcome, doc: dict | None, job: Any) -> None:
        """Metrics, the crash's log line, then the Event, notification and CoreDump (after the
        signature when there is a job for it)."""
        self._count(outcome, doc)
        self._log(outcome)
        summary = outcome.as_dict()
        summary.update(doc or {})
        summary["path"] = outcome.path
        try:
            self.pod_dirs.remember(summary)
        except Exception:  # noqa: BLE001 - retention's memory, never the crash's business
            log.exception("could not remember the core's directory")
        if job is not None and outcome.outcome in ("written", "partial", "failed"):
            job.summary = summary  # the Event waits for the signature (bounded): see analysis.py
            self.signatures.submit(job)
            return
        if job is not None:
            job.close()
        if outcome.outcome in ("written", "partial", "failed"):
            self.publish(summary)

    def _count(self, outcome: CrashOutcome, doc: dict | None) -> None:
        short_reason = outcome.reason.split(" ")[0].split(";")[0].rstrip(":")
        dest = outcome.destination or ""
        self.metrics.cores.labels(outcome.outcome, short_reason, dest).inc()
        self.metrics.duration.labels(outcome.outcome).observe(outcome.duration)
        if outcome.size:
            self.metrics.bytes.labels(dest).inc(outcome.size)
        if doc:
            self.metrics.stored_bytes.labels(dest).inc(doc.get("stored_size", 0))

    @staticmethod
    def _log(outcome: CrashOutcome) -> None:
        """The crash's one log line (logger ``webhook.agent.crash``, message ``crash``)."""
        line = {
            "outcome": outcome.outcome, "reason": outcome.reason, "namespace": outcome.namespace,
            "pod": outcome.pod, "container": outcome.container, "pid": outcome.pid,
            "global_pid": outcome.global_pid, "signal": outcome.signal, "comm": outcome.comm,
            "path": outcome.path, "size": outcome.size, "disk_size": outcome.disk_size,
            "duration": round(outcome.duration, 4), "destination": outcome.destination,
        }
        if outcome.outcome == "rate_limited":
            line["dropped"] = outcome.dropped
        level = logging.WARNING if outcome.outcome in ("failed", "partial") else logging.INFO
        log.log(level, "crash", extra=line)

    def submit(self, summary: dict) -> bool:
        """A sink for the signature worker: :meth:`publish`."""
        self.publish(summary)
        return True

    def publish(self, summary: dict) -> None:
        """The Event, the notification and the CoreDump, only under names the pod watch verified; a crash of
        a pod the watch did not know waits in ``pending`` until it does (or goes unannounced)."""
        sinks: tuple[Any, ...] = (self.events, self.notifier, self.index)
        if summary.get("pod_uid") and summary.get("identity") != VERIFIED:
            if self.pending is not None:  # the watch will know the pod: announce it then
                try:
                    self.pending.add(summary)
                except Exception:  # noqa: BLE001
                    log.exception("could not keep an unverified crash for later")
                return
            sinks = (self.notifier,)  # no pod watch at all: by pod UID only (an Event needs names)
        for sink in sinks:
            if sink is not None:
                try:
                    sink.submit(summary)
                except Exception:  # noqa: BLE001
                    log.exception("could not queue a crash notification")


def _sinks(settings: AgentSettings, events: Any, notifier: Any, index: Any,
           pod_lookup: Callable[[str], meta.PodView | None] | None,
           pod_gone: Callable[[str], bool] | None) -> tuple[Any, Any, Any]:
    """The Event poster, the notifier and the CoreDump writer: given, built from the settings
    (None), or off (False: None)."""
    if events is None:
        from webhook.agent.events import make_event_poster

        events = make_event_poster(settings.events)
    if notifier is None:
        from webhook.agent.notify import make_notifier

        notifier = make_notifier(settings.notify_url, settings.notify_format)
    if index is None:
        from webhook.agent.index_writer import make_index_writer

        index = make_index_writer(settings, pod_lookup, pod_gone)
    return events or None, notifier or None, index or None
