"""The skeleton of the short-lived pods the CLI starts next to a claim (the reader pod that
fetches cores of a gone pod, the debug pod that runs gdb): one place for what both must keep.

Both mount the claim read-only as volume ``cores``, get no service account token and no service
links, never restart, and end after ``activeDeadlineSeconds`` even if the CLI dies.
"""

from __future__ import annotations

MANAGED_BY = {"app.kubernetes.io/managed-by": "coredump-webhook"}
CLAIM_ANNOTATION = "coredump-webhook.io/claim"


def claim_pod(namespace: str, name: str, claim: str, *, labels: dict[str, str], container: dict,
              deadline_seconds: int) -> dict:
    """A pod of one ``container`` that mounts ``claim`` read-only as volume ``cores``."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**labels, **MANAGED_BY},
            "annotations": {CLAIM_ANNOTATION: claim},
        },
        "spec": {
            "restartPolicy": "Never",
            "activeDeadlineSeconds": deadline_seconds,
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "containers": [container],
            "volumes": [{"name": "cores", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}],
        },
    }
