"""The server's own series (the crash path's live in webhook/agent/metrics.py)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class ServerMetrics:
    """The agent-level series this module owns (the crash path's own live in metrics.py)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.handovers = Counter(
            "coredump_agent_handovers_total",
            "Helper connections by result (accepted, protocol_error, helper_gave_up).",
            ["result"],
            registry=registry,
        )
        self.dumps_in_progress = Gauge("coredump_agent_dumps_in_progress",
                                       "Cores being read now (until their process is released).", registry=registry)
        self.dumps_queued = Gauge(
            "coredump_agent_dumps_queued", "Cores received and waiting for a free slot (max_concurrent_dumps).", registry=registry
        )
        self.dump_timeouts = Counter(
            "coredump_agent_dump_timeouts_total", "Dumps cut by the agent's dump timeout.", registry=registry
        )
        self.stop_spooled = Counter(
            "coredump_agent_stop_spooled_total",
            "Cores that were waiting for a slot when the agent stopped, written to the spool for the next agent.",
            registry=registry,
        )
        self.stop_cut = Counter(
            "coredump_agent_stop_cut_total",
            "Dumps still running after the agent's stop timeout, cut and marked partial.",
            registry=registry,
        )
        self.handlers_stuck = Gauge(
            "coredump_agent_handlers_stuck", "Handlers still running after their dump was cut.", registry=registry
        )
        self.spool_entries = Gauge("coredump_agent_spool_entries", "Complete entries waiting in the spool.", registry=registry)
        self.spool_deliveries = Counter(
            "coredump_agent_spool_deliveries_total",
            "Spooled cores handled, by result (delivered, retry, failed, bad).",
            ["result"],
            registry=registry,
        )

