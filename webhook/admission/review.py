"""AdmissionReview v1 in, AdmissionReview v1 out: the webhook's whole protocol, without HTTP.

``handle_review`` raises only :class:`ReviewError` (the server answers HTTP 400): for any JSON
value that is not a usable AdmissionReview v1. A valid review always gets an answer. Refusals
carry ``status.code`` 400 ("BadRequest": the annotation's value is what is wrong, not the
caller's rights); the API server shows it as ``admission webhook ... denied the request: ...``.
An unexpected error anywhere after the request is validated fails open, as
``failurePolicy: Ignore`` would: the object is admitted unchanged with a warning, the error is
logged, and the answer's outcome is "error". This is the only place a failure turns into an
admission: the HTTP layer (``webhook/server/review_endpoint.py``) only decodes, calls
:func:`answer_review` and maps :class:`ReviewError` to 400.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from webhook.admission.mutate import mutate_pod
from webhook.admission.patch import MutationResult
from webhook.admission.podsecurity import LevelLookup
from webhook.admission.settings import AdmissionSettings
from webhook.admission.workloads import is_workload, misplaced_annotation, pod_template, synthetic_pod
from webhook.admission.wrapping import Resolver

logger = logging.getLogger(__name__)

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"
#: status.code of a refusal (see the module docstring).
REFUSAL_CODE = 400
OPERATIONS = ("CREATE", "UPDATE", "DELETE", "CONNECT")
#: The warning of a failed-open admission.
INTERNAL_ERROR_WARNING = "coredump-webhook: internal error, admitted unchanged (see the webhook's log)"


class ReviewError(ValueError):
    """The body is not a valid AdmissionReview v1 request (the server maps it to HTTP 400)."""


@dataclass(frozen=True)
class Answer:
    """The AdmissionReview to send back, and what the server logs and counts of it."""

    review: dict[str, Any]
    #: "allowed" (unchanged), "patched", "denied", or "error" (failed open).
    outcome: str
    #: Operations in the patch (0 without one).
    patch_ops: int = 0

    @property
    def allowed(self) -> bool:
        return bool(self.review["response"]["allowed"])

    @property
    def warnings(self) -> int:
        return len(self.review["response"].get("warnings") or [])


def _request(body: object) -> dict[str, Any]:
    """The validated ``request`` of an AdmissionReview body (a parsed or raw JSON document)."""
    document = _document(body)
    request = document.get("request")
    if not isinstance(request, dict):
        raise ReviewError("request is missing or not an object")
    for fine, message in _REQUEST_CHECKS:
        if not fine(request):
            raise ReviewError(message)
    return request


def _document(body: object) -> dict[str, Any]:
    """The AdmissionReview v1 object ``body`` holds."""
    if isinstance(body, (bytes, bytearray, str)):
        try:
            body = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise ReviewError(f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ReviewError("body must be a JSON object (an AdmissionReview)")
    if body.get("apiVersion") != API_VERSION:
        raise ReviewError(f"apiVersion must be {API_VERSION!r}, got {_short(body.get('apiVersion'))}")
    if body.get("kind") != KIND:
        raise ReviewError(f"kind must be {KIND!r}, got {_short(body.get('kind'))}")
    return body


def _optional(request: dict[str, Any], key: str, kind: type) -> bool:
    return request.get(key) is None or isinstance(request[key], kind)


#: The request's fields, checked in this order: (the field is usable, the error when it is not).
_REQUEST_CHECKS: tuple[tuple[Callable[[dict[str, Any]], bool], str], ...] = (
    (lambda r: isinstance(r.get("uid"), str) and bool(r["uid"]), "request.uid is missing or not a string"),
    (lambda r: isinstance(r.get("kind"), dict) and isinstance(r["kind"].get("kind"), str),
     "request.kind must be an object with a string kind"),
    (lambda r: isinstance(r["kind"].get("group", ""), str), "request.kind.group must be a string"),
    (lambda r: r.get("operation") in OPERATIONS, f"request.operation must be one of {', '.join(OPERATIONS)}"),
    (lambda r: _optional(r, "namespace", str), "request.namespace must be a string"),
    (lambda r: _optional(r, "subResource", str), "request.subResource must be a string"),
    (lambda r: _optional(r, "dryRun", bool), "request.dryRun must be a boolean"),
    (lambda r: _optional(r, "object", dict), "request.object must be an object"),
)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def handle_review(
    body: object,
    settings: AdmissionSettings,
    *,
    resolve_image: Resolver | None = None,
    namespace_levels: LevelLookup | None = None,
) -> dict[str, Any]:
    """Answer one AdmissionReview v1. Raise only :class:`ReviewError`.

    Pods on CREATE are mutated; workloads on CREATE/UPDATE have their pod template checked
    (refused or warned, never patched); everything else is allowed unchanged. ``dryRun``
    changes nothing: the mutation has no side effects. ``namespace_levels`` tells the Pod
    Security level a namespace enforces (the server's namespace watch; without one, e.g.
    offline, every namespace is at ``settings.pod_security_default_level``).
    """
    return answer_review(body, settings, resolve_image=resolve_image, namespace_levels=namespace_levels).review


def answer_review(
    body: object,
    settings: AdmissionSettings,
    *,
    resolve_image: Resolver | None = None,
    namespace_levels: LevelLookup | None = None,
) -> Answer:
    """:func:`handle_review` with the outcome the server logs and counts. Raise only ReviewError."""
    request = _request(body)
    try:
        return _answer(request, settings, resolve_image, namespace_levels)
    except ReviewError:
        raise
    except Exception as exc:  # noqa: BLE001 - the one fail-open path (see the module docstring)
        return _failed_open(request, exc)


def _answer(
    request: dict[str, Any],
    settings: AdmissionSettings,
    resolve_image: Resolver | None,
    namespace_levels: LevelLookup | None,
) -> Answer:
    response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
    judged = _judged(request)
    if judged is None:
        return Answer(_review(response), "allowed")
    kind, obj = request["kind"]["kind"], request.get("object")
    if obj is None:
        raise ReviewError(f"request.object is missing for {request['operation']} of a {kind}")
    namespace = request.get("namespace") or _namespace_of(obj)
    deadline = time.monotonic() + settings.admission_budget_seconds
    level = namespace_levels(namespace) if namespace_levels is not None else settings.pod_security_default_level
    if judged == "pod":
        result = mutate_pod(
            obj, settings, namespace=namespace, resolve_image=resolve_image, deadline=deadline,
            namespace_level=level,
        )
    else:
        result = _check_workload(obj, kind, settings, namespace, resolve_image, deadline, level)
    return _fill(response, result, with_patch=judged == "pod")


def _judged(request: dict[str, Any]) -> str | None:
    """"pod" (mutated), "workload" (its template checked), or None (allowed unchanged)."""
    if request.get("subResource"):
        return None
    group, kind = request["kind"].get("group", ""), request["kind"]["kind"]
    operation = request["operation"]
    if group == "" and kind == "Pod" and operation == "CREATE":
        return "pod"
    if is_workload(group, kind) and operation in ("CREATE", "UPDATE"):
        return "workload"
    return None


def _failed_open(request: dict[str, Any], exc: Exception) -> Answer:
    """Admitted unchanged, with a warning for kubectl; the error and its traceback are logged."""
    uid = request["uid"]
    logger.error(
        "admission failed open",
        exc_info=exc,
        extra={
            "event": "admission.error", "uid": uid, "kind": request["kind"]["kind"],
            "namespace": request.get("namespace") or _namespace_of(request.get("object")),
            "operation": request["operation"], "error": repr(exc),
        },
    )
    return Answer(_review({"uid": uid, "allowed": True, "warnings": [INTERNAL_ERROR_WARNING]}), "error")


def _check_workload(
    obj: dict[str, Any],
    kind: str,
    settings: AdmissionSettings,
    namespace: str,
    resolve_image: Resolver | None,
    deadline: float,
    level: str = "privileged",
) -> MutationResult:
    """The pod template judged as the pod it will make; the workload keeps no patch."""
    template = pod_template(obj, kind)
    misplaced = misplaced_annotation(obj, template, kind)
    if template is None:
        result = MutationResult()
    else:
        result = mutate_pod(
            synthetic_pod(template, namespace), settings, namespace=namespace,
            resolve_image=resolve_image, deadline=deadline, namespace_level=level,
        )
        if result.allowed and result.workload_refusal:
            result.allowed, result.message = False, result.workload_refusal
    if misplaced:
        result.warnings.insert(0, misplaced)
    result.patch = []
    return result


def _namespace_of(obj: Any) -> str:
    metadata = obj.get("metadata") if isinstance(obj, dict) else None
    ns = metadata.get("namespace") if isinstance(metadata, dict) else None
    return ns if isinstance(ns, str) else ""


def _fill(response: dict[str, Any], result: MutationResult, *, with_patch: bool) -> Answer:
    response["allowed"] = result.allowed
    outcome, ops = "allowed", 0
    if not result.allowed:
        outcome = "denied"
        response["status"] = {
            "status": "Failure",
            "code": REFUSAL_CODE,
            "reason": "BadRequest",
            "message": result.message,
        }
    elif with_patch and result.patch:
        outcome, ops = "patched", len(result.patch)
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(result.patch, separators=(",", ":")).encode()).decode()
    if result.warnings:
        response["warnings"] = list(result.warnings)
    return Answer(_review(response), outcome, ops)


def _review(response: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, "response": response}


def decoded_patch(review_response: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSONPatch operations of a response produced by :func:`handle_review` ([] if none)."""
    patch = review_response.get("response", {}).get("patch")
    return json.loads(base64.b64decode(patch)) if patch else []
