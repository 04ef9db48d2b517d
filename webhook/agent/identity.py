"""Who crashed, from what the crashing process cannot change (issue 8: trust the kernel and the
API server, never the crashing process).

The runtime puts every container in a cgroup named after its pod UID and container ID; the
process cannot leave it. The agent's pod watch (``podwatch.PodIndex``, filled from the API
server) maps that pod UID to a namespace and name, and the container ID to a container name.
Those are the only names the agent ever writes into metadata, node paths, Events, notifications
and logs. The registration in the process's environment (``COREDUMP_*``) is a *request*: it
says which pattern, lower limits and compression the pod asked for; its namespace, pod and
container names are compared with the watch's answer and, where they disagree, ignored (logged,
counted in ``coredump_agent_identity_mismatches_total``).

When the watch has no answer (API server down, pod not listed yet) the crash path still never
waits: the core is written and labelled by pod UID and container ID only, marked
``identity: unverified``; :mod:`webhook.agent.pending` fills the names in once the watch knows
the pod.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from webhook.agent.metadata import PodView
from webhook.agent.podvolumes import unwritable_for
from webhook.agent.procinfo import CgroupIdentity, Registration

log = logging.getLogger(__name__)

VERIFIED = "verified"
UNVERIFIED = "unverified"
HOST = "host"
#: Top directory of the node location for cores whose pod the agent has not verified (a
#: namespace name can never start with "_").
UNVERIFIED_DIR = "_unverified"

Lookup = Callable[[str], "PodView | None"]


@dataclass
class Resolved:
    """The names of a crashing process: set only when the pod watch vouches for them."""

    pod_uid: str | None = None
    container_id: str | None = None
    runtime: str | None = None
    namespace: str | None = None  # from the watch only
    pod: str | None = None  # from the watch only
    container: str | None = None  # from the watch only (container ID -> name)
    image: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    owner: str | None = None
    #: The container's mounts (podvolumes.Mount), from the watch: the journal records the storage.
    mounts: tuple = ()
    #: The webhook's reason why no core can be written in this container (a read-only mount).
    unwritable: str | None = None
    #: Registration fields that disagreed with the watch: field -> (claimed, true).
    mismatches: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def verified(self) -> bool:
        """The namespace and pod name come from the API server (through the pod watch)."""
        return bool(self.namespace and self.pod)

    @property
    def state(self) -> str:
        """``verified``, ``unverified`` (a pod the watch does not know), or ``host`` (no pod)."""
        if self.verified:
            return VERIFIED
        return UNVERIFIED if self.pod_uid else HOST

    def rate_key(self, fallback: str) -> tuple[str, str]:
        """The per-container key of the rate limit and counters: what the cgroup says."""
        return (self.pod_uid or "host", self.container_id or fallback)


def lookup_pod(lookup: Lookup | None, pod_uid: str | None) -> PodView | None:
    """The watch's view of a pod, or None; a cache lookup that never raises nor blocks."""
    if not pod_uid or lookup is None:
        return None
    try:
        return lookup(pod_uid)
    except Exception:  # noqa: BLE001 - a cache, never fatal on the crash path
        log.exception("pod lookup failed", extra={"pod_uid": pod_uid})
        return None


def apply_view(resolved: Resolved, view: PodView | None) -> Resolved:
    """Fill the verified names from the watch's view of the pod (UID already checked)."""
    if view is None or view.uid != resolved.pod_uid:
        return resolved
    resolved.namespace, resolved.pod = view.namespace, view.name
    if resolved.container_id:
        resolved.container = view.container_ids.get(resolved.container_id)
    if resolved.container:
        resolved.image = view.images.get(resolved.container)
    resolved.labels = dict(view.labels)
    resolved.owner = view.owner
    if resolved.container:
        resolved.mounts = tuple(view.mounts.get(resolved.container, ()))
    resolved.unwritable = unwritable_for(view.unwritable, resolved.container)
    return resolved


def resolve(cgroup: CgroupIdentity, registration: Registration | None, lookup: Lookup | None) -> Resolved:
    """Names from the cgroup + the pod watch; the registration only compared (pure but for
    the lookup, which is a dict read)."""
    resolved = Resolved(pod_uid=cgroup.pod_uid, container_id=cgroup.container_id, runtime=cgroup.runtime)
    apply_view(resolved, lookup_pod(lookup, cgroup.pod_uid))
    if registration is not None and resolved.verified:
        claims = {"namespace": (registration.namespace, resolved.namespace),
                  "pod": (registration.pod_name, resolved.pod)}
        if resolved.container:
            claims["container"] = (registration.container, resolved.container)
        resolved.mismatches = {k: (claimed or "", true or "") for k, (claimed, true) in claims.items()
                               if claimed and claimed != true}
    return resolved


def report_mismatches(resolved: Resolved, metrics, pid: int) -> None:
    """Log and count what the registration claimed against the watch (the claim is ignored)."""
    for name, (claimed, true) in sorted(resolved.mismatches.items()):
        metrics.identity_mismatches.labels(name).inc()
        log.warning("registration disagrees with the pod watch; using the pod watch",
                    extra={"field": name, "claimed": claimed, "namespace": resolved.namespace,
                           "pod": resolved.pod, "container": resolved.container, "pod_uid": resolved.pod_uid,
                           "container_id": resolved.container_id, "pid": pid, "watch_says": true})
