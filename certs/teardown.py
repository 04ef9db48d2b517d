"""What `helm uninstall` must remove first, and what its hooks created: `coredump certs remove`.

Helm 3 deletes a release's objects by kind, and a MutatingWebhookConfiguration comes after the
Deployment: for a moment the API server would call a webhook whose pods are gone (admitted
unchanged with failurePolicy Ignore, but after a timeout on every matching request). The chart's
pre-delete hook runs this first, so the configuration is gone before anything else. The TLS
Secret is created by the bootstrap Job, not by Helm, so Helm never deletes it: this does.
Both deletions are idempotent (already gone is fine).
"""

from __future__ import annotations

from dataclasses import dataclass

from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from webhook.certs.kube import KubeError, api_failure


@dataclass(frozen=True)
class RemoveResult:
    """Per object: "deleted" or "absent"."""

    webhook_config: str
    secret: str | None

    def describe(self) -> dict[str, str | None]:
        return {"webhookConfig": self.webhook_config, "secret": self.secret}


def _delete(action: str, call, *args: str, timeout: float) -> str:
    try:
        call(*args, _preload_content=False, _request_timeout=timeout)
    except ApiException as exc:
        if exc.status == 404:
            return "absent"
        raise api_failure(action, exc) from exc
    return "deleted"


def remove(api: k8s.ApiClient, *, namespace: str, webhook_config: str, secret: str | None,
           request_timeout: float = 15.0) -> RemoveResult:
    """Delete the MutatingWebhookConfiguration, then (unless None) the TLS Secret."""
    adm = k8s.AdmissionregistrationV1Api(api)
    config = _delete(f"deleting mutatingwebhookconfiguration {webhook_config}",
                     adm.delete_mutating_webhook_configuration, webhook_config, timeout=request_timeout)
    gone = None
    if secret:
        core = k8s.CoreV1Api(api)
        gone = _delete(f"deleting secret {namespace}/{secret}", core.delete_namespaced_secret, secret, namespace,
                       timeout=request_timeout)
    return RemoveResult(webhook_config=config, secret=gone)


__all__ = ["KubeError", "RemoveResult", "remove"]
