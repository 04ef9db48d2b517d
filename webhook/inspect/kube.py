"""The thin Kubernetes edge of the inspection CLI and the page.

Every call uses the *user's* credentials (kubeconfig or the page's bearer token), so the API's
RBAC decides what they see. Responses are read as raw JSON dicts (``_preload_content=False``)
and handed to the pure modules; API errors become :class:`KubeError` with a message that names
what is missing. Tested against recorded real responses served over a real socket.

Exec streams are :mod:`webhook.inspect.pod_exec`; debug containers :mod:`webhook.inspect.ephemeral_api`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from webhook import kubeclient
from webhook.inspect.ephemeral import InspectError


class KubeError(InspectError):
    """An API call failed; ``status`` is the HTTP code (0 when the server was unreachable)."""

    def __init__(self, message: str, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class Forbidden(KubeError):
    pass


class NotFound(KubeError):
    pass


class Unsupported(KubeError):
    pass


def api_client(context: str | None = None, kubeconfig: str | None = None) -> client.ApiClient:
    """An ApiClient from the kubeconfig (``--kubeconfig``/``--context``), else in-cluster."""
    try:
        return kubeclient.api_client(kubeconfig, context, kubeconfig_first=True)
    except kubeclient.ApiConfigError as exc:
        raise KubeError(str(exc)) from exc


def status_body(exc: ApiException) -> dict:
    """The Status object of an API error ({} when the body is not one)."""
    try:
        body = json.loads(exc.body) if exc.body else {}
    except (TypeError, ValueError):
        return {"message": str(exc.body)[:300]}
    return body if isinstance(body, dict) else {}


def translate_error(exc: ApiException, what: str, verb: str, resource: str, namespace: str) -> KubeError:
    """The :class:`KubeError` of a failed call: what it needed (RBAC verb, resource, namespace)."""
    body = status_body(exc)
    msg = body.get("message") or exc.reason or str(exc.status)
    if exc.status == 403:
        return Forbidden(
            f"forbidden: {what} needs RBAC verb '{verb}' on '{resource}' in namespace '{namespace}' ({msg})",
            403, "Forbidden")
    if exc.status == 404:
        return NotFound(f"{what}: not found ({msg})", 404, "NotFound")
    if exc.status == 401:
        return KubeError(f"{what}: unauthorized: your credentials were refused ({msg})", 401, "Unauthorized")
    if exc.status == 0:
        return KubeError(f"{what}: API server unreachable ({exc.reason})", 0, "")
    return KubeError(f"{what}: {exc.status} {msg}", exc.status, body.get("reason", ""))


def json_body(resp) -> dict:
    """The JSON object of a response read with ``_preload_content=False``."""
    return json.loads(resp.data)


def read_pod(api: client.ApiClient, namespace: str, name: str) -> dict:
    try:
        return json_body(client.CoreV1Api(api).read_namespaced_pod(name, namespace, _preload_content=False))
    except ApiException as exc:
        err = translate_error(exc, f"pod {namespace}/{name}", "get", "pods", namespace)
        if isinstance(err, NotFound):
            err = NotFound(f"pod {namespace}/{name} not found", 404, "NotFound")
        raise err from exc


def list_pods(api: client.ApiClient, namespace: str | None) -> list[dict]:
    """Pods of one namespace, or of all (``None``)."""
    core = client.CoreV1Api(api)
    try:
        if namespace is None:
            resp = core.list_pod_for_all_namespaces(_preload_content=False)
        else:
            resp = core.list_namespaced_pod(namespace, _preload_content=False)
    except ApiException as exc:
        raise translate_error(exc, f"list pods in {namespace or 'all namespaces'}", "list", "pods", namespace or "*") from exc
    return list(json_body(resp).get("items") or [])


#: The crash index (charts/coredump-webhook/crds/): group, version, plural.
INDEX = ("coredump-webhook.io", "v1alpha1", "coredumps")


def _unreachable(api: client.ApiClient, exc: Exception) -> KubeError:
    reason = getattr(exc, "reason", None) or exc
    return KubeError(f"cannot reach the API server at {api.configuration.host}: {reason}", 0, "Unreachable")


def list_coredumps(api: client.ApiClient, namespace: str | None, label_selector: str | None = None) -> list[dict]:
    """CoreDumps of one namespace, or of all (``None``): one API call."""
    import urllib3

    group, version, plural = INDEX
    objects = client.CustomObjectsApi(api)
    selector = label_selector or None  # None: no labelSelector parameter at all
    try:
        if namespace is None:
            resp = objects.list_cluster_custom_object(group, version, plural, label_selector=selector,
                                                      _preload_content=False)
        else:
            resp = objects.list_namespaced_custom_object(group, version, namespace, plural, label_selector=selector,
                                                         _preload_content=False)
    except ApiException as exc:
        err = translate_error(exc, f"list coredumps in {namespace or 'all namespaces'}", "list", "coredumps", namespace or "*")
        if isinstance(err, NotFound):
            err = NotFound("the CoreDump index is not installed in this cluster (no coredumps.coredump-webhook.io CRD)",
                           404, "NotFound")
        raise err from exc
    except urllib3.exceptions.HTTPError as exc:
        raise _unreachable(api, exc) from exc
    return list(json_body(resp).get("items") or [])


def read_coredump(api: client.ApiClient, namespace: str, name: str) -> dict:
    import urllib3

    group, version, plural = INDEX
    try:
        resp = client.CustomObjectsApi(api).get_namespaced_custom_object(group, version, namespace, plural, name,
                                                                         _preload_content=False)
    except ApiException as exc:
        raise translate_error(exc, f"coredump {namespace}/{name}", "get", "coredumps", namespace) from exc
    except urllib3.exceptions.HTTPError as exc:
        raise _unreachable(api, exc) from exc
    return json_body(resp)


def list_namespaces(api: client.ApiClient) -> list[str]:
    try:
        resp = client.CoreV1Api(api).list_namespace(_preload_content=False)
    except ApiException as exc:
        raise translate_error(exc, "list namespaces", "list", "namespaces", "*") from exc
    return [n["metadata"]["name"] for n in json_body(resp).get("items") or []]


def create_pod(api: client.ApiClient, pod: dict) -> dict:
    ns = pod["metadata"]["namespace"]
    try:
        return json_body(client.CoreV1Api(api).create_namespaced_pod(ns, client.V1Pod.model_validate(pod),
                                                                 _preload_content=False))
    except ApiException as exc:
        raise translate_error(exc, f"create reader pod in {ns}", "create", "pods", ns) from exc


def delete_pod(api: client.ApiClient, namespace: str, name: str) -> None:
    try:
        client.CoreV1Api(api).delete_namespaced_pod(name, namespace, grace_period_seconds=0, _preload_content=False)
    except ApiException as exc:
        if exc.status != 404:
            raise translate_error(exc, f"delete pod {namespace}/{name}", "delete", "pods", namespace) from exc


def wait_pod_running(api: client.ApiClient, namespace: str, name: str, *, timeout: float = 120.0,
                     sleep: Callable[[float], None] = time.sleep) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        obj = read_pod(api, namespace, name)
        phase = (obj.get("status") or {}).get("phase")
        if phase == "Running":
            return obj
        if phase in ("Failed", "Succeeded"):
            raise KubeError(f"reader pod {namespace}/{name} ended ({phase})")
        if time.monotonic() >= deadline:
            raise KubeError(f"reader pod {namespace}/{name} not running after {timeout:.0f}s (phase {phase})")
        sleep(1.0)


# --- the page's RBAC rule --------------------------------------------------------------------


@dataclass(frozen=True)
class AccessRule:
    """What a user must be allowed to do in a namespace to see its cores.

    A core is the memory of a process: whoever may exec into the namespace's pods could read
    that memory anyway, so the default asks for ``create pods/exec`` (what ``coredump list``
    needs too).
    """

    verb: str = "create"
    resource: str = "pods"
    subresource: str = "exec"


def token_review(api: client.ApiClient, token: str) -> dict | None:
    """TokenReview: the user behind a bearer token, or None when it is not authenticated."""
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
    try:
        resp = client.AuthenticationV1Api(api).create_token_review(client.V1TokenReview.model_validate(body),
                                                                   _preload_content=False)
    except ApiException as exc:
        raise translate_error(exc, "TokenReview", "create", "tokenreviews", "-") from exc
    status = json_body(resp).get("status") or {}
    return status.get("user") if status.get("authenticated") else None


def subject_access_review(api: client.ApiClient, user: dict, namespace: str, rule: AccessRule) -> bool:
    attrs = {"namespace": namespace, "verb": rule.verb, "resource": rule.resource}
    if rule.subresource:
        attrs["subresource"] = rule.subresource
    spec = {"resourceAttributes": attrs, "user": user.get("username", ""), "groups": user.get("groups") or []}
    if user.get("uid"):
        spec["uid"] = user["uid"]
    if user.get("extra"):
        spec["extra"] = user["extra"]
    body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}
    try:
        resp = client.AuthorizationV1Api(api).create_subject_access_review(
            client.V1SubjectAccessReview.model_validate(body), _preload_content=False)
    except ApiException as exc:
        raise translate_error(exc, "SubjectAccessReview", "create", "subjectaccessreviews", "-") from exc
    return bool((json_body(resp).get("status") or {}).get("allowed"))


def make_authorizer(api: client.ApiClient, rule: AccessRule = AccessRule()) -> Callable[[str, str], bool]:
    """``authorize(token, namespace)`` for the page: TokenReview then SubjectAccessReview.

    The page's service account needs ``create`` on tokenreviews and subjectaccessreviews
    (the ``system:auth-delegator`` ClusterRole). Any API failure denies.
    """

    def authorize(token: str, namespace: str) -> bool:
        if not token:
            return False
        try:
            user = token_review(api, token)
            if not user:
                return False
            return subject_access_review(api, user, namespace, rule)
        except KubeError:
            return False

    return authorize


def annotate_pod(api: client.ApiClient, namespace: str, name: str, annotations: dict[str, str | None]) -> dict:
    """JSON merge PATCH of the pod's annotations (``coredump gcore``: only 'patch' on the pod)."""
    body = {"metadata": {"annotations": annotations}}
    try:
        resp = client.CoreV1Api(api).patch_namespaced_pod(
            name, namespace, body, _content_type="application/merge-patch+json", _preload_content=False)
    except ApiException as exc:
        raise translate_error(exc, f"annotate pod {namespace}/{name}", "patch", "pods", namespace) from exc
    return json_body(resp)


def list_events(api: client.ApiClient, namespace: str, field_selector: str) -> list[dict]:
    """Events of a namespace matching ``field_selector`` (e.g. involvedObject.name=POD,reason=R)."""
    try:
        resp = client.CoreV1Api(api).list_namespaced_event(namespace, field_selector=field_selector,
                                                           _preload_content=False)
    except ApiException as exc:
        raise translate_error(exc, f"list events in {namespace}", "list", "events", namespace) from exc
    return list(json_body(resp).get("items") or [])
