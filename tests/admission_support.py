"""Shared helpers of the admission tests (test_mutation, test_review, test_workloads)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes_validate

from webhook import constants as C
from webhook.admission.mutate import mutate_pod
from webhook.admission.patch import MAX_WARNING, MutationResult, apply
from webhook.admission.settings import AdmissionSettings

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = REPO / "webhook" / "demo" / "scenarios.json"
K8S_VERSION = "1.31.0"
PATTERN = "/data/dump-a/core-%E-%p-%t"
W = C.WRAPPER_PATH


@dataclass
class Image:
    """An image config as the registry resolver returns it."""

    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)


class TableResolver:
    """A real in-test collaborator: answers from a table, records calls, fails for unknown images."""

    def __init__(self, table: dict[str, Image | Exception] | None = None) -> None:
        self.table = dict(table or {})
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, image: str, **kwargs: Any) -> Image:
        self.calls.append((image, kwargs))
        entry = self.table.get(image)
        if entry is None:
            raise LookupError(f"manifest unknown: {image}")
        if isinstance(entry, Exception):
            raise entry
        return entry


#: The resolver used for the demo scenarios' golden files: the real configs of those images' kind.
SCENARIO_IMAGES: dict[str, Image | Exception] = {
    "registry.cn-hangzhou.aliyuncs.com/acs-sample/nginx:latest": Image(
        ["/docker-entrypoint.sh"], ["nginx", "-g", "daemon off;"]
    ),
    "registry.example.com/payments/ledger@sha256:4b7c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c": Image(
        ["/usr/local/bin/ledger"], ["--config=/etc/ledger/config.yaml"]
    ),
}


def container(name: str = "app", image: str = "registry.example.com/app:1", **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": image, **extra}


def make_pod(
    containers: list[dict[str, Any]] | None = None,
    annotations: dict[str, str] | None = None,
    *,
    pattern: str | None = PATTERN,
    name: str = "app-0",
    namespace: str = "default",
    **spec: Any,
) -> dict[str, Any]:
    ann = dict(annotations or {})
    if pattern is not None:
        ann.setdefault(C.ANN_PATTERN, pattern)
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if ann:
        metadata["annotations"] = ann
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"containers": containers if containers is not None else [container()], **spec},
    }


def validate(obj: dict[str, Any]) -> None:
    """Strict schema validation of a full object (raises kubernetes_validate's ValidationError)."""
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def check_pod_invariants(pod: dict[str, Any]) -> None:
    """What the schema does not check but the API server's validation does."""
    spec = pod["spec"]
    names = [c["name"] for f in ("initContainers", "containers", "ephemeralContainers") for c in spec.get(f) or []]
    assert len(names) == len(set(names)), f"duplicate container names {names}"
    volumes = [v["name"] for v in spec.get("volumes") or []]
    assert len(volumes) == len(set(volumes)), f"duplicate volumes {volumes}"
    for f in ("initContainers", "containers"):
        for c in spec.get(f) or []:
            paths = [m["mountPath"].rstrip("/") or "/" for m in c.get("volumeMounts") or []]
            assert len(paths) == len(set(paths)), f"duplicate mount paths in {c['name']}: {paths}"
            for m in c.get("volumeMounts") or []:
                assert m["name"] in volumes, f"{c['name']} mounts unknown volume {m['name']}"
            env = [e["name"] for e in c.get("env") or []]
            ours = [n for n in env if n in C.REGISTRATION_ENV]
            assert len(ours) == len(set(ours)), f"duplicate registration env in {c['name']}: {ours}"


def mutate(pod: dict[str, Any], settings: AdmissionSettings | None = None, **kwargs: Any) -> MutationResult:
    kwargs.setdefault("namespace", pod.get("metadata", {}).get("namespace", "default"))
    result = mutate_pod(pod, settings or AdmissionSettings(), **kwargs)
    for w in result.warnings:
        assert len(w) <= MAX_WARNING, w
    return result


def mutate_apply(pod: dict[str, Any], settings: AdmissionSettings | None = None, **kwargs: Any) -> tuple[dict[str, Any], MutationResult]:
    """Mutate, apply, validate the patched pod strictly, and check the mutation is idempotent."""
    before = json.dumps(pod, sort_keys=True)
    result = mutate(pod, settings, **kwargs)
    assert result.allowed, result.message
    assert json.dumps(pod, sort_keys=True) == before, "mutate_pod changed its input"
    after = apply(pod, result.patch)
    validate(after)
    check_pod_invariants(after)
    again = mutate(after, settings, **kwargs)
    assert again.allowed and again.patch == [], "mutation is not idempotent"
    return after, result


def annotations_of(pod: dict[str, Any]) -> dict[str, str]:
    return pod["metadata"].get("annotations") or {}


def find(items: list[dict[str, Any]], name: str) -> dict[str, Any]:
    for item in items:
        if item.get("name") == name:
            return item
    raise AssertionError(f"{name} not in {[i.get('name') for i in items]}")


def load_scenarios() -> list[dict[str, Any]]:
    return json.loads(SCENARIOS.read_text())


def template(annotations: dict[str, str] | None = None, containers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"labels": {"app": "web"}}
    if annotations is not None:
        meta["annotations"] = annotations
    spec: dict[str, Any] = {"containers": containers or [container("web", command=["/web"])]}
    return {"metadata": meta, "spec": spec}


def workload(kind: str, tmpl: dict[str, Any], **meta: Any) -> dict[str, Any]:
    selector = {"matchLabels": {"app": "web"}}
    if kind == "CronJob":
        tmpl["spec"]["restartPolicy"] = "OnFailure"
        spec: dict[str, Any] = {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": tmpl}}}
    elif kind == "Job":
        tmpl["spec"]["restartPolicy"] = "Never"
        spec = {"template": tmpl}
    elif kind == "StatefulSet":
        spec = {"serviceName": "web", "selector": selector, "template": tmpl}
    elif kind == "PodTemplate":
        return {"apiVersion": "v1", "kind": kind, "metadata": {"name": "web", "namespace": "shop", **meta}, "template": tmpl}
    elif kind == "ReplicationController":
        spec = {"selector": {"app": "web"}, "template": tmpl}
    else:
        spec = {"selector": selector, "template": tmpl}
    return {
        "apiVersion": f"{GROUPS[kind]}/v1".lstrip("/"),
        "kind": kind,
        "metadata": {"name": "web", "namespace": "shop", **meta},
        "spec": spec,
    }


def review(obj: Any, kind: str, operation: str = "CREATE", group: str | None = None) -> dict[str, Any]:
    group = GROUPS.get(kind, "") if group is None else group
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "b1f0c3d2-0000-4000-8000-00000000beef",
            "kind": {"group": group, "version": "v1", "kind": kind},
            "resource": {"group": group, "version": "v1", "resource": kind.lower() + "s"},
            "namespace": "shop",
            "operation": operation,
            "userInfo": {"username": "admin"},
            "object": obj,
            "oldObject": obj if operation == "UPDATE" else None,
        },
    }


GROUPS = {"Deployment": "apps", "StatefulSet": "apps", "DaemonSet": "apps", "ReplicaSet": "apps", "Job": "batch", "CronJob": "batch",
          "ReplicationController": "", "PodTemplate": ""}
