"""The pods/ephemeralcontainers calls of ``coredump debug``: add the debug container, wait for it.

API errors are explained in terms of what the user must know (RBAC, a cluster too old for the
subresource); the container spec itself is built by :mod:`webhook.inspect.ephemeral`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from webhook.inspect.ephemeral import ephemeral_state
from webhook.inspect.kube import (
    Forbidden,
    KubeError,
    NotFound,
    Unsupported,
    json_body,
    read_pod,
    status_body,
    translate_error,
)


def _refuses_the_form(msg: str, details: dict) -> bool:
    """Does a 400/415/422 say the cluster does not know the Pod-shaped subresource body?"""
    return (details.get("kind") == "EphemeralContainers" or "unknown field" in msg or "not registered" in msg
            or "EphemeralContainers" in msg)


def explain_ephemeral_error(exc: ApiException, namespace: str, pod: str) -> KubeError:
    """Map a failed PATCH of pods/ephemeralcontainers to what the user must know."""
    body = status_body(exc)
    msg = body.get("message") or exc.reason or ""
    details = body.get("details") or {}
    if exc.status == 403:
        return Forbidden(
            f"forbidden: adding a debug container to {namespace}/{pod} needs RBAC verb 'patch' on "
            f"'pods/ephemeralcontainers' in namespace '{namespace}' (server said: {msg})", 403, "Forbidden")
    if exc.status == 404 and not details.get("name"):
        # A missing pod carries its name in details; a missing subresource does not.
        return Unsupported(
            "ephemeral containers are not supported by this cluster: the pods/ephemeralcontainers "
            f"subresource answered 404 (Kubernetes >= 1.23 needed; server said: {msg})", 404, "NotFound")
    if exc.status == 404:
        return NotFound(f"pod {namespace}/{pod} not found (deleted meanwhile?)", 404, "NotFound")
    if exc.status in (400, 415, 422) and _refuses_the_form(msg, details):
        return Unsupported(
            "ephemeral containers are not supported in this form by this cluster (it predates "
            f"Kubernetes 1.23's Pod-shaped subresource; server said: {msg})", exc.status, body.get("reason", ""))
    return translate_error(exc, f"add debug container to {namespace}/{pod}", "patch", "pods/ephemeralcontainers", namespace)


def patch_ephemeral(api: client.ApiClient, namespace: str, pod: str, body: dict) -> dict:
    """Strategic merge PATCH of pods/ephemeralcontainers (see ephemeral.py for why)."""
    try:
        resp = client.CoreV1Api(api).patch_namespaced_pod_ephemeralcontainers(
            pod, namespace, body, _content_type="application/strategic-merge-patch+json", _preload_content=False)
    except ApiException as exc:
        raise explain_ephemeral_error(exc, namespace, pod) from exc
    return json_body(resp)


#: Waiting reasons after which an ephemeral container will not start by itself.
FATAL_WAITING = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerError",
                 "CreateContainerConfigError", "RunContainerError")


def wait_ephemeral(
    api: client.ApiClient, namespace: str, pod: str, name: str, *, timeout: float = 120.0,
    poll: float = 1.0, sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
) -> dict:
    """Poll the pod until the ephemeral container runs; raise on terminal states or timeout."""
    deadline = clock() + timeout
    last = ""
    while True:
        obj = read_pod(api, namespace, pod)
        state, why = ephemeral_state(obj, name)
        if state == "running":
            return obj
        if state == "terminated":
            raise KubeError(f"debug container {name} ended before it could be attached: {why or 'terminated'}")
        if state == "waiting" and why.split(" ", 1)[0] in FATAL_WAITING:
            raise KubeError(f"debug container {name} cannot start: {why}")
        last = why or state
        if clock() >= deadline:
            raise KubeError(f"debug container {name} not running after {timeout:.0f}s (last state: {last})")
        sleep(poll)
