"""gunicorn serving the app over TLS, with certificates reloaded when their files change.

gthread workers (keep-alive, a few threads each). The certificate is loaded once in the master
at start (a missing or broken pair stops the server with a clear error) and each worker then
follows the files through :class:`CertReloader`, plugged into gunicorn's ``ssl_context`` hook,
which gunicorn calls for every new connection.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Any

from gunicorn.app.base import BaseApplication

from webhook.server.app import create_app
from webhook.server.logs import gunicorn_logconfig
from webhook.server.settings import ServerSettings
from webhook.server.tls import CertReloader

log = logging.getLogger("coredump.webhook.server")


def _enable_multiprocess_metrics(directory: str) -> None:
    """Make prometheus_client keep metric values in files under ``directory`` (all workers).

    prometheus_client picks its value store when it is imported, from an environment
    variable; this sets the variable and re-picks the store, before any worker exists.
    """
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    from prometheus_client import values

    values.ValueClass = values.get_value_class()


class WebhookServer(BaseApplication):
    """``coredump serve``: gunicorn with the webhook app, TLS and certificate reload."""

    def __init__(self, settings: ServerSettings) -> None:
        self.reloader = CertReloader(settings.cert_file, settings.key_file, settings.cert_reload_interval)
        self.reloader.load()  # fail fast, before binding or creating anything
        self.metrics_tmp: str | None = None
        if settings.workers > 1 and settings.metrics_dir is None:
            self.metrics_tmp = tempfile.mkdtemp(prefix="coredump-webhook-metrics-")
            from dataclasses import replace

            settings = replace(settings, metrics_dir=self.metrics_tmp)
        if settings.metrics_dir:
            _enable_multiprocess_metrics(settings.metrics_dir)
        self.settings = settings
        self.master_pid = os.getpid()
        super().__init__()

    def run(self) -> None:
        try:
            super().run()
        finally:
            # workers leave through here too (SystemExit after fork): only the master cleans up
            if self.metrics_tmp and os.getpid() == self.master_pid:
                shutil.rmtree(self.metrics_tmp, ignore_errors=True)

    def options(self) -> dict[str, Any]:
        s = self.settings
        reloader = self.reloader
        metrics_dir = s.metrics_dir

        def ssl_context(config: Any, default_ssl_context_factory: Any) -> Any:
            return reloader.context()

        def child_exit(server: Any, worker: Any) -> None:
            if metrics_dir:
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(worker.pid, metrics_dir)

        return {
            "bind": [s.bind],
            "workers": s.workers,
            "threads": s.threads,
            "worker_class": "gthread",
            "timeout": s.timeout,
            "graceful_timeout": s.graceful_timeout,
            "keepalive": s.keepalive,
            "certfile": str(s.cert_file),
            "keyfile": str(s.key_file),
            "ssl_context": ssl_context,
            "child_exit": child_exit,
            "loglevel": s.log_level,
            "accesslog": None,
            "logconfig_dict": gunicorn_logconfig(s.log_level),
            "proc_name": "coredump-webhook",
            # gunicorn >= 25 opens a control socket at a fixed per-user path: two servers on
            # one machine would fight over it, and nothing here uses it.
            "control_socket_disable": True,
            # Request line and header limits stay at gunicorn's defaults; the body limit is ours.
        }

    def load_config(self) -> None:
        for key, value in self.options().items():
            if key in self.cfg.settings:  # settings of newer gunicorn versions are optional
                self.cfg.set(key, value)

    def load(self) -> Any:
        """Build the app in each worker (after fork: its own metrics, resolver, threads)."""
        return create_app(self.settings, readiness=self.reloader)


def run(settings: ServerSettings) -> None:
    """Serve until SIGTERM/SIGINT (gunicorn's graceful shutdown)."""
    WebhookServer(settings).run()
