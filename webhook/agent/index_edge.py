"""The crash index's only I/O: CoreDump writes through the kubernetes client.

The agent may ``create``, ``update`` and ``delete`` CoreDumps and nothing else (agent-rbac.yaml).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: The CoreDump resource the agent writes (charts/coredump-webhook/crds/; agent-rbac.yaml).
GROUP = "coredump-webhook.io"
VERSION = "v1alpha1"
PLURAL = "coredumps"


class ApiFailure(Exception):
    """A write failed: ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class CustomObjectsEdge:
    """create/replace through the kubernetes client (the only I/O of the index)."""

    def __init__(self, api_client: Any, timeout: float = 10.0) -> None:
        from kubernetes import client

        self.api = client.CustomObjectsApi(api_client)
        self.timeout = timeout

    def _call(self, fn: Callable[..., Any], *args: Any) -> dict:
        from kubernetes.client.exceptions import ApiException

        try:
            return fn(GROUP, VERSION, *args, _request_timeout=self.timeout)
        except ApiException as exc:
            raise ApiFailure(exc.status or 0, str(exc.reason)) from None
        except Exception as exc:  # noqa: BLE001 - connection refused, timeout, TLS...
            raise ApiFailure(0, str(exc)) from None

    def create(self, namespace: str, body: dict) -> dict:
        return self._call(self.api.create_namespaced_custom_object, namespace, PLURAL, body)

    def replace(self, namespace: str, name: str, body: dict) -> dict:
        return self._call(self.api.replace_namespaced_custom_object, namespace, PLURAL, name, body)

    def delete(self, namespace: str, name: str) -> dict:
        """Only for a record this agent wrote whose core retention deleted (agent-rbac.yaml)."""
        return self._call(self.api.delete_namespaced_custom_object, namespace, PLURAL, name)
