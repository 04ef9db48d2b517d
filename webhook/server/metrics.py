"""Prometheus metrics of one app: a private registry, so several apps (tests) never collide.

With several gunicorn workers each process counts its own requests; when ``multiprocess_dir``
is set (the gunicorn runner does it) the values live in files there and ``/metrics`` adds up
every worker's, so a scrape sees the whole server whichever worker answers it.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

#: Outcomes of a request to /mutate or /validate.
OUTCOMES = ("allowed", "patched", "denied", "error", "bad_request")

#: Admission latency buckets (seconds): the interesting range is 0.5 ms to a registry timeout.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The webhook's metrics and their exposition."""

    def __init__(self, cert_not_after: Callable[[], float | None] | None = None,
                 multiprocess_dir: str | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess_dir = multiprocess_dir
        self.requests = Counter(
            "coredump_webhook_requests", "Admission requests by endpoint and outcome.",
            ["endpoint", "outcome"], registry=self.registry,
        )
        self.latency = Histogram(
            "coredump_webhook_request_duration_seconds", "Time to answer an admission request.",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.cert_expiry = Gauge(
            "coredump_webhook_certificate_expiry_timestamp_seconds",
            "notAfter of the serving certificate being served (Unix time).",
            registry=self.registry, multiprocess_mode="mostrecent",
        )
        self._cert_not_after = cert_not_after
        for outcome in OUTCOMES:  # expose zeros so rates work from the first scrape
            self.requests.labels("mutate", outcome)

    def observe(self, endpoint: str, outcome: str, seconds: float) -> None:
        self.requests.labels(endpoint, outcome).inc()
        self.latency.labels(endpoint).observe(seconds)

    def render(self) -> bytes:
        """The text exposition of this app (every worker's, in multiprocess mode)."""
        if self._cert_not_after is not None:
            value = self._cert_not_after()
            if value is not None:
                self.cert_expiry.set(value)
        if self.multiprocess_dir:
            from prometheus_client import multiprocess

            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged, path=self.multiprocess_dir)
            return generate_latest(merged)
        return generate_latest(self.registry)
