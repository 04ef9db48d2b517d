"""Settings of ``coredump page``: the serving base (bind, workers, TLS) plus what the page shows.

Apart from webhook/inspect/page_server.py so the command line declares its options without
importing gunicorn.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webhook import constants
from webhook.serving.settings import ServingSettings
from webhook.settings_fields import setting

#: Default listen address of ``coredump page`` (local only; the chart sets 0.0.0.0:<port>).
DEFAULT_PAGE_BIND = constants.PAGE_DEFAULT_BIND
LOG_LEVELS = ("debug", "info", "warning", "error")


def _env(name: str) -> str:
    return "COREDUMP_PAGE_" + name.upper()


@dataclass(frozen=True, kw_only=True)
class PageSettings(ServingSettings):
    """How ``coredump page`` runs (filled from its click options / env vars)."""

    #: Directory holding cores and their ``.json`` metadata (the node location: <hostDir>/cores).
    cores_root: str = setting(
        os.path.join(constants.DEFAULT_HOST_DIR, "cores"), env=_env("cores_root"),
        help="directory holding cores and their .json metadata")
    #: ``HOST:PORT`` to listen on.
    bind: str = setting(DEFAULT_PAGE_BIND, env=_env("bind"), help="HOST:PORT to listen on")
    #: Directory with ``tls.crt``/``tls.key`` (a mounted kubernetes.io/tls Secret): serve HTTPS
    #: and reload the pair when it changes. None: plain HTTP (local use, or behind port-forward).
    cert_dir: Path | None = setting(
        None, env=_env("cert_dir"), path="existing_dir",
        help="directory with tls.crt and tls.key: serve HTTPS (reloaded when they change)")
    #: Show every namespace to everyone, without a token (a developer's own machine only).
    insecure_no_auth: bool = setting(
        False, env=_env("insecure_no_auth"), negatable=False, show_default=False,
        help="show every namespace to everyone, no token asked (local use only)")
    #: gunicorn worker processes (the page is light: one is enough).
    workers: int = setting(1, env=_env("workers"), min=1, help="gunicorn worker processes")
    #: Threads per worker: concurrent requests, each download holds one for its duration.
    threads: int = setting(8, env=_env("threads"), min=1, help="threads per worker (each download holds one)")
    #: Seconds a worker may stay silent before gunicorn restarts it (downloads run in threads
    #: and do not count: the worker's main loop keeps reporting while they stream).
    timeout: int = 60
    #: Seconds an idle keep-alive connection stays open.
    keepalive: int = 5
    #: List the cluster's CoreDump index with each user's own token (one Deployment for the
    #: cluster) instead of the cores under ``cores_root`` (the node's page).
    index: bool = setting(
        False, env=_env("index"), negatable=False, show_default=False,
        help="list the cluster's CoreDump index with each user's own token (in-cluster)")
    #: Title of the page.
    title: str = "Core dumps"
    #: Log level of the JSON logs (debug, info, warning, error).
    log_level: str = setting("info", env=_env("log_level"), choices=LOG_LEVELS, case_sensitive=False, help="")

    def describe(self) -> dict[str, Any]:
        """The effective settings, for the start-up log line."""
        return {"coresRoot": self.cores_root, "index": self.index, "bind": self.bind, "tls": self.cert_dir is not None,
                "certDir": str(self.cert_dir) if self.cert_dir else None, "insecureNoAuth": self.insecure_no_auth,
                "workers": self.workers, "threads": self.threads, "timeout": self.timeout}
