"""The thin Kubernetes edge of the inspection CLI and the page.

Every call uses the *user's* credentials (kubeconfig or the page's bearer token), so the API's
RBAC decides what they see. Responses are read as raw JSON dicts (``_preload_content=False``)
and handed to the pure modules; API errors become :class:`KubeError` with a message that names
what is missing. Tested against recorded real responses served over a real socket.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from webhook import kubeclient
from webhook.inspect.ephemeral import InspectError, ephemeral_state
from webhook.inspect.listing import core_path_command, wrapper_cat_command

STREAM_STDOUT, STREAM_STDERR, STREAM_ERROR = 1, 2, 3


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


def _translate(exc: ApiException, what: str, verb: str, resource: str, namespace: str) -> KubeError:
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


def _json(resp) -> dict:
    return json.loads(resp.data)


def read_pod(api: client.ApiClient, namespace: str, name: str) -> dict:
    try:
        return _json(client.CoreV1Api(api).read_namespaced_pod(name, namespace, _preload_content=False))
    except ApiException as exc:
        err = _translate(exc, f"pod {namespace}/{name}", "get", "pods", namespace)
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
        raise _translate(exc, f"list pods in {namespace or 'all namespaces'}", "list", "pods", namespace or "*") from exc
    return list(_json(resp).get("items") or [])


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
        err = _translate(exc, f"list coredumps in {namespace or 'all namespaces'}", "list", "coredumps", namespace or "*")
        if isinstance(err, NotFound):
            err = NotFound("the CoreDump index is not installed in this cluster (no coredumps.coredump-webhook.io CRD)",
                           404, "NotFound")
        raise err from exc
    except urllib3.exceptions.HTTPError as exc:
        raise _unreachable(api, exc) from exc
    return list(_json(resp).get("items") or [])


def read_coredump(api: client.ApiClient, namespace: str, name: str) -> dict:
    import urllib3

    group, version, plural = INDEX
    try:
        resp = client.CustomObjectsApi(api).get_namespaced_custom_object(group, version, namespace, plural, name,
                                                                         _preload_content=False)
    except ApiException as exc:
        raise _translate(exc, f"coredump {namespace}/{name}", "get", "coredumps", namespace) from exc
    except urllib3.exceptions.HTTPError as exc:
        raise _unreachable(api, exc) from exc
    return _json(resp)


def list_namespaces(api: client.ApiClient) -> list[str]:
    try:
        resp = client.CoreV1Api(api).list_namespace(_preload_content=False)
    except ApiException as exc:
        raise _translate(exc, "list namespaces", "list", "namespaces", "*") from exc
    return [n["metadata"]["name"] for n in _json(resp).get("items") or []]


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
    if exc.status in (400, 415, 422) and (
        details.get("kind") == "EphemeralContainers" or "unknown field" in msg or "not registered" in msg
        or "EphemeralContainers" in msg
    ):
        return Unsupported(
            "ephemeral containers are not supported in this form by this cluster (it predates "
            f"Kubernetes 1.23's Pod-shaped subresource; server said: {msg})", exc.status, body.get("reason", ""))
    return _translate(exc, f"add debug container to {namespace}/{pod}", "patch", "pods/ephemeralcontainers", namespace)


def patch_ephemeral(api: client.ApiClient, namespace: str, pod: str, body: dict) -> dict:
    """Strategic merge PATCH of pods/ephemeralcontainers (see ephemeral.py for why)."""
    try:
        resp = client.CoreV1Api(api).patch_namespaced_pod_ephemeralcontainers(
            pod, namespace, body, _content_type="application/strategic-merge-patch+json", _preload_content=False)
    except ApiException as exc:
        raise explain_ephemeral_error(exc, namespace, pod) from exc
    return _json(resp)


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


def exec_stream(api: client.ApiClient, namespace: str, pod: str, container: str, command: list[str],
                *, timeout: float = 3600.0) -> Iterator[bytes]:
    """Run ``command`` in a container over the websocket exec API and yield its stdout.

    Nothing is buffered beyond one websocket frame. A non-zero exit or an exec failure (no such
    binary, 403) raises :class:`KubeError` after the output already yielded.
    """
    from kubernetes.stream import stream, ws_client

    core = client.CoreV1Api(api)
    what = f"exec in {namespace}/{pod} -c {container}"
    try:
        ws = stream(core.connect_get_namespaced_pod_exec, pod, namespace, command=command, container=container,
                    stderr=True, stdin=False, stdout=True, tty=False, binary=True, _preload_content=False)
    except ApiException as exc:
        # The websocket client reports a refused upgrade as status 0 "Handshake status 403 ...".
        m = re.search(r"Handshake status (\d{3})", str(exc.reason or ""))
        if exc.status == 0 and m:
            exc.status = int(m.group(1))
        raise _translate(exc, what, "create", "pods/exec", namespace) from exc
    # stream() cannot pass capture_all=False: stop the client keeping a copy of everything read
    # (a multi-GiB core would otherwise end up in memory).
    if hasattr(ws_client, "_IgnoredIO"):
        ws._all = ws_client._IgnoredIO()
    stderr = b""
    error = b""
    deadline = time.monotonic() + timeout
    try:
        while ws.is_open() and time.monotonic() < deadline:
            ws.update(timeout=1)
            out = ws.read_channel(STREAM_STDOUT)
            if out:
                yield out
            stderr += ws.read_channel(STREAM_STDERR)[-4096:]
            error += ws.read_channel(STREAM_ERROR)
        if out := ws.read_channel(STREAM_STDOUT):
            yield out
        error += ws.read_channel(STREAM_ERROR)
    finally:
        ws.close()
    status = {}
    if error:
        try:
            status = json.loads(error)
        except ValueError:
            status = {"status": "Failure", "message": error.decode(errors="replace")}
    if status.get("status") == "Failure":
        detail = (status.get("message") or "") + (f"; stderr: {stderr.decode(errors='replace').strip()}" if stderr.strip() else "")
        raise KubeError(f"{what}: {detail}", 0, status.get("reason", ""))


def exec_output(api: client.ApiClient, namespace: str, pod: str, container: str, command: list[str]) -> bytes:
    return b"".join(exec_stream(api, namespace, pod, container, command))


@dataclass
class ExecSource:
    """A core in a pod as a :class:`~webhook.inspect.download.ByteSource`."""

    api: client.ApiClient
    namespace: str
    pod: str
    container: str
    path: str
    #: The coredump wrapper's path in the container: read through its cat mode (no shell or
    #: tail needed). "" = ``tail -c +N``.
    wrapper: str = ""

    def read_from(self, offset: int) -> Iterator[bytes]:
        cmd = wrapper_cat_command(self.path, offset, self.wrapper) if self.wrapper else core_path_command(self.path, offset)
        return exec_stream(self.api, self.namespace, self.pod, self.container, cmd)


def create_pod(api: client.ApiClient, pod: dict) -> dict:
    ns = pod["metadata"]["namespace"]
    try:
        return _json(client.CoreV1Api(api).create_namespaced_pod(ns, client.V1Pod.model_validate(pod),
                                                                 _preload_content=False))
    except ApiException as exc:
        raise _translate(exc, f"create reader pod in {ns}", "create", "pods", ns) from exc


def delete_pod(api: client.ApiClient, namespace: str, name: str) -> None:
    try:
        client.CoreV1Api(api).delete_namespaced_pod(name, namespace, grace_period_seconds=0, _preload_content=False)
    except ApiException as exc:
        if exc.status != 404:
            raise _translate(exc, f"delete pod {namespace}/{name}", "delete", "pods", namespace) from exc


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
        raise _translate(exc, "TokenReview", "create", "tokenreviews", "-") from exc
    status = _json(resp).get("status") or {}
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
        raise _translate(exc, "SubjectAccessReview", "create", "subjectaccessreviews", "-") from exc
    return bool((_json(resp).get("status") or {}).get("allowed"))


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
        raise _translate(exc, f"annotate pod {namespace}/{name}", "patch", "pods", namespace) from exc
    return _json(resp)


def list_events(api: client.ApiClient, namespace: str, field_selector: str) -> list[dict]:
    """Events of a namespace matching ``field_selector`` (e.g. involvedObject.name=POD,reason=R)."""
    try:
        resp = client.CoreV1Api(api).list_namespaced_event(namespace, field_selector=field_selector,
                                                           _preload_content=False)
    except ApiException as exc:
        raise _translate(exc, f"list events in {namespace}", "list", "events", namespace) from exc
    return list(_json(resp).get("items") or [])
