"""The webhook's HTTP surface: a Flask app factory around ``handle_review``.

``POST /mutate`` (and ``/validate``, the same handler: the review logic tells pods from
workloads) takes an AdmissionReview v1 and answers one. Whatever the body, the answer is JSON
and never a 500: a body that is not an AdmissionReview gets 400 ``{"error": ...}``, a body over
the size limit 413, and an unexpected failure of the admission logic on a valid review is
logged and answered "allowed, unchanged" with a warning (failing open: a bug here must not
stop a cluster's pods from starting; the error counter and the log say it happened).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any, Protocol

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from webhook.admission.review import INTERNAL_ERROR_WARNING, ReviewError, handle_review
from webhook.kubeclient import api_client
from webhook.registry import RegistryResolver, RegistrySettings, secret_reader_for
from webhook.server.lookups import LookupGate
from webhook.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from webhook.server.metrics import Metrics
from webhook.server.settings import ServerSettings

log = logging.getLogger(__name__)

#: Endpoints served by the review handler (path -> metrics label).
REVIEW_ENDPOINTS = {"/mutate": "mutate", "/validate": "validate"}
_CHUNK = 64 * 1024
_OP_KEY = re.compile(rb'"op"\s*:')


class Readiness(Protocol):
    """What /readyz and the certificate-expiry gauge ask (``CertReloader`` in production)."""

    def status(self) -> tuple[bool, str]: ...

    def cert_not_after(self) -> float | None: ...


class RequestRefused(Exception):
    """A request answered with an HTTP error and a JSON body, before the admission logic."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _json_response(payload: Any, status: int = 200) -> Response:
    return Response(json.dumps(payload, separators=(",", ":")), status=status, mimetype="application/json")


def _error(status: int, message: str) -> Response:
    return _json_response({"error": message}, status)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def read_body(max_bytes: int) -> bytes:
    """The request body, refusing a wrong content type or more than ``max_bytes``."""
    if request.mimetype != "application/json":
        raise RequestRefused(400, f"Content-Type must be application/json, got {request.mimetype or 'none'!r}")
    length = request.content_length
    if length is not None and length > max_bytes:
        raise RequestRefused(413, f"body of {length} bytes exceeds the limit of {max_bytes} bytes")
    stream = request.stream
    parts: list[bytes] = []
    size = 0
    while True:
        chunk = stream.read(min(_CHUNK, max_bytes + 1 - size))
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            raise RequestRefused(413, f"body exceeds the limit of {max_bytes} bytes")
    if not size:
        raise RequestRefused(400, "empty body: expected an AdmissionReview")
    return b"".join(parts)


def decode_json(raw: bytes) -> Any:
    """Strict JSON: UTF-8 only, no NaN/Infinity, bounded nesting."""
    try:
        text = raw.decode("utf-8")
        return json.loads(text, parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise RequestRefused(400, f"body is not UTF-8: {exc.reason} at byte {exc.start}") from None
    except RecursionError:
        raise RequestRefused(400, "body is nested too deeply") from None
    except ValueError as exc:
        raise RequestRefused(400, f"body is not valid JSON: {exc}") from None


def _uid_of(body: Any) -> str | None:
    req = body.get("request") if isinstance(body, dict) else None
    uid = req.get("uid") if isinstance(req, dict) else None
    return uid if isinstance(uid, str) and uid else None


def _summary(body: Any) -> dict[str, Any]:
    """Who the review is about, for the log line (defensive: the body is already validated)."""
    req = body.get("request") if isinstance(body, dict) else None
    if not isinstance(req, dict):
        return {}
    obj = req.get("object") if isinstance(req.get("object"), dict) else {}
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    kind = req.get("kind") if isinstance(req.get("kind"), dict) else {}
    return {
        "uid": req.get("uid"),
        "kind": kind.get("kind"),
        "operation": req.get("operation"),
        "namespace": req.get("namespace") or meta.get("namespace"),
        "objectName": req.get("name") or meta.get("name"),
        "generateName": meta.get("generateName"),
        "dryRun": bool(req.get("dryRun")),
    }


def _outcome(result: dict[str, Any]) -> tuple[str, bool, int, int]:
    """(outcome, allowed, patch operations, warnings) of a review response."""
    resp = result.get("response") if isinstance(result, dict) else None
    if not isinstance(resp, dict):
        return "error", False, 0, 0
    allowed = bool(resp.get("allowed"))
    warnings = resp.get("warnings") or []
    ops = 0
    patch = resp.get("patch")
    if patch:
        # For the log line only: count the "op" members instead of parsing the whole patch
        # (parsing cost ~60 us, a tenth of a mutation); exact unless a patch *value* holds an
        # object with an "op" key, which pod fields do not.
        try:
            ops = len(_OP_KEY.findall(base64.b64decode(patch)))
        except (ValueError, binascii.Error, TypeError):
            ops = -1
    if not allowed:
        return "denied", False, ops, len(warnings)
    return ("patched" if patch else "allowed"), True, ops, len(warnings)


def _log(level: int, msg: str, fields: dict[str, Any], exc_info: bool = False) -> None:
    """Log one structured line; a logging failure must never turn an answer into a 500."""
    try:
        log.log(level, msg, extra=fields, exc_info=exc_info)
    except Exception:  # noqa: BLE001
        pass


def fail_open_response(uid: str) -> dict[str, Any]:
    """The answer when the admission logic itself failed on a valid review."""
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": uid, "allowed": True, "warnings": [INTERNAL_ERROR_WARNING]},
    }


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

    def review(endpoint: str) -> Response:
        start = time.perf_counter()
        body: Any = None
        try:
            body = decode_json(read_body(settings.max_body_bytes))
            try:
                result = handle_review(
                    body, settings.admission, resolve_image=resolve_image, namespace_levels=namespace_levels
                )
            except ReviewError as exc:
                raise RequestRefused(400, str(exc)) from None
            outcome, allowed, ops, warnings = _outcome(result)
            if outcome == "error":
                raise RuntimeError("handle_review returned no response object")
            response = _json_response(result)
        except RequestRefused as exc:
            seconds = time.perf_counter() - start
            metrics.observe(endpoint, "bad_request", seconds)
            _log(logging.WARNING, "request refused", {
                "event": "admission.refused", "endpoint": endpoint, "status": exc.status,
                "error": exc.message, "durationMs": round(seconds * 1000, 3),
            })
            return _error(exc.status, exc.message)
        except Exception as exc:  # noqa: BLE001 - never a 500, never a dead worker
            seconds = time.perf_counter() - start
            uid = _uid_of(body)
            metrics.observe(endpoint, "error", seconds)
            _log(logging.ERROR, "admission failed", {
                "event": "admission.error", "endpoint": endpoint, "error": repr(exc),
                "durationMs": round(seconds * 1000, 3), **_summary(body),
            }, exc_info=True)
            if uid is None:
                return _error(400, "not an AdmissionReview with a request.uid")
            return _json_response(fail_open_response(uid))
        seconds = time.perf_counter() - start
        metrics.observe(endpoint, outcome, seconds)
        _log(logging.INFO, "admission", {
            "event": "admission", "endpoint": endpoint, **_summary(body), "allowed": allowed,
            "outcome": outcome, "patchOps": ops, "warnings": warnings,
            "durationMs": round(seconds * 1000, 3),
        })
        return response

    for path, label in REVIEW_ENDPOINTS.items():
        app.add_url_rule(path, f"review_{label}", (lambda label=label: review(label)), methods=["POST"])

    @app.get("/healthz")
    def healthz() -> Response:
        return _json_response({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Response:
        if readiness is None:
            return _json_response({"status": "not ready", "reason": "no certificate source"}, 503)
        ready, reason = readiness.status()
        return _json_response({"status": "ready" if ready else "not ready", "reason": reason}, 200 if ready else 503)

    @app.get("/metrics")
    def metrics_endpoint() -> Response:
        return Response(metrics.render(), mimetype=None, content_type=METRICS_CONTENT_TYPE)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        return _error(exc.code or 400, exc.description or exc.name)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:  # pragma: no cover - the review path catches its own
        log.exception("unexpected error", extra={"event": "http.error", "path": request.path})
        return _error(500, "internal error")

    return app
