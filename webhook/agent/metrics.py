"""Prometheus metrics of the crash path (served by the agent on ``metrics_bind``)."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Histogram

#: The agent's registry; the metrics endpoint serves it.
REGISTRY = CollectorRegistry()

_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class AgentMetrics:
    """The crash path's counters on one registry (create once per registry: see :func:`get`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.cores = Counter("coredump_agent_cores", "Crashes handled, by outcome and reason",
                             ["outcome", "reason", "destination"], registry=registry)
        self.bytes = Counter("coredump_agent_core_bytes", "Original core bytes captured",
                             ["destination"], registry=registry)
        self.stored_bytes = Counter("coredump_agent_stored_bytes", "Bytes stored (after compression)",
                                    ["destination"], registry=registry)
        self.duration = Histogram("coredump_agent_dump_duration_seconds", "Time to handle one crash",
                                  ["outcome"], buckets=_BUCKETS, registry=registry)
        self.rate_limited = Counter("coredump_agent_rate_limited", "Cores refused by the per-container rate limit",
                                    ["namespace"], registry=registry)
        self.identity_mismatches = Counter(
            "coredump_agent_identity_mismatches", "Registration names (namespace, pod, container) that "
            "disagreed with the pod watch and were ignored", ["field"], registry=registry)
        self.unverified = Counter("coredump_agent_unverified_identities",
                                  "Crashes of a pod the pod watch did not know (filed by pod UID and container ID)",
                                  registry=registry)


_lock = threading.Lock()
_by_registry: dict[int, AgentMetrics] = {}


def get(registry: CollectorRegistry | None = None) -> AgentMetrics:
    """The metrics on ``registry`` (default: :data:`REGISTRY`), created the first time."""
    registry = REGISTRY if registry is None else registry
    with _lock:
        found = _by_registry.get(id(registry))
        if found is None or found.registry is not registry:
            found = _by_registry[id(registry)] = AgentMetrics(registry)
        return found
