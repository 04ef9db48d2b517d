"""The webhook's HTTP surface: a Flask app factory around the pure admission review.

``POST /mutate`` (and ``/validate``, the same handler: the review logic tells pods from
workloads) takes an AdmissionReview v1 and answers one (``review_endpoint.py``: decode, call
the review, map errors). Whatever the body, the answer is JSON and never a 500: a body that is
not an AdmissionReview gets 400 ``{"error": ...}``, a body over the size limit 413, and an
unexpected failure of the admission logic on a valid review is answered by the review itself
"allowed, unchanged" with a warning (failing open, in one place: a bug here must not stop a
cluster's pods from starting; the error counter and the log say it happened).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from webhook.admission.review import INTERNAL_ERROR_WARNING
from webhook.kubeclient import api_client
from webhook.registry.resolver import RegistryResolver
from webhook.registry.secrets import secret_reader_for
from webhook.registry.settings import RegistrySettings
from webhook.server.lookups import LookupGate
from webhook.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from webhook.server.metrics import Metrics
from webhook.server.review_endpoint import ReviewEndpoint, error_response, json_response
from webhook.server.settings import ServerSettings

#: INTERNAL_ERROR_WARNING: the warning of a failed-open admission, for callers of the app.
__all__ = ["INTERNAL_ERROR_WARNING", "REVIEW_ENDPOINTS", "Readiness", "create_app"]

log = logging.getLogger(__name__)

#: Endpoints served by the review handler (path -> metrics label).
REVIEW_ENDPOINTS = {"/mutate": "mutate", "/validate": "validate"}


class Readiness(Protocol):
    """What /readyz and the certificate-expiry gauge ask (``CertReloader`` in production)."""

    def status(self) -> tuple[bool, str]: ...

    def cert_not_after(self) -> float | None: ...


def _make_resolver(settings: ServerSettings) -> Callable[..., Any] | None:
    """The registry resolver (``webhook.registry``) when entrypoint resolution is enabled.

    With ``read_pull_secrets`` it gets a Secret reader on the API (the in-cluster account,
    else the kubeconfig, as ``coredump review`` does); without API access it resolves
    anonymously (and says so in the log).
    """
    if not getattr(settings.admission, "resolve_entrypoints", True):
        return None
    registry_settings = settings.registry if settings.registry is not None else RegistrySettings()
    reader = None
    if registry_settings.read_pull_secrets:
        try:
            from kubernetes import client as k8s

            reader = secret_reader_for(k8s.CoreV1Api(api_client()))
        except Exception as exc:  # noqa: BLE001 - degrade to anonymous pulls, loudly
            log.warning("cannot read imagePullSecrets: no API access",
                        extra={"event": "registry.no_secret_reader", "error": str(exc)})
    return RegistryResolver(registry_settings, secret_reader=reader)


def _namespace_levels(settings: ServerSettings) -> Callable[[str], str]:
    """The namespaces' Pod Security levels from a watch (RBAC list/watch namespaces).

    Never blocks: until the first list arrives, and for good without API access or with the
    watch disabled, every namespace counts as restricted (nothing it could refuse is added).
    """
    from webhook.admission.namespaces import NamespaceLevels, NamespaceWatcher

    admission = settings.admission
    levels = NamespaceLevels(getattr(admission, "pod_security_default_level", "privileged"))
    if not (getattr(admission, "watch_namespaces", True) and getattr(admission, "add_capability", True)):
        return levels.level  # never ready: restricted everywhere
    try:
        client = api_client()
    except Exception as exc:  # noqa: BLE001 - no API: restricted everywhere, loudly
        log.warning("cannot watch namespaces: no API access; every namespace counts as restricted",
                    extra={"event": "namespaces.no_api", "error": str(exc)})
        return levels.level
    NamespaceWatcher(client, levels).start()
    return levels.level


def create_app(
    settings: ServerSettings,
    *,
    readiness: Readiness | None = None,
    resolve_image: Callable[..., Any] | None = None,
    metrics: Metrics | None = None,
    namespace_levels: Callable[[str], str] | None = None,
) -> Flask:
    """A Flask app serving the webhook with ``settings``.

    ``readiness`` answers /readyz (the TLS runner passes its certificate reloader; without one
    the app is never ready). ``resolve_image`` defaults to the registry resolver when available;
    at most ``settings.lookup_threads`` requests wait on it at once. ``namespace_levels``
    defaults to a namespace watch.
    """
    app = Flask("coredump-webhook")
    app.config["MAX_CONTENT_LENGTH"] = None  # read_body enforces the limit itself
    app.json.sort_keys = False  # type: ignore[attr-defined]
    if resolve_image is None:
        resolve_image = _make_resolver(settings)
    if resolve_image is not None:
        resolve_image = LookupGate(resolve_image, settings.lookup_threads)
    if namespace_levels is None:
        namespace_levels = _namespace_levels(settings)
    if metrics is None:
        metrics = Metrics(
            cert_not_after=readiness.cert_not_after if readiness is not None else None,
            multiprocess_dir=settings.metrics_dir,
        )
    app.extensions["coredump.metrics"] = metrics
    app.extensions["coredump.settings"] = settings

    review = ReviewEndpoint(settings, metrics, resolve_image=resolve_image, namespace_levels=namespace_levels)
    for path, label in REVIEW_ENDPOINTS.items():
        app.add_url_rule(path, f"review_{label}", (lambda label=label: review(label)), methods=["POST"])

    @app.get("/healthz")
    def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Response:
        if readiness is None:
            return json_response({"status": "not ready", "reason": "no certificate source"}, 503)
        ready, reason = readiness.status()
        return json_response({"status": "ready" if ready else "not ready", "reason": reason}, 200 if ready else 503)

    @app.get("/metrics")
    def metrics_endpoint() -> Response:
        return Response(metrics.render(), mimetype=None, content_type=METRICS_CONTENT_TYPE)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        return error_response(exc.code or 400, exc.description or exc.name)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:  # pragma: no cover - a fault of the HTTP plumbing itself
        # (never of the admission logic: the review fails open on its own, see review.py)
        log.exception("unexpected error", extra={"event": "http.error", "path": request.path})
        return error_response(500, "internal error")

    return app
