"""A ``CoreDumped`` Kubernetes Event on the crashed pod, posted off the crash path.

The body is built by a pure function; the kubernetes client is only the edge that POSTs it
(``/api/v1/namespaces/<ns>/events``). A background thread does the posting, so an unreachable
API server never delays the helper's answer.
"""

from __future__ import annotations

from typing import Any

from webhook import constants
from webhook.agent.background import BackgroundSender, SendsInBackground
from webhook.agent.metadata import iso_time

COMPONENT = "coredump-agent"
REPORTING_CONTROLLER = "coredump-webhook.io/agent"


def build_event(info: dict[str, Any], now: float) -> dict[str, Any] | None:
    """The core/v1 Event for a crash summary, or None when the crash is not a known pod's."""
    namespace, pod = info.get("namespace"), info.get("pod")
    if not namespace or not pod:
        return None
    container = info.get("container")
    sig = info.get("signal_name") or f"signal {info.get('signal')}"
    outcome = info.get("outcome", "written")
    if outcome == "written":
        what = f"core dumped to {info.get('path')} ({info.get('size')} bytes)"
    elif outcome == "partial":
        what = (f"core cut short ({info.get('truncated_reason')}): {info.get('path')} "
                f"({info.get('size')} bytes)")
    else:
        what = f"core not saved ({outcome}: {info.get('reason')})"
    if info.get("fallback_reason") and outcome in ("written", "partial"):  # a pod's core kept on the node
        detail = f" ({info['fallback_detail']})" if info.get("fallback_detail") else ""
        what += f"; kept in the node location, not the pod: {info['fallback_reason']}{detail}"
    if info.get("gcore"):  # `coredump gcore`: the CLI finds its answer by the request id
        if outcome in ("written", "partial"):
            what = f"core written to {info.get('path')} ({info.get('size')} bytes)"
        message = (f"gcore {info.get('gcore_request')} of container {container} pid {info.get('pid')}: "
                   + (what if outcome in ("written", "partial") else f"failed: {info.get('reason')}"))
    elif outcome == "dropped":  # the kernel gave up before any helper ran (kernellog.py)
        message = (f"Container {container} pid {info.get('pid')} ({info.get('comm')}) crashed but no core was "
                   f"saved: {info.get('reason')}")
    else:
        message = f"Container {container} pid {info.get('pid')} ({info.get('comm')}) killed by {sig}: {what}"
    if info.get("image"):
        message += f"; image {info['image']}"
    if info.get("signature_frames"):
        message += f"; top frames: {' < '.join(info['signature_frames'][:3])}; signature {info['signature'][:12]}"
    stamp = iso_time(now)
    involved: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "namespace": namespace, "name": pod}
    if info.get("pod_uid"):
        involved["uid"] = info["pod_uid"]
    if container:
        involved["fieldPath"] = f"spec.containers{{{container}}}"
    node = info.get("node") or ""
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{pod}.", "namespace": namespace},
        "involvedObject": involved,
        "reason": constants.EVENT_REASON_SNAPSHOT if info.get("gcore") else constants.EVENT_REASON,
        "message": message[:1024],
        "type": "Normal" if info.get("gcore") and outcome != "failed" else "Warning",
        "count": 1,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "source": {"component": COMPONENT, "host": node},
        "reportingComponent": REPORTING_CONTROLLER,
        "reportingInstance": node or COMPONENT,
    }


def post_event(api_client: Any, body: dict[str, Any], timeout: float = 10.0) -> Any:
    """POST ``body`` with the kubernetes client (the only I/O here)."""
    from kubernetes import client

    return client.CoreV1Api(api_client).create_namespaced_event(
        body["metadata"]["namespace"], client.CoreV1Event.model_validate(body), _request_timeout=timeout)


class EventPoster(SendsInBackground):
    """Queues crash summaries and posts their Events from a background thread."""

    def __init__(self, api_client: Any, *, clock=None, timeout: float = 10.0) -> None:
        import time

        self.api_client = api_client
        self.timeout = timeout
        self.clock = clock or time.time
        self._sender = BackgroundSender("events", self._post)

    def _post(self, info: dict[str, Any]) -> None:
        body = build_event(info, self.clock())
        if body is not None:
            post_event(self.api_client, body, self.timeout)

    def submit(self, info: dict[str, Any]) -> bool:
        if not info.get("namespace") or not info.get("pod"):
            return False
        return super().submit(info)



def make_event_poster(enabled: bool = True) -> EventPoster | None:
    """In-cluster config, else the local kubeconfig; None when disabled or neither works."""
    if not enabled:
        return None
    from webhook.kubeclient import api_client_or_none

    api = api_client_or_none("events")
    return EventPoster(api) if api is not None else None
