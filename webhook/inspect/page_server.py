"""``coredump page`` served by gunicorn: the read-only cores page, plain HTTP or TLS.

The same serving pieces as ``coredump serve`` (:class:`GthreadServer`): gthread workers, JSON
logs, and, with a certificate directory, TLS whose certificate follows its files through
:class:`CertReloader` (a rotated Secret is picked up without a restart). The webhook's own
server adds the admission app, its metrics and its readiness; this one only hosts
:func:`create_page_app`.

The authorizer (a Kubernetes API client doing TokenReview + SubjectAccessReview) is built in
each worker after the fork, never shared across processes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webhook import constants
from webhook.serving.gunicorn_base import GthreadServer
from webhook.serving.tls import CertReloader

log = logging.getLogger(__name__)

#: Default listen address of ``coredump page`` (local only; the chart sets 0.0.0.0:<port>).
DEFAULT_PAGE_BIND = constants.PAGE_DEFAULT_BIND

Authorizer = Callable[[str, str], bool]


@dataclass(frozen=True)
class PageSettings:
    """How ``coredump page`` runs (filled from its click options / env vars)."""

    #: Directory holding cores and their ``.json`` metadata (the node location: <hostDir>/cores).
    cores_root: str
    #: ``HOST:PORT`` to listen on.
    bind: str = DEFAULT_PAGE_BIND
    #: Directory with ``tls.crt``/``tls.key`` (a mounted kubernetes.io/tls Secret): serve HTTPS
    #: and reload the pair when it changes. None: plain HTTP (local use, or behind port-forward).
    cert_dir: Path | None = None
    #: Show every namespace to everyone, without a token (a developer's own machine only).
    insecure_no_auth: bool = False
    #: gunicorn worker processes (the page is light: one is enough).
    workers: int = 1
    #: Threads per worker: concurrent requests, each download holds one for its duration.
    threads: int = 8
    #: Seconds a worker may stay silent before gunicorn restarts it (downloads run in threads
    #: and do not count: the worker's main loop keeps reporting while they stream).
    timeout: int = 60
    #: Seconds an idle keep-alive connection stays open.
    keepalive: int = 5
    #: Seconds in-flight requests get on SIGTERM.
    graceful_timeout: int = 10
    #: List the cluster's CoreDump index with each user's own token (one Deployment for the
    #: cluster) instead of the cores under ``cores_root`` (the node's page).
    index: bool = False
    #: Title of the page.
    title: str = "Core dumps"
    #: Log level of the JSON logs (debug, info, warning, error).
    log_level: str = "info"
    #: Seconds between checks of the certificate files for a change.
    cert_reload_interval: float = 1.0

    def host_port(self) -> tuple[str, int]:
        """``bind`` split into host and port (raises ValueError when malformed)."""
        host, sep, port = self.bind.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bind must be HOST:PORT, got {self.bind!r}")
        return host.strip("[]"), int(port)

    def describe(self) -> dict[str, Any]:
        """The effective settings, for the start-up log line."""
        return {"coresRoot": self.cores_root, "index": self.index, "bind": self.bind, "tls": self.cert_dir is not None,
                "certDir": str(self.cert_dir) if self.cert_dir else None, "insecureNoAuth": self.insecure_no_auth,
                "workers": self.workers, "threads": self.threads, "timeout": self.timeout}


def kube_authorizer() -> Authorizer:
    """The production RBAC rule: TokenReview + SubjectAccessReview with the pod's own account."""
    from webhook.inspect import kube

    return kube.make_authorizer(kube.api_client())


def token_user(ttl: float = 60.0) -> Callable[[str], str | None]:
    """Who is behind a token, for the request log: a TokenReview with the page's own account
    (its only right), remembered for ``ttl`` seconds."""
    import hashlib
    import time

    from webhook.inspect import kube

    api = kube.api_client()
    seen: dict[str, tuple[float, str | None]] = {}

    def whoami(token: str) -> str | None:
        key = hashlib.sha256(token.encode()).hexdigest()
        hit = seen.get(key)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        user = (kube.token_review(api, token) or {}).get("username")
        if len(seen) > 1024:
            seen.clear()
        seen[key] = (time.monotonic() + ttl, user)
        return user

    return whoami


def allow_everyone(token: str, namespace: str) -> bool:
    """``--insecure-no-auth``: every namespace, for everyone."""
    return True


class PageServer(GthreadServer):
    """gunicorn hosting the page app (TLS with certificate reload when ``cert_dir`` is set)."""

    proc_name = "coredump-page"
    settings: PageSettings

    def __init__(self, settings: PageSettings, make_authorizer: Callable[[], Authorizer] | None = None) -> None:
        settings.host_port()  # fail before binding anything
        if make_authorizer is None:
            make_authorizer = (lambda: allow_everyone) if settings.insecure_no_auth else kube_authorizer
        self.make_authorizer = make_authorizer
        reloader = None
        if settings.cert_dir is not None:
            cert_dir = Path(settings.cert_dir)
            reloader = CertReloader(cert_dir / "tls.crt", cert_dir / "tls.key", settings.cert_reload_interval)
            reloader.load()  # a missing or broken pair stops here, with CertLoadError
        super().__init__(settings, reloader)

    def load(self) -> Any:
        """The page app, built in each worker (its own API client, after the fork)."""
        from webhook.inspect.page import create_page_app

        if self.settings.index:
            from webhook.inspect.index_page import create_index_page_app, in_cluster_api_for_token

            return create_index_page_app(in_cluster_api_for_token(), title=self.settings.title, whoami=token_user())

        return create_page_app(self.settings.cores_root, authorize=self.make_authorizer(),
                               title=self.settings.title, anonymous=self.settings.insecure_no_auth)


def run(settings: PageSettings) -> None:
    """Serve until SIGTERM/SIGINT (gunicorn's graceful shutdown)."""
    log.info("starting", extra={"event": "page.start", "settings": settings.describe()})
    PageServer(settings).run()
