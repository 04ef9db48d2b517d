"""Pod templates of workloads, so a bad pattern is refused at ``kubectl apply``.

Without this check an invalid annotation on a Deployment's template surfaces only as a
ReplicaSet that silently fails to create pods. Workloads themselves are never patched.
"""

from __future__ import annotations

from typing import Any

from webhook import constants as C

#: kind -> (API groups it is served from, path from the object to its pod template).
WORKLOAD_KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "Deployment": (("apps",), ("spec", "template")),
    "StatefulSet": (("apps",), ("spec", "template")),
    "DaemonSet": (("apps",), ("spec", "template")),
    "ReplicaSet": (("apps",), ("spec", "template")),
    "Job": (("batch",), ("spec", "template")),
    "CronJob": (("batch",), ("spec", "jobTemplate", "spec", "template")),
    "ReplicationController": (("",), ("spec", "template")),
    "PodTemplate": (("",), ("template",)),
}


def is_workload(group: str, kind: str) -> bool:
    """Whether ``group``/``kind`` names a workload whose pod template we check."""
    entry = WORKLOAD_KINDS.get(kind)
    return entry is not None and group in entry[0]


def pod_template(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The ``PodTemplateSpec`` of a workload object, or None when it has none."""
    entry = WORKLOAD_KINDS.get(kind)
    if entry is None:
        return None
    node: Any = obj
    for key in entry[1]:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node if isinstance(node, dict) else None


def synthetic_pod(template: dict[str, Any], namespace: str) -> dict[str, Any]:
    """A Pod as the workload's controller would create it from ``template`` (shallow: not copied).

    The mutation only reads it, so sharing the template's dicts is safe and cheap.
    """
    metadata = template.get("metadata")
    metadata = dict(metadata) if isinstance(metadata, dict) else {}
    if namespace:
        metadata["namespace"] = namespace
    spec = template.get("spec")
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec if isinstance(spec, dict) else {}}


def misplaced_annotation(obj: dict[str, Any], template: dict[str, Any] | None, kind: str) -> str | None:
    """A warning when the pattern sits on the workload itself, where it has no effect."""
    on_workload = _pattern_keys(obj.get("metadata"))
    if not on_workload or _pattern_keys(template.get("metadata") if template else None):
        return None
    where = ".".join(WORKLOAD_KINDS[kind][1]) if kind in WORKLOAD_KINDS else "spec.template"
    return f"{on_workload[0]} on the {kind} itself has no effect: set it in {where}.metadata.annotations"


def _pattern_keys(metadata: Any) -> list[str]:
    """The pattern annotations ``metadata`` carries, in the order ACS, ECI."""
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    if not isinstance(annotations, dict):
        return []
    return [key for key in C.PATTERN_ANNOTATIONS if key in annotations]
