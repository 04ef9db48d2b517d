"""Settings of the webhook server (one dataclass, filled from ``coredump serve``'s options)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from webhook.admission.settings import AdmissionSettings
    from webhook.registry import RegistrySettings

#: Default listen address (the chart's Service targets this port).
DEFAULT_BIND = "0.0.0.0:8443"
#: 3 MiB: the apiserver's own request limit is 3 MiB, so nothing legitimate is bigger.
DEFAULT_MAX_BODY_BYTES = 3 * 1024 * 1024


@dataclass(frozen=True)
class ServerSettings:
    """How ``coredump serve`` runs: TLS material, gunicorn sizing, limits, and the admission
    settings passed through to ``handle_review``."""

    #: Directory holding ``tls.crt`` and ``tls.key`` (the mounted Secret); watched for rotation.
    cert_dir: Path
    #: Settings of the admission logic (pattern policy, volumes, wrapper image, ...).
    admission: AdmissionSettings
    #: ``HOST:PORT`` to listen on.
    bind: str = DEFAULT_BIND
    #: gunicorn worker processes (each with its own threads); 2 uses both cores of a small node.
    workers: int = 2
    #: Threads per worker (gthread): concurrent requests per process, keep-alive friendly.
    threads: int = 4
    #: Extra threads per worker for requests waiting on registry look-ups: at most this many
    #: wait at once, so ``threads`` always stay free to answer (webhook/server/lookups.py).
    lookup_threads: int = 8
    #: Seconds a worker may stay silent before gunicorn restarts it.
    timeout: int = 30
    #: Seconds an idle keep-alive connection stays open (the apiserver reuses connections).
    keepalive: int = 60
    #: Seconds given to in-flight requests on SIGTERM before workers are killed.
    graceful_timeout: int = 10
    #: Largest request body accepted; bigger ones get HTTP 413 without being parsed.
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    #: Python log level of the webhook's JSON logs (debug, info, warning, error).
    log_level: str = "info"
    #: Seconds between checks of the certificate files for a change (checked on new connections).
    cert_reload_interval: float = 1.0
    #: Directory shared by the workers for Prometheus multiprocess metrics (set by the gunicorn
    #: runner when workers > 1; None: metrics live in this process only).
    metrics_dir: str | None = None
    #: Settings of the registry resolver (None: its defaults).
    registry: RegistrySettings | None = None

    @property
    def cert_file(self) -> Path:
        return Path(self.cert_dir) / "tls.crt"

    @property
    def key_file(self) -> Path:
        return Path(self.cert_dir) / "tls.key"

    def host_port(self) -> tuple[str, int]:
        """``bind`` split into host and port (``[::1]:8443`` works too)."""
        host, sep, port = self.bind.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"bind must be HOST:PORT, got {self.bind!r}")
        return host.strip("[]"), int(port)

    def describe(self) -> dict[str, Any]:
        """The effective settings as JSON-able data, for the start-up log line."""
        out: dict[str, Any] = {
            "certDir": str(self.cert_dir),
            "bind": self.bind,
            "workers": self.workers,
            "threads": self.threads,
            "lookupThreads": self.lookup_threads,
            "timeout": self.timeout,
            "keepalive": self.keepalive,
            "gracefulTimeout": self.graceful_timeout,
            "maxBodyBytes": self.max_body_bytes,
            "logLevel": self.log_level,
            "certReloadInterval": self.cert_reload_interval,
        }
        out["admission"] = self.admission.describe()
        if self.registry is not None:
            out["registry"] = dataclasses.asdict(self.registry)
        return out
