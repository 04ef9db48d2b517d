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
from typing import Any

from webhook.inspect.page_settings import PageSettings
from webhook.serving.gunicorn_base import GthreadServer

log = logging.getLogger(__name__)

Authorizer = Callable[[str, str], bool]


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
        reloader = settings.cert_reloader()
        if reloader is not None:
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
