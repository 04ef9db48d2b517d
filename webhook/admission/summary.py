"""What a pod gets from the webhook, in words: for the demo and ``coredump review``."""

from __future__ import annotations

import json
import shlex
import textwrap
from collections.abc import Callable
from typing import Any

from webhook import constants as C
from webhook.admission.mutate import CAPABILITY
from webhook.admission.patch import apply
from webhook.admission.podspec import normalize_path
from webhook.pattern import PatternError, parse

_WIDTH = 100


def summarize(
    pod_before: dict[str, Any],
    patch: list[dict[str, Any]],
    warnings: list[str],
    *,
    allowed: bool = True,
    message: str = "",
) -> str:
    """A multi-line description of the pod after ``patch``: volume, mounts, command, capability, env."""
    meta = pod_before.get("metadata") or {}
    name = meta.get("name") or (meta.get("generateName", "") + "<generated>")
    namespace = meta.get("namespace") or ""
    kind = pod_before.get("kind") or "Pod"
    lines = [f"{kind} {namespace + '/' if namespace else ''}{name}"]
    if not allowed:
        lines.append("  REFUSED: " + message)
    elif not patch:
        lines.append("  admitted unchanged")
    else:
        after = apply(pod_before, patch)
        lines.extend(_describe(pod_before, after))
    if warnings:
        lines.append("  warnings:")
        lines.extend("    - " + w for w in warnings)
    return "\n".join(lines)


#: The pod fields that hold containers, in the order the summary lists them, and their label.
_FIELDS = (("initContainers", "init container"), ("containers", "container"))


def _describe(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The lines of an admitted pod: pattern, where cores go, the installer, each target."""
    ann = after["metadata"].get("annotations") or {}
    spec = after["spec"]
    out = [f"  pattern: {ann.get(C.ANN_EFFECTIVE_PATTERN, '?')}", _cores_line(before, spec, ann)]
    out.extend(_installer_lines(spec))
    targets = set(json.loads(ann.get(C.ANN_TARGETS, "[]")))
    old = {
        (f, c.get("name")): c
        for f, _ in _FIELDS
        for c in (before.get("spec") or {}).get(f) or []
    }
    for field, label in _FIELDS:
        for c in spec.get(field) or []:
            if c["name"] in targets:
                out.extend(_container_lines(label, c, old.get((field, c["name"]), {})))
    return out


def _cores_line(before: dict[str, Any], spec: dict[str, Any], ann: dict[str, Any]) -> str:
    """Where the cores go: the directory, and the volume holding it (added or the pod's own)."""
    volumes = {v.get("name"): v for v in spec.get("volumes") or []}
    old_volumes = {v.get("name") for v in (before.get("spec") or {}).get("volumes") or []}
    core = ann.get(C.ANN_CORE_VOLUME, "")
    if not core:
        return "  cores go to: the process's working directory (relative pattern, no volume)"
    vol_name, _, path = core.partition("@")
    origin = "added" if vol_name not in old_volumes else "the pod's own"
    directory = _directory(ann.get(C.ANN_EFFECTIVE_PATTERN, "")) or path
    where = f"{directory}, on" if directory == path else f"{directory}, inside"
    return f"  cores go to: {where} volume {vol_name} at {path} ({_source(volumes.get(vol_name))}, {origin})"


def _installer_lines(spec: dict[str, Any]) -> list[str]:
    installer = next((c for c in spec.get("initContainers") or [] if c["name"].startswith(C.INSTALLER_CONTAINER)), None)
    if not installer:
        return []
    return [f"  init container {installer['name']} ({installer['image']}) installs {C.WRAPPER_PATH}"]


def _container_lines(label: str, c: dict[str, Any], prev: dict[str, Any]) -> list[str]:
    """One target: its command before and after, and what it gained (mounts, capability, env)."""
    out = [f"  {label} {c['name']}:"]
    out.extend(_wrap("runs:   ", _argv(prev)))
    if _argv(prev) != _argv(c):
        out.extend(_wrap("now:    ", _argv(c)))
    out.extend(_mount_lines(c, prev))
    out.extend(_capability_lines(c, prev))
    env = [e for e in c.get("env") or [] if e.get("name") in C.REGISTRATION_ENV]
    out.extend(_wrap("env:    ", ", ".join(_env(e) for e in env)))
    return out


def _mount_lines(c: dict[str, Any], prev: dict[str, Any]) -> list[str]:
    out = []
    for m in c.get("volumeMounts") or []:
        if m in (prev.get("volumeMounts") or []):
            continue
        extra = f" subPath {m['subPath']}" if m.get("subPath") else ""
        ro = " read-only" if m.get("readOnly") else ""
        out.append(f"    mount:  {m['name']} at {normalize_path(m['mountPath'])}{extra}{ro}")
    return out


def _capability_lines(c: dict[str, Any], prev: dict[str, Any]) -> list[str]:
    caps = ((c.get("securityContext") or {}).get("capabilities") or {})
    prev_caps = (((prev.get("securityContext") or {}).get("capabilities") or {}).get("add") or [])
    if CAPABILITY not in (caps.get("add") or []) or CAPABILITY in prev_caps:
        return []
    drop = f" (drop {', '.join(caps['drop'])} kept)" if caps.get("drop") else ""
    return [f"    capability: + {CAPABILITY}{drop}"]


def _directory(raw: str) -> str | None:
    try:
        return parse(raw).directory
    except PatternError:
        return None


def _empty_dir(source: dict[str, Any] | None) -> str:
    limit = (source or {}).get("sizeLimit")
    return "emptyDir" + (f", at most {limit}" if limit else "")


#: Volume source -> its description, in the order they are looked for.
_SOURCES: tuple[tuple[str, Callable[[Any], str]], ...] = (
    ("emptyDir", _empty_dir),
    ("nfs", lambda nfs: f"NFS {nfs.get('server')}:{nfs.get('path')}"),
    ("persistentVolumeClaim", lambda pvc: f"PVC {pvc.get('claimName')}"),
    ("csi", lambda csi: f"CSI {csi.get('driver')}"),
)


def _source(volume: dict[str, Any] | None) -> str:
    if not volume:
        return "not found in the pod"
    for key, describe in _SOURCES:
        if key in volume:
            return describe(volume[key])
    kinds = [k for k in volume if k != "name"]
    return kinds[0] if kinds else "?"


def _argv(container: dict[str, Any]) -> str:
    command = container.get("command") or []
    args = container.get("args") or []
    if command:
        return shlex.join([*command, *args])
    return "<image ENTRYPOINT> " + (shlex.join(args) if args else "<image CMD>")


def _env(var: dict[str, Any]) -> str:
    if "value" in var:
        return f"{var['name']}={var['value']}"
    ref = ((var.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath", "?")
    return f"{var['name']}<-{ref}"


def _wrap(head: str, text: str) -> list[str]:
    return textwrap.wrap(
        text, width=_WIDTH, initial_indent="    " + head, subsequent_indent="    " + " " * len(head),
        break_long_words=False, break_on_hyphens=False,
    ) or ["    " + head.rstrip()]
