"""Settings of the webhook server: one dataclass, filled from ``coredump serve``'s options.

The serving part (bind, gunicorn sizing, timeouts, TLS files) extends the base the page shares
(webhook/serving/settings.py); every field users set carries its flag, environment variable
and help (:func:`webhook.settings_fields.setting`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from webhook.serving.settings import ServingSettings
from webhook.settings_fields import setting

if TYPE_CHECKING:  # pragma: no cover
    from webhook.admission.settings import AdmissionSettings
    from webhook.registry.settings import RegistrySettings

#: Default listen address (the chart's Service targets this port).
DEFAULT_BIND = "0.0.0.0:8443"
#: 3 MiB: the apiserver's own request limit is 3 MiB, so nothing legitimate is bigger.
DEFAULT_MAX_BODY_BYTES = 3 * 1024 * 1024
LOG_LEVELS = ("debug", "info", "warning", "error")


def _env(name: str) -> str:
    return "COREDUMP_WEBHOOK_" + name.upper()


@dataclass(frozen=True, kw_only=True)
class ServerSettings(ServingSettings):
    """How ``coredump serve`` runs: TLS material, gunicorn sizing, limits, and the admission
    settings passed through to ``handle_review``."""

    #: Directory holding ``tls.crt`` and ``tls.key`` (the mounted Secret); watched for rotation.
    cert_dir: Path = setting(
        env=_env("cert_dir"), path="existing_dir",
        help="Directory with tls.crt and tls.key (the mounted Secret); reloaded when they change.")
    #: Settings of the admission logic (pattern policy, volumes, wrapper image, ...).
    admission: AdmissionSettings
    #: ``HOST:PORT`` to listen on.
    bind: str = setting(DEFAULT_BIND, env=_env("bind"), help="HOST:PORT to listen on.")
    #: gunicorn worker processes (each with its own threads); 2 uses both cores of a small node.
    workers: int = setting(2, env=_env("workers"), min=1, help="gunicorn worker processes.")
    #: Threads per worker (gthread): concurrent requests per process, keep-alive friendly.
    threads: int = setting(4, env=_env("threads"), min=1, help="Threads per worker.")
    #: Extra threads per worker for requests waiting on registry look-ups: at most this many
    #: wait at once, so ``threads`` always stay free to answer (webhook/server/lookups.py).
    lookup_threads: int = setting(
        8, env=_env("lookup_threads"), min=1,
        help="Extra threads per worker for requests waiting on registry look-ups.")
    #: Seconds a worker may stay silent before gunicorn restarts it.
    timeout: int = setting(30, env=_env("timeout"), min=1, help="Seconds before a silent worker is restarted.")
    #: Seconds an idle keep-alive connection stays open (the apiserver reuses connections).
    keepalive: int = setting(
        60, env=_env("keepalive"), min=0, help="Seconds an idle keep-alive connection stays open.")
    #: Seconds given to in-flight requests on SIGTERM before workers are killed.
    graceful_timeout: int = setting(
        10, env=_env("graceful_timeout"), min=0, help="Seconds in-flight requests get on SIGTERM.")
    #: Largest request body accepted; bigger ones get HTTP 413 without being parsed.
    max_body_bytes: int = setting(
        DEFAULT_MAX_BODY_BYTES, env=_env("max_body_bytes"), min=1024,
        help="Largest request body; bigger ones get HTTP 413.")
    #: Python log level of the webhook's JSON logs (debug, info, warning, error).
    log_level: str = setting(
        "info", env=_env("log_level"), choices=LOG_LEVELS, case_sensitive=False, help="Log level.")
    #: Seconds between checks of the certificate files for a change (checked on new connections).
    cert_reload_interval: float = setting(
        1.0, env=_env("cert_reload_interval"), min=0.0, help="Seconds between checks of the certificate files.")
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
