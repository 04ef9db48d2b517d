"""The API server's pods as a node agent sees them: a list, then a watch that streams changes.

:class:`PodApi` plays the part of kube-apiserver for ``/api/v1/pods`` on a
:class:`tests.kube_apiserver.FakeApiServer` (a real socket, the real kubernetes client in
the agent): the first request of each watcher gets the list (``PodList`` with a
resourceVersion, as recorded in ``tests/recorded/agent/podlist-node-3.json``), every
``watch=true`` request gets the ``MODIFIED``/``DELETED`` events after its resourceVersion,
waiting for one the way a real watch stream does (long poll), so the agent learns a pod's
container IDs as soon as the test node (tests/runc_support.py) starts a container. The pods are
the admitted pod objects with a ``status`` filled like the kubelet's. ``down`` answers 503:
the API server is unreachable.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from typing import Any

from tests.kube_apiserver import FakeApiServer, Recorded

#: How long a watch request waits for a change before the stream ends (the agent reconnects).
WATCH_WAIT_SECONDS = 2.0


class PodApi:
    """Pods by UID with a resourceVersion per change; serves list and watch on ``server``."""

    def __init__(self, server: FakeApiServer) -> None:
        self.server = server
        self._cond = threading.Condition()
        self._version = 1000
        self._pods: dict[str, tuple[int, str, dict]] = {}  # uid -> (version, type, pod)
        self.down = False
        server.route("GET", "/api/v1/pods", _Dynamic(self))
        self.events: list[dict] = []

    def route_events(self, *namespaces: str) -> None:
        """Accept Event POSTs into these namespaces (201, the object echoed)."""
        for ns in namespaces:
            self.server.route("POST", f"/api/v1/namespaces/{ns}/events", _Echo(self, ns))

    # --- what the test does ----------------------------------------------------------------
    def set_pod(self, pod: dict[str, Any]) -> None:
        with self._cond:
            self._version += 1
            pod = copy.deepcopy(pod)
            pod["metadata"]["resourceVersion"] = str(self._version)
            self._pods[pod["metadata"]["uid"]] = (self._version, "MODIFIED", pod)
            self._cond.notify_all()

    def container_started(self, pod: dict[str, Any], name: str, container_id: str) -> None:
        """What the kubelet reports once a container runs: its ID in the pod's status."""
        with self._cond:
            current = copy.deepcopy(self._pods.get(pod["metadata"]["uid"], (0, "", pod))[2])
        status = current.setdefault("status", {"phase": "Running"})
        status["phase"] = "Running"
        key = "initContainerStatuses" if name in {c["name"] for c in current["spec"].get("initContainers") or []} \
            else "containerStatuses"
        entries = [s for s in status.get(key) or [] if s.get("name") != name]
        image = next(c["image"] for c in (current["spec"].get("initContainers") or []) + current["spec"]["containers"]
                     if c["name"] == name)
        entries.append({"name": name, "image": image, "containerID": f"containerd://{container_id}",
                        "state": {"running": {"startedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}},
                        "ready": True, "restartCount": 0})
        status[key] = entries
        self.set_pod(current)

    def posted_events(self) -> list[dict]:
        return list(self.events)

    # --- what the server answers -----------------------------------------------------------
    def _list(self) -> bytes:
        with self._cond:
            items = [p for _, kind, p in self._pods.values() if kind != "DELETED"]
            doc = {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": str(self._version)},
                   "items": items}
        return json.dumps(doc).encode()

    def _watch(self, since: int) -> bytes:
        deadline = time.monotonic() + WATCH_WAIT_SECONDS
        with self._cond:
            while True:
                changed = sorted((v, kind, p) for v, kind, p in ((v, k, p) for v, k, p in self._pods.values())
                                 if v > since)
                if changed or self.down:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        return b"".join(json.dumps({"type": kind, "object": p}).encode() + b"\n" for _, kind, p in changed)


class _Dynamic(Recorded):
    """``GET /api/v1/pods``: the list, or a watch, decided by the request's query."""

    def __init__(self, api: PodApi) -> None:
        super().__init__(200, {})
        self.api = api

    @property
    def status(self) -> int:  # type: ignore[override]
        return 503 if self.api.down else 200

    @status.setter
    def status(self, value: int) -> None:
        pass

    def bytes(self) -> bytes:
        if self.api.down:
            return json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 503,
                               "reason": "ServiceUnavailable", "message": "the server is currently unable"}).encode()
        req = [r for r in self.api.server.requests if r["path"] == "/api/v1/pods"][-1]
        query = req["query"]
        if query.get("watch", [""])[0].lower() in ("true", "1"):
            return self.api._watch(int(query.get("resourceVersion", ["0"])[0] or 0))
        return self.api._list()


class _Echo(Recorded):
    def __init__(self, api: PodApi, namespace: str) -> None:
        super().__init__(201, {})
        self.api = api
        self.namespace = namespace

    def bytes(self) -> bytes:
        req = [r for r in self.api.server.requests
               if r["method"] == "POST" and r["path"] == f"/api/v1/namespaces/{self.namespace}/events"][-1]
        body = json.loads(req["body"] or b"{}")
        self.api.events.append(body)
        return json.dumps({**body, "metadata": {**body.get("metadata", {}), "name": "ev-1"}}).encode()
