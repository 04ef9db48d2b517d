"""What ``coredump serve`` and ``coredump page`` share in gunicorn: gthread workers, JSON logs,
and, given a :class:`CertReloader`, TLS whose certificate follows its files.

Kept apart from ``gunicorn_app`` so the page does not import the admission app to get it.
"""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from webhook.logs import gunicorn_logconfig
from webhook.serving.settings import ServingSettings
from webhook.serving.tls import CertReloader


class GthreadServer(BaseApplication):
    """gunicorn configured from ``options()``; subclasses set ``proc_name`` and ``load``."""

    proc_name = "coredump"

    def __init__(self, settings: ServingSettings, reloader: CertReloader | None) -> None:
        self.settings = settings
        self.reloader = reloader
        super().__init__()  # calls load_config, which needs both

    def options(self) -> dict[str, Any]:
        s = self.settings
        opts: dict[str, Any] = {
            "bind": [s.bind],
            "workers": s.workers,
            "threads": s.threads,
            "worker_class": "gthread",
            "timeout": s.timeout,
            "graceful_timeout": s.graceful_timeout,
            "keepalive": s.keepalive,
            "loglevel": s.log_level,
            "accesslog": None,
            "logconfig_dict": gunicorn_logconfig(s.log_level),
            "proc_name": self.proc_name,
            # gunicorn >= 25 opens a control socket at a fixed per-user path: two servers on one
            # machine (the page next to `coredump serve` on a dev machine) would fight over it,
            # and nothing here uses it.
            "control_socket_disable": True,
            # Request line and header limits stay at gunicorn's defaults.
        }
        if self.reloader is not None:
            reloader = self.reloader

            def ssl_context(config: Any, default_ssl_context_factory: Any) -> Any:
                return reloader.context()

            opts.update(certfile=str(reloader.cert_file), keyfile=str(reloader.key_file), ssl_context=ssl_context)
        return opts

    def load_config(self) -> None:
        for key, value in self.options().items():
            if key in self.cfg.settings:  # settings of newer gunicorn versions are optional
                self.cfg.set(key, value)
