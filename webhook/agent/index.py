"""The crash index's object: one ``CoreDump`` (coredump-webhook.io/v1alpha1) per core.

The object is built by pure functions from the crash summary (what the Event gets, signature
included), only for a crash whose pod the agent verified; :class:`~webhook.agent.index_writer.IndexWriter`
is the edge that writes it, off the crash path. Objects stay small: the top frames only, no
backtrace.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from webhook import digest as digests
from webhook.agent.index_edge import GROUP, VERSION
from webhook.agent.metadata import iso_time

KIND = "CoreDump"
LABEL_SIGNATURE = "coredump-webhook.io/signature"
LABEL_WORKLOAD = "coredump-webhook.io/workload"
LABEL_POD = "coredump-webhook.io/pod"
LABEL_NODE = "coredump-webhook.io/node"
LABEL_KIND = "coredump-webhook.io/kind"
#: Frames kept in an object (the rest stays in the core's metadata file).
TOP_FRAMES = 5

_LABEL_VALUE = re.compile(r"[^A-Za-z0-9._-]")
_DNS = re.compile(r"[^a-z0-9-]")


def verified_namespace(summary: dict) -> str | None:
    """The namespace a CoreDump may be filed in, or None: the one place that decides.

    Only a crash whose pod identity the agent verified gets one: its namespace and pod come from
    the pod watch (``identity: verified``, webhook/agent/identity.py), never from the crashing
    process. An unverified core is never named in a namespace it may not belong to.
    """
    if summary.get("identity") != "verified" or not summary.get("registered"):
        return None
    ns, pod = summary.get("namespace"), summary.get("pod")
    if not ns or not pod or not summary.get("pod_uid"):
        return None
    return str(ns)


def label_value(text: str) -> str:
    """A valid label value (<= 63 of [A-Za-z0-9._-], alphanumeric at both ends)."""
    value = _LABEL_VALUE.sub("_", text)[:63]
    return value.strip("._-")


def workload_of(summary: dict) -> tuple[str, str] | None:
    """(kind, name) of the workload that owns the pod: a ReplicaSet with the pod-template-hash
    suffix is its Deployment's; else the controller owner as the pod watch saw it."""
    owner = summary.get("owner") or ""
    kind, _, name = str(owner).partition("/")
    if not kind or not name:
        return None
    labels = summary.get("labels") or {}
    pth = labels.get("pod-template-hash") if isinstance(labels, dict) else None
    if kind == "ReplicaSet" and pth and name.endswith("-" + pth):
        return "Deployment", name[: -len(pth) - 1]
    return kind, name


def coredump_name(summary: dict) -> str:
    """Deterministic (a retried create finds its own object): the pod and the core's digest."""
    pod = re.sub(r"-+", "-", _DNS.sub("-", str(summary.get("pod") or "pod").lower())).strip("-") or "pod"
    digest = digests.hex_part(digests.of_metadata(summary)) or hashlib.sha256(
        f"{summary.get('pod_uid')}/{summary.get('global_pid')}/{summary.get('time')}/{summary.get('path')}".encode()
    ).hexdigest()
    return f"{pod[:200]}-{str(digest)[:12]}"


#: The CRD's maxLength of the string fields (the object must never be refused for a long value).
_MAX = {"podUID": 64, "containerID": 128, "image": 1024, "exe": 4096, "comm": 64, "signalName": 16,
        "truncatedReason": 256, "digest": digests.MAX_LENGTH, "signature": 64, "buildID": 128}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def volume_of(path: str, container: str | None, view: Any) -> dict:
    """The pod volume holding ``path`` (as the container sees it): the mount of ``container``
    with the longest mountPath above it; {"volume", "volumeType", "claim"} or {}."""
    if view is None or not path or not container:
        return {}
    best = ("", "")
    for mount_path, volume in (getattr(view, "mount_names", {}) or {}).get(container, []):
        root = mount_path.rstrip("/") or "/"
        if (path == root or path.startswith(root.rstrip("/") + "/")) and len(root) > len(best[0]):
            best = (root, volume)
    if not best[1]:
        return {}
    kind, claim = (getattr(view, "volumes", {}) or {}).get(best[1], ("", ""))
    return {k: v for k, v in {"volume": best[1], "volumeType": kind, "claim": claim}.items() if v}


#: spec field -> the summary's key, for the counts (kept when a non-negative int).
_NUMBERS = (("pid", "pid"), ("uid", "uid"), ("gid", "gid"), ("signal", "signal"), ("size", "size"),
            ("storedSize", "stored_size"))
#: spec field -> the summary's key, for the strings (kept when set, cut to :data:`_MAX`).
_STRINGS = (("podUID", "pod_uid"), ("container", "container"), ("containerID", "container_id"), ("node", "node"),
            ("image", "image"), ("exe", "exe"), ("comm", "comm"), ("signalName", "signal_name"),
            ("compression", "compression"), ("truncatedReason", "truncated_reason"))
#: The compressions the CRD knows (any other is left out).
_COMPRESSIONS = (None, "none", "zstd")


def _labels(summary: dict, kind: str, workload: tuple[str, str] | None) -> dict[str, str]:
    labels = {LABEL_POD: label_value(str(summary["pod"])), LABEL_KIND: kind}
    if summary.get("node"):
        labels[LABEL_NODE] = label_value(str(summary["node"]))
    if summary.get("signature"):
        labels[LABEL_SIGNATURE] = str(summary["signature"])[:16]
    if workload:
        labels[LABEL_WORKLOAD] = label_value(f"{workload[0].lower()}.{workload[1]}")
    return labels


def _location(summary: dict, view: Any) -> dict:
    """Where the core lies: the pod (with its volume) or the node, its sysroot and symbols."""
    location = {k: v for k, v in {
        "kind": "pod" if summary.get("destination") == "pod" else "node",
        "path": str(summary.get("path") or "")[:4096],
        "sysroot": str(summary.get("sysroot") or "")[:4096],
        "symbolsStore": str(summary.get("symbols_store") or "")[:4096],
    }.items() if v}
    if location["kind"] == "pod":
        location.update(volume_of(str(summary.get("path") or ""), summary.get("container"), view))
    return location


def _optional_fields(summary: dict) -> dict[str, Any]:
    """The strings and counts the summary has, in the CRD's bounds."""
    optional = {field: summary.get(src) for field, src in _STRINGS}
    optional.update(digest=digests.of_metadata(summary), signature=summary.get("signature"),
                    buildID=summary.get("build_id"))
    out: dict[str, Any] = {k: str(v)[:_MAX.get(k, 253)] for k, v in optional.items() if v}
    for key, src in _NUMBERS:
        value = _int(summary.get(src))
        if value is not None and value >= 0:
            out[key] = value
    if "truncated" in summary:
        out["truncated"] = bool(summary.get("truncated"))
    return out


def _frames_and_owner(frames: list[str], workload: tuple[str, str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if frames:
        out["topFrames"] = frames
        out["frames"] = " < ".join(frames[:3])[:512]
    if workload:
        out["owner"] = {"kind": workload[0][:63], "name": workload[1][:253]}
    return out


def build_coredump(summary: dict, now: float, view: Any = None) -> dict | None:
    """The CoreDump for a crash summary, or None when it gets none (unverified, nothing written).

    ``view``: the pod watch's view of the pod (its volumes say where a pod-volume core lives)."""
    ns = verified_namespace(summary)
    if ns is None or summary.get("outcome") not in ("written", "partial") or not summary.get("path"):
        return None
    kind = "snapshot" if summary.get("gcore") else "crash"
    frames = [str(f)[:256] for f in (summary.get("signature_frames") or [])[:TOP_FRAMES]]
    workload = workload_of(summary)
    when = summary.get("time") or now
    spec: dict[str, Any] = {"kind": kind, "pod": str(summary["pod"])[:253], "time": iso_time(float(when)),
                            "location": _location(summary, view)}
    spec.update(_optional_fields(summary))
    spec.update(_frames_and_owner(frames, workload))
    if spec.get("compression") not in _COMPRESSIONS:
        spec.pop("compression")
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": coredump_name(summary), "namespace": ns, "labels": _labels(summary, kind, workload)},
        "spec": spec,
        "status": {"state": "Present", "count": 1, "lastSeen": iso_time(now)},
    }


def quota_key(body: dict) -> tuple[str, str, str, str]:
    """Crashes counted together: namespace, kind, signature and workload (else pod)."""
    labels = body["metadata"]["labels"]
    return (body["metadata"]["namespace"], labels[LABEL_KIND], labels.get(LABEL_SIGNATURE, ""),
            labels.get(LABEL_WORKLOAD) or labels[LABEL_POD])
