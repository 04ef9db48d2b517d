"""``coredump gcore``'s request to the node agent and its answer, through the pod's API objects.

The request is an annotation on the pod (``coredump-webhook.io/gcore-request``); the agent
answers with a CoreSnapshot Event naming the request (webhook/agent/events.py build_event).
"""

from __future__ import annotations

import json
import re
import time

from webhook import constants
from webhook.inspect import ephemeral as eph


def gcore_request(pod: dict, container: str | None, pid: int | None) -> dict:
    """What the CLI asks the agent on the pod's node (see webhook/diagnose/gcore.py)."""
    name = eph.pick_container(pod, container)
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    cid = next((c.get("containerID", "") for c in status.get("containerStatuses") or [] if c.get("name") == name), "")
    return {
        "namespace": meta.get("namespace"), "pod": meta.get("name"), "pod_uid": meta.get("uid"),
        "container": name, "container_id": cid.split("://", 1)[-1], "node": (pod.get("spec") or {}).get("nodeName"),
        "pid": pid or 1,
    }


#: What the agent's CoreSnapshot Event says (webhook/agent/events.py build_event).
_GCORE_WRITTEN = re.compile(r"core written to (?P<path>\S+) \((?P<size>\d+) bytes\)")


def gcore_annotation(request_id: str, container: str, pid: int | None, now: float) -> str:
    """The value of ``coredump-webhook.io/gcore-request`` (pid None: the container's main process)."""
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    return json.dumps({"id": request_id, "container": container, "pid": pid, "requestedAt": at},
                      separators=(",", ":"))


def gcore_answer(events: list[dict], request_id: str) -> dict | None:
    """The agent's answer to ``request_id`` among CoreSnapshot Events: {path, size} or {error}."""
    for ev in events:
        msg = ev.get("message") or ""
        if f"gcore {request_id} " not in msg:
            continue
        if m := _GCORE_WRITTEN.search(msg):
            return {"path": m["path"], "size": int(m["size"]), "message": msg}
        return {"error": msg.split(": failed: ", 1)[-1], "message": msg}
    return None


def wait_gcore(api, namespace: str, pod: str, request_id: str, *, timeout: float, poll: float = 2.0,
               sleep=None, clock=None) -> dict:
    """Poll the pod's CoreSnapshot Events until the agent answers ``request_id``."""
    from webhook.inspect import kube

    sleep, clock = sleep or time.sleep, clock or time.monotonic

    selector = f"involvedObject.name={pod},reason={constants.EVENT_REASON_SNAPSHOT}"
    deadline = clock() + timeout
    while True:
        answer = gcore_answer(kube.list_events(api, namespace, selector), request_id)
        if answer is not None:
            return answer
        if clock() >= deadline:
            raise eph.InspectError(
                f"no answer from the node agent within {timeout:.0f}s for gcore request {request_id}: is the agent "
                "running on the pod's node with --watch-pods and --gcore-requests (and its API access)?")
        sleep(poll)
