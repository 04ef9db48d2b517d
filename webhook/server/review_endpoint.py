"""``POST /mutate`` and ``/validate``: the HTTP layer around the pure review.

It only reads and decodes the body, calls :func:`webhook.admission.review.answer_review`, maps
its errors to HTTP answers, and logs and counts the outcome (as kopf's webhook server does
around its admission engine). A body that is not an AdmissionReview gets 400
``{"error": ...}``, a body over the size limit 413. Failing open on a valid review is the
review's own business (one path, in ``admission/review.py``): its answer says "error" and is
counted and logged as such here.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from flask import Request, Response, request

from webhook.admission.podsecurity import LevelLookup
from webhook.admission.review import Answer, ReviewError, answer_review
from webhook.admission.wrapping import Resolver
from webhook.server.metrics import Metrics
from webhook.server.settings import ServerSettings

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024


class RequestRefused(Exception):
    """A request answered with an HTTP error and a JSON body, before the admission logic."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(json.dumps(payload, separators=(",", ":")), status=status, mimetype="application/json")


def error_response(status: int, message: str) -> Response:
    return json_response({"error": message}, status)


def read_body(req: Request, max_bytes: int) -> bytes:
    """The request body, refusing a wrong content type or more than ``max_bytes``."""
    if req.mimetype != "application/json":
        raise RequestRefused(400, f"Content-Type must be application/json, got {req.mimetype or 'none'!r}")
    length = req.content_length
    if length is not None and length > max_bytes:
        raise RequestRefused(413, f"body of {length} bytes exceeds the limit of {max_bytes} bytes")
    stream = req.stream
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


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


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


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _summary(body: Any) -> dict[str, Any]:
    """Who the review is about, for the log line (defensive: the body is already validated)."""
    req = _dict(body).get("request")
    if not isinstance(req, dict):
        return {}
    meta = _dict(_dict(req.get("object")).get("metadata"))
    return {
        "uid": req.get("uid"),
        "kind": _dict(req.get("kind")).get("kind"),
        "operation": req.get("operation"),
        "namespace": req.get("namespace") or meta.get("namespace"),
        "objectName": req.get("name") or meta.get("name"),
        "generateName": meta.get("generateName"),
        "dryRun": bool(req.get("dryRun")),
    }


def _log(level: int, msg: str, fields: dict[str, Any]) -> None:
    """Log one structured line; a logging failure must never turn an answer into a 500."""
    try:
        log.log(level, msg, extra=fields)
    except Exception:  # noqa: BLE001
        pass


class ReviewEndpoint:
    """The review handler of one app: ``endpoint(label)`` answers the current Flask request."""

    def __init__(
        self,
        settings: ServerSettings,
        metrics: Metrics,
        *,
        resolve_image: Resolver | None,
        namespace_levels: LevelLookup | None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.resolve_image = resolve_image
        self.namespace_levels = namespace_levels

    def __call__(self, endpoint: str) -> Response:
        start = time.perf_counter()
        body: Any = None
        try:
            body = decode_json(read_body(request, self.settings.max_body_bytes))
            answer = self.answer(body)
        except RequestRefused as exc:
            self.refused(endpoint, exc, time.perf_counter() - start)
            return error_response(exc.status, exc.message)
        seconds = time.perf_counter() - start
        self.metrics.observe(endpoint, answer.outcome, seconds)
        _log(logging.INFO, "admission", {
            "event": "admission", "endpoint": endpoint, **_summary(body), "allowed": answer.allowed,
            "outcome": answer.outcome, "patchOps": answer.patch_ops, "warnings": answer.warnings,
            "durationMs": round(seconds * 1000, 3),
        })
        return json_response(answer.review)

    def answer(self, body: Any) -> Answer:
        """The pure review of ``body``; a body that is not an AdmissionReview is refused (400)."""
        try:
            return answer_review(
                body, self.settings.admission, resolve_image=self.resolve_image,
                namespace_levels=self.namespace_levels,
            )
        except ReviewError as exc:
            raise RequestRefused(400, str(exc)) from None

    def refused(self, endpoint: str, exc: RequestRefused, seconds: float) -> None:
        self.metrics.observe(endpoint, "bad_request", seconds)
        _log(logging.WARNING, "request refused", {
            "event": "admission.refused", "endpoint": endpoint, "status": exc.status,
            "error": exc.message, "durationMs": round(seconds * 1000, 3),
        })
