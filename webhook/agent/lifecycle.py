"""Restart or removal: what a stopping agent does with the node's kernel settings.

A DaemonSet pod stops for many reasons: a rollout (``helm upgrade``), a node drain, an
eviction, a crash of its own. In all of those another agent takes the node over moments later,
and restoring the original ``core_pattern`` in between would hand the node's crashes to the old
pattern for that gap. So under the chart (``restore_on_stop="removed"``) the agent restores the
node only when the product is really being removed, and it tells that from the API server, the
one party that knows: its own DaemonSet is gone (``helm uninstall``, ``kubectl delete -f``, an
upgrade with ``agent.enabled=false``) or carries a ``deletionTimestamp`` (foreground deletion).
A DaemonSet that still exists means a restart: the static helper stays the kernel's target and
spools every core until the next agent delivers it.

An agent run by hand (the quick start, the tests) keeps ``restore_on_stop="always"``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from webhook.agent.settings import AgentSettings

log = logging.getLogger(__name__)

ALWAYS = "always"
REMOVED = "removed"
NEVER = "never"
MODES = (ALWAYS, REMOVED, NEVER)

#: What the API says about the agent's DaemonSet.
PRESENT = "present"
DELETING = "deleting"
GONE = "gone"

#: Tries (and the pause between them) before an unreachable API is taken as "keep": at most
#: about 10 s, inside the margin the chart's grace period keeps beyond the stop timeout.
API_ATTEMPTS = 3
API_PAUSE_SECONDS = 0.5
API_TIMEOUT_SECONDS = 3.0


def parse_daemonset(value: str) -> tuple[str, str]:
    """``NAMESPACE/NAME`` -> (namespace, name); a clear error otherwise."""
    namespace, sep, name = value.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise ValueError(f"daemonset must be NAMESPACE/NAME, got {value!r}")
    return namespace, name


def validate(settings: AgentSettings) -> None:
    """Refuse a mode the agent cannot carry out (at start, not at stop)."""
    if settings.restore_on_stop not in MODES:
        raise ValueError(f"restore_on_stop must be one of {', '.join(MODES)}, got {settings.restore_on_stop!r}")
    if settings.restore_on_stop == REMOVED:
        parse_daemonset(settings.daemonset)


def daemonset_state(api: Any, namespace: str, name: str) -> str:
    """PRESENT, DELETING or GONE; raises on any other API answer (unknown: the caller keeps)."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    try:
        ds = client.AppsV1Api(api).read_namespaced_daemon_set(name, namespace, _request_timeout=API_TIMEOUT_SECONDS)
    except ApiException as exc:
        if exc.status == 404:
            return GONE
        raise
    return DELETING if ds.metadata is not None and ds.metadata.deletion_timestamp else PRESENT


def should_restore(settings: AgentSettings, *, api_factory: Callable[[], Any] | None = None,
                   pause: float = API_PAUSE_SECONDS) -> bool:
    """Decide at stop whether to restore the node's kernel settings (logged either way)."""
    mode = settings.restore_on_stop
    if mode == ALWAYS:
        return True
    if mode == NEVER:
        log.info("kernel settings kept on stop (restore_on_stop=never); `coredump agent uninstall` restores them")
        return False
    namespace, name = parse_daemonset(settings.daemonset)
    error = ""
    api = None
    for attempt in range(API_ATTEMPTS):
        try:
            if api is None:
                if api_factory is not None:
                    api = api_factory()
                else:
                    from webhook.kubeclient import api_client

                    api = api_client()
            state = daemonset_state(api, namespace, name)
        except Exception as exc:  # noqa: BLE001 - any failure means "cannot tell"
            error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if attempt + 1 < API_ATTEMPTS:
                time.sleep(pause)
            continue
        if state == PRESENT:
            log.info("restart: the agent's DaemonSet exists, so the helper stays the kernel's target "
                     "and spools until the next agent", extra={"daemonset": settings.daemonset})
            return False
        log.info("removal: the agent's DaemonSet is %s, restoring the node's kernel settings", state,
                 extra={"daemonset": settings.daemonset, "state": state})
        return True
    log.error("cannot tell a restart from a removal (the API did not answer); kernel settings kept, the "
              "helper spools; after a removal run `coredump agent uninstall` on the node",
              extra={"daemonset": settings.daemonset, "error": error})
    return False
