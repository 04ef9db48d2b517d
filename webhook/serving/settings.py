"""What every gunicorn server of the project is configured with: bind, sizing, timeouts, TLS.

``coredump serve`` (webhook/server/settings.py) and ``coredump page``
(webhook/inspect/page_server.py) extend :class:`ServingSettings`; each redeclares the fields it
offers as options with its own defaults, flags and environment variables
(:func:`webhook.settings_fields.setting`), and :class:`~webhook.serving.gunicorn_base.GthreadServer`
reads only what is declared here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from webhook.serving.tls import CertReloader


@dataclass(frozen=True, kw_only=True)
class ServingSettings:
    """gunicorn (gthread workers) and TLS settings shared by the project's servers."""

    #: Directory holding ``tls.crt`` and ``tls.key`` (a mounted kubernetes.io/tls Secret): serve
    #: HTTPS and reload the pair when it changes. None: plain HTTP.
    cert_dir: Path | None = None
    #: ``HOST:PORT`` to listen on.
    bind: str
    #: gunicorn worker processes.
    workers: int = 1
    #: Threads per worker (gthread): concurrent requests per process, keep-alive friendly.
    threads: int = 4
    #: Seconds a worker may stay silent before gunicorn restarts it.
    timeout: int = 30
    #: Seconds an idle keep-alive connection stays open.
    keepalive: int = 5
    #: Seconds given to in-flight requests on SIGTERM before workers are killed.
    graceful_timeout: int = 10
    #: Log level of the JSON logs (debug, info, warning, error).
    log_level: str = "info"
    #: Seconds between checks of the certificate files for a change (checked on new connections).
    cert_reload_interval: float = 1.0

    def host_port(self) -> tuple[str, int]:
        """``bind`` split into host and port (``[::1]:8443`` works too); ValueError when malformed."""
        host, sep, port = self.bind.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bind must be HOST:PORT, got {self.bind!r}")
        return host.strip("[]"), int(port)

    def cert_reloader(self) -> CertReloader | None:
        """The reloader of ``cert_dir``'s pair, not loaded yet (None without ``cert_dir``)."""
        from webhook.serving.tls import CertReloader  # TLS (cryptography) only for a server that serves it

        if self.cert_dir is None:
            return None
        cert_dir = Path(self.cert_dir)
        return CertReloader(cert_dir / "tls.crt", cert_dir / "tls.key", self.cert_reload_interval)
