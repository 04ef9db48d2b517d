"""``coredump agent run`` and ``coredump agent uninstall``: the DaemonSet's two commands.

Every :class:`AgentSettings` field is an option (``--max-core-bytes``) with an environment
variable (``COREDUMP_AGENT_MAX_CORE_BYTES``), both declared on the field with its help.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

import click

from webhook import logs
from webhook.agent.settings import AgentSettings
from webhook.cli_options import settings_from, settings_options

log = logging.getLogger(__name__)

#: How often the node fallback location is trimmed (retention by age and total size).
RETENTION_INTERVAL_SECONDS = 600.0
#: How long recovery waits for the pod watch's first list before looking for other pods on a claim.
RECOVERY_WATCH_WAIT_SECONDS = 30.0
#: The settings ``coredump agent uninstall`` reads (the rest keep their defaults).
UNINSTALL_SETTINGS = ("host_dir", "sysctl_root", "log_level")


# --- structured logs ---------------------------------------------------------------------------
def configure_logging(level: str) -> None:
    logs.configure(level, root=True)


# --- the commands -----------------------------------------------------------------------------
@click.group()
def agent() -> None:
    """The node agent (runs as a DaemonSet, one per node)."""


def make_pod_watch(settings: AgentSettings) -> Any:
    """The pod watch (not started), or None when off, without a node name or without an API."""
    if not settings.watch_pods:
        return None
    if not settings.node_name:
        log.info("pod watch off: no --node-name (set it from the downward API spec.nodeName)")
        return None
    from webhook.agent import podwatch
    from webhook.kubeclient import api_client_or_none

    api = api_client_or_none("pod watch")
    if api is None:
        return None
    return podwatch.PodWatcher(api, settings.node_name)


def _agent_services(settings: AgentSettings, previous_pattern: str) -> tuple[Callable[[Any, int], Any], Any]:
    """The crash handler wired to the pod watch (metadata) and the gcore requests it carries."""
    from webhook.agent.crash import CrashProcessor
    from webhook.agent.pending import PendingIdentities

    watch = make_pod_watch(settings)
    index = watch.index if watch is not None else None
    # Crashes of pods the watch does not know (yet): names filled in, Events sent, once it does.
    pending = PendingIdentities(settings.host_dir, settings.node_cores_dir) if watch is not None else None
    processor = CrashProcessor(settings, previous_pattern=previous_pattern or None,
                               pod_lookup=index.lookup if index is not None else None, pending=pending,
                               pod_gone=(lambda uid: index.synced.is_set() and index.lookup(uid) is None)
                               if index is not None else None)
    consumers = []
    if pending is not None:
        pending.publish = processor.publish
        consumers.append(pending.on_pod)
    if watch is not None and settings.gcore_requests:
        from webhook.agent.snapshots import GcoreService

        service = GcoreService(processor, host_dir=settings.host_dir, node_name=settings.node_name,
                               events=processor.events, max_age=settings.gcore_request_max_age_seconds,
                               timeout=settings.gcore_timeout_seconds)
        consumers.append(service.on_pod)
    if watch is not None:
        watch.on_pod = lambda record: [consume(record) for consume in consumers]
    return processor.handle, watch


def remembering_requests(handled: Any, factory: Callable[[list[str], bool], Any] | None = None
                         ) -> Callable[[list[str], bool], Any]:
    """The server's request factory, noting each piped crash's global PID as soon as the helper
    has handed it over (before it waits for a slot): the kernel log reader must not take a dump
    that reached the agent for the one the kernel dropped."""
    from webhook.agent.server import crash_request

    make = factory or crash_request

    def build(argv: list[str], spooled: bool) -> Any:
        request = make(argv, spooled)
        pid = getattr(request, "global_pid", 0)
        if pid and not spooled:
            handled.add(pid)
        return request

    return build


def start_kernel_log(settings: AgentSettings, registry: Any, handled: Any, watch: Any, events: Any) -> Any:
    """The kernel log reader (kernellog.py), started; None when off or /dev/kmsg is unreadable."""
    if not settings.kernel_log:
        return None
    from webhook.agent.kernellog import KernelLogWatcher

    try:
        return KernelLogWatcher(registry, node=settings.node_name, events=events, handled=handled,
                                pod_lookup=watch.index.lookup if watch is not None else None).start()
    except OSError as exc:
        log.warning("kernel log unreadable: cores the kernel drops will not be reported",
                    extra={"error": str(exc)})
        return None


def recover_inflight(settings: AgentSettings, registry: Any, events: Any, pending: Any = None,
                     watch: Any = None) -> None:
    """Dumps a killed predecessor left in flight (inflight.py): partial, removed or reported
    (those of pods the watch did not know at the crash through ``pending``, as a live crash's).
    With the pod watch, a leftover whose container is gone is reached through another container
    of this node on the same storage (same claim, NFS export, hostPath or pod volume)."""
    from webhook.agent import inflight
    from webhook.agent.journal import Journal
    from webhook.agent.reach import peers_on_node

    peers = None
    if watch is not None:
        index = watch.index
        peers = peers_on_node(index.records, ready=lambda: index.synced.wait(RECOVERY_WATCH_WAIT_SECONDS))
    try:
        inflight.recover(Journal(settings.host_dir), node_cores_dir=settings.node_cores_dir,
                         node=settings.node_name, events=events, registry=registry, peers=peers,
                         pending=pending, pod_record=watch.index.record if watch is not None else None,
                         digest=settings.digest)
    except Exception:  # noqa: BLE001 - recovery never stops the agent
        log.exception("in-flight recovery failed")


def retention_loop(settings: AgentSettings, stop: threading.Event, interval: float = RETENTION_INTERVAL_SECONDS,
                   on_removed: Callable[[dict], Any] | None = None) -> None:
    """Trim the node fallback location and the pod-volume directories cores were written to
    (pod_retention.py) now and every ``interval`` seconds until ``stop``; ``on_removed``: the
    crash index (its CoreDump goes with the core)."""
    from webhook.agent.limits import apply_retention
    from webhook.agent.pod_retention import POD_DIRS_FILE, PodDirs, prune_pod_dirs

    while not stop.is_set():
        try:
            result = apply_retention(
                settings.node_cores_dir,
                max_age_seconds=settings.retention_max_age_seconds,
                max_total_bytes=settings.retention_max_total_bytes,
                on_removed=on_removed,
            )
            if result.removed:
                log.info(
                    "retention removed node cores",
                    extra={"removed": list(result.removed), "freed": result.freed_bytes, "kept_bytes": result.kept_bytes},
                )
        except Exception:
            log.exception("retention failed")
        try:
            prune_pod_dirs(PodDirs(os.path.join(settings.host_dir, POD_DIRS_FILE)),
                           keep=(settings.retention_keep_first, settings.retention_keep_latest),
                           max_age=settings.pod_retention_max_age_seconds, on_pruned=on_removed)
        except Exception:
            log.exception("pod volume retention failed")
        stop.wait(interval)


def run_agent(
    settings: AgentSettings,
    stop: threading.Event,
    *,
    handler_factory: Callable[[AgentSettings, str], Callable[[Any, int], Any]] | None = None,
    registry: Any = None,
) -> None:
    """Install, serve until ``stop`` is set, then restore the kernel settings or keep them.

    At stop the kernel settings are restored first when ``settings.restore_on_stop`` says so
    (webhook/agent/lifecycle.py: always by hand, only on removal under the chart); a restart
    keeps the helper as the kernel's target. Then the dumps in flight get
    ``stop_timeout_seconds`` (cores not started yet go to the spool at once).

    Without ``handler_factory``: the crash processor, with the pod watch when the API is
    reachable (metadata, gcore requests); failing to reach the API only logs.
    """
    from webhook import digest
    from webhook.agent import install, lifecycle
    from webhook.agent.drop_candidates import RecentPids
    from webhook.agent.endpoints import HealthServer
    from webhook.agent.metrics import REGISTRY
    from webhook.agent.server import AgentServer
    from webhook.agent.sysctl import CORE_PATTERN

    registry = registry if registry is not None else REGISTRY
    lifecycle.validate(settings)
    digest.check(settings.digest)
    try:
        backup = install.prepare(settings)
    except install.HostDirNotExecutable as exc:
        if not settings.metrics_bind:
            raise  # nothing would report it: fail loudly
        _serve_not_ready(settings, stop, str(exc), registry)
        return
    previous = backup.values.get(CORE_PATTERN, "")
    watch = None
    if handler_factory is None:
        handler, watch = _agent_services(settings, previous)
    else:
        handler = handler_factory(settings, previous)
    # the crash processor's Event poster, when the handler is one (the kernel log reuses it)
    events = getattr(getattr(handler, "__self__", None), "events", None)
    pending = getattr(getattr(handler, "__self__", None), "pending", None)
    handled = RecentPids()
    server = AgentServer(settings, handler, registry=registry, request_factory=remembering_requests(handled))
    # Binding fails when another agent serves this host dir: then nothing here is ours to
    # restore, and the exception leaves before the finally below.
    server.start()
    http: HealthServer | None = None
    kmsg = None
    try:
        if settings.metrics_bind:
            http = HealthServer(settings.metrics_bind, lambda: server.healthy, registry)
            http.start()
        index = getattr(getattr(handler, "__self__", None), "index", None)  # the crash index, if any
        threading.Thread(target=retention_loop, args=(settings, stop),
                         kwargs={"on_removed": index.mark_pruned if index is not None else None},
                         name="agent-retention", daemon=True).start()
        if watch is not None:
            watch.start()
        kmsg = start_kernel_log(settings, registry, handled, watch, events)
        # after the bind: no other agent serves this host dir, so every other entry is a leftover
        threading.Thread(target=recover_inflight, args=(settings, registry, events, pending, watch),
                         name="agent-recovery", daemon=True).start()
        applied = install.activate(settings)
        log.info(
            "agent serving",
            extra={
                "node": settings.node_name,
                "socket": settings.socket_path,
                "applied": applied,
                "originals": backup.values,
                "metrics": settings.metrics_bind,
            },
        )
        stop.wait()
        log.info("agent stopping")
    finally:
        try:
            if lifecycle.should_restore(settings):
                restored = install.uninstall(settings)
                log.info("kernel settings restored on stop", extra={"restored": restored})
        except Exception:
            log.exception("could not restore the kernel settings; the backup is kept for uninstall")
        server.stop(wait_seconds=settings.stop_timeout_seconds)
        if watch is not None:
            watch.stop()
        if kmsg is not None:
            kmsg.stop()
        if http is not None:
            http.stop()


def _serve_not_ready(settings: AgentSettings, stop: threading.Event, reason: str, registry: Any) -> None:
    """Installed nothing and changed nothing: stay up, say why on /healthz (503, so the
    DaemonSet's readiness shows it and a rollout stops here) and in the log, until stopped.
    /livez stays 200: restarting cannot fix a mount."""
    from webhook.agent.endpoints import HealthServer

    log.error("helper not installed: host directory not executable",
              extra={"host_dir": settings.host_dir, "reason": reason, "node": settings.node_name})
    http = HealthServer(settings.metrics_bind, lambda: False, registry, live=lambda: True,
                        reason=lambda: "not ready: " + reason)
    http.start()
    try:
        stop.wait()
        log.info("agent stopping (nothing was installed, nothing to restore)")
    finally:
        http.stop()


@agent.command("run")
@settings_options(AgentSettings, show_envvar=False)
def run(**values: Any) -> None:
    """Install the helper, point the kernel at it, serve until SIGTERM, restore (see --restore-on-stop)."""
    settings = settings_from(AgentSettings, values)
    configure_logging(settings.log_level)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal received", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        run_agent(settings, stop)
    except Exception as exc:
        log.exception("agent failed")
        raise click.ClickException(str(exc)) from exc


@agent.command("uninstall")
@settings_options(AgentSettings, only=UNINSTALL_SETTINGS, show_envvar=False)
def uninstall_cmd(**values: Any) -> None:
    """Restore the kernel settings from the backup (by hand, after a removal). Idempotent."""
    from webhook.agent import install

    settings = settings_from(AgentSettings, values)
    configure_logging(settings.log_level)
    try:
        restored = install.uninstall(settings)
    except Exception as exc:
        log.exception("uninstall failed")
        raise click.ClickException(str(exc)) from exc
    if restored is None:
        log.info("nothing to restore (no backup)", extra={"host_dir": settings.host_dir})
    click.echo(json.dumps({"restored": restored}, sort_keys=True))

