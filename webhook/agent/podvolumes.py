"""Which storage a pod's directory lives on, as the API server describes the pod (pure).

A killed agent's leftover in a pod's volume can be reached again only through a live process
that mounts that volume (webhook/agent/reach.py). The crashed container may be gone while
another container still mounts the same storage: another pod on the same PersistentVolumeClaim
(same namespace and ``claimName``), the same NFS export (server and path), the same hostPath on
this node, or a sibling container of the same pod on one of its volumes (an emptyDir the webhook
also gave the sidecar). The journal entry records the directory's storage as a *source* key and
the directory's path inside that storage; recovery translates that path into any other
container's mounts of the same source.

Also here: the webhook's ``coredump-webhook.io/unwritable`` annotation, read per container.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Mount:
    """One volumeMount of a container, with the storage behind it."""

    mount_path: str  # normalized, absolute
    source: str  # "pvc:<ns>/<claim>", "nfs:<server>:<path>", "hostPath:<path>", "pod:<uid>/<volume>"
    sub_path: str = "/"  # normalized, absolute, inside the volume
    read_only: bool = False


def normalize(path: str) -> str:
    """``/data/./dump-a/`` -> ``/data/dump-a`` (as the kubelet mounts it)."""
    return posixpath.normpath("/" + (path or "").lstrip("/")).replace("//", "/")


def _within(path: str, parent: str) -> str | None:
    """``path`` relative to ``parent`` ("" when equal), or None when it is not below it."""
    if parent == "/":
        return path.lstrip("/")
    if path == parent:
        return ""
    if path.startswith(parent + "/"):
        return path[len(parent) + 1:]
    return None


def volume_source(volume: dict[str, Any], namespace: str, pod_uid: str) -> str | None:
    """The storage key of one pod volume (None: not storage a core can be in)."""
    if not isinstance(volume, dict) or not volume.get("name"):
        return None
    claim = volume.get("persistentVolumeClaim")
    if isinstance(claim, dict) and claim.get("claimName"):
        return f"pvc:{namespace}/{claim['claimName']}"
    nfs = volume.get("nfs")
    if isinstance(nfs, dict) and nfs.get("server") and nfs.get("path"):
        return f"nfs:{nfs['server']}:{normalize(nfs['path'])}"
    host = volume.get("hostPath")
    if isinstance(host, dict) and host.get("path"):
        return f"hostPath:{normalize(host['path'])}"
    if any(k in volume for k in ("configMap", "secret", "downwardAPI", "projected", "image")):
        return None  # read-only by nature
    return f"pod:{pod_uid}/{volume['name']}"  # emptyDir, CSI, ephemeral...: shared within the pod


def volume_mounts(pod: dict[str, Any]) -> dict[str, tuple[Mount, ...]]:
    """Container name -> its mounts (subPathExpr ones left out: the kubelet expands them)."""
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    sources = {}
    for v in spec.get("volumes") or []:
        src = volume_source(v, meta.get("namespace", ""), meta.get("uid", ""))
        if src:
            sources[v["name"]] = src
    out: dict[str, tuple[Mount, ...]] = {}
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for c in spec.get(key) or []:
            if not isinstance(c, dict) or not c.get("name"):
                continue
            mounts = []
            for m in c.get("volumeMounts") or []:
                if not isinstance(m, dict) or m.get("name") not in sources or not m.get("mountPath") \
                        or m.get("subPathExpr"):
                    continue
                mounts.append(Mount(normalize(m["mountPath"]), sources[m["name"]], normalize(m.get("subPath") or "/"),
                                    bool(m.get("readOnly"))))
            out[c["name"]] = tuple(mounts)
    return out


def claim_of(mounts: Iterable[Mount], directory: str) -> dict[str, str] | None:
    """Where ``directory`` (inside the container) lies: ``{"source", "path"}`` (the path inside
    the storage) under the deepest mount holding it; None when no mount does (the root fs)."""
    directory = normalize(directory)
    best: tuple[Mount, str] | None = None
    for m in mounts:
        rel = _within(directory, m.mount_path)
        if rel is not None and (best is None or len(m.mount_path) > len(best[0].mount_path)):
            best = (m, rel)
    if best is None:
        return None
    m, rel = best
    return {"source": m.source, "path": normalize(posixpath.join(m.sub_path, rel))}


def translate(claim: dict[str, Any], mounts: Iterable[Mount]) -> list[str]:
    """The claim's directory as a container with these mounts sees it (deepest mount first)."""
    source, path = claim.get("source"), normalize(str(claim.get("path") or "/"))
    found = []
    for m in mounts:
        if m.source != source:
            continue
        rel = _within(path, m.sub_path)
        if rel is not None:
            found.append((len(m.mount_path), normalize(posixpath.join(m.mount_path, rel))))
    return [d for _, d in sorted(found, reverse=True)]


def unwritable_for(annotation: str | None, container: str | None) -> str | None:
    """The webhook's read-only reason that concerns ``container`` (None: none).

    The webhook writes ``container <name>: volume <v> is read-only at <path>`` per target
    container, joined by ``; ``; a reason without that prefix concerns the whole pod.
    """
    if not annotation:
        return None
    reasons = [r.strip() for r in annotation.split("; ") if r.strip()]
    general = None
    for reason in reasons:
        if reason.startswith("container ") and ":" in reason:
            if container and reason[len("container "):].split(":", 1)[0] == container:
                return reason
        elif general is None:
            general = reason
    return general
