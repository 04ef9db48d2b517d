"""gunicorn serving the app over TLS, with certificates reloaded when their files change.

gthread workers (keep-alive, a few threads each). The certificate is loaded once in the master
at start (a missing or broken pair stops the server with a clear error) and each worker then
follows the files through :class:`CertReloader`, plugged into gunicorn's ``ssl_context`` hook,
which gunicorn calls for every new connection.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from webhook.server.app import create_app
from webhook.server.settings import ServerSettings
from webhook.serving.gunicorn_base import GthreadServer
from webhook.serving.tls import CertReloader


def _enable_multiprocess_metrics(directory: str) -> None:
    """Make prometheus_client keep metric values in files under ``directory`` (all workers).

    prometheus_client picks its value store when it is imported, from an environment
    variable; this sets the variable and re-picks the store, before any worker exists.
    """
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    from prometheus_client import values

    values.ValueClass = values.get_value_class()


class WebhookServer(GthreadServer):
    """``coredump serve``: gunicorn with the webhook app, TLS and certificate reload."""

    proc_name = "coredump-webhook"
    settings: ServerSettings
    reloader: CertReloader

    def __init__(self, settings: ServerSettings) -> None:
        reloader = CertReloader(settings.cert_file, settings.key_file, settings.cert_reload_interval)
        reloader.load()  # fail fast, before binding or creating anything
        self.metrics_tmp: str | None = None
        if settings.workers > 1 and settings.metrics_dir is None:
            self.metrics_tmp = tempfile.mkdtemp(prefix="coredump-webhook-metrics-")
            from dataclasses import replace

            settings = replace(settings, metrics_dir=self.metrics_tmp)
        if settings.metrics_dir:
            _enable_multiprocess_metrics(settings.metrics_dir)
        self.master_pid = os.getpid()
        super().__init__(settings, reloader)

    def run(self) -> None:
        try:
            super().run()
        finally:
            # workers leave through here too (SystemExit after fork): only the master cleans up
            if self.metrics_tmp and os.getpid() == self.master_pid:
                shutil.rmtree(self.metrics_tmp, ignore_errors=True)

    def options(self) -> dict[str, Any]:
        """The shared gunicorn settings (the body limit is the app's), plus metrics cleanup."""
        metrics_dir = self.settings.metrics_dir

        def child_exit(server: Any, worker: Any) -> None:
            if metrics_dir:
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(worker.pid, metrics_dir)

        # Requests waiting on registry look-ups get threads of their own (see server/lookups.py).
        threads = self.settings.threads + self.settings.lookup_threads
        return {**super().options(), "threads": threads, "child_exit": child_exit}

    def load(self) -> Any:
        """Build the app in each worker (after fork: its own metrics, resolver, threads)."""
        return create_app(self.settings, readiness=self.reloader)
