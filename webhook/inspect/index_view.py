"""``coredump list`` over the crash index: CoreDump objects as listing records.

One API call lists a namespace's (or, with ``-A``, every namespace's) CoreDumps: it works while
the pod crash-loops (nothing to exec into) and after it is gone. Without the right to list them
cluster-wide, ``-A`` falls back to the namespaces the user may list them in, with a warning.
"""

from __future__ import annotations

import calendar
import time
from typing import Any

from webhook import digest as digests
from webhook.inspect.records import CoreRecord

#: Label of the pod on a CoreDump (webhook/agent/index.py; the inspection side never imports the agent).
LABEL_POD = "coredump-webhook.io/pod"


def _epoch(stamp: Any) -> float:
    try:
        return float(calendar.timegm(time.strptime(str(stamp), "%Y-%m-%dT%H:%M:%SZ")))
    except (TypeError, ValueError):
        return 0.0


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(d: dict, key: str) -> str:
    return str(d.get(key) or "")


def _metadata_view(meta: dict, spec: dict, status: dict, location: dict) -> dict:
    """What the core's <core>.json says, in its key names (uid/gid for debug); unset keys left out."""
    metadata = {"signature_frames": [str(f) for f in spec.get("topFrames") or []], "uid": _int(spec.get("uid")),
                "gid": _int(spec.get("gid")), "owner": spec.get("owner"), "sysroot": location.get("sysroot"),
                "symbols_store": location.get("symbolsStore"), "build_id": spec.get("buildID"),
                "destination": location.get("kind"), "coredump": meta.get("name"),
                "last_seen": status.get("lastSeen"), "state": status.get("state")}
    return {k: v for k, v in metadata.items() if v is not None}


def _signal_name(spec: dict, signal: int | None) -> str:
    return str(spec.get("signalName") or (f"SIG{signal}" if signal else ""))


def record_from_coredump(obj: dict) -> CoreRecord | None:
    """A listing record from one CoreDump; None when it is not one."""
    if not isinstance(obj, dict) or not isinstance(obj.get("spec"), dict):
        return None
    meta, spec = obj.get("metadata") or {}, obj["spec"]
    status = obj.get("status") or {}
    location = spec.get("location") or {}
    signal = _int(spec.get("signal"))
    return CoreRecord(
        namespace=_text(meta, "namespace"),
        pod=_text(spec, "pod"),
        container=_text(spec, "container"),
        time=_epoch(spec.get("time")),
        signal=signal,
        signal_name=_signal_name(spec, signal),
        size=_int(spec.get("size")),
        digest=digests.of_metadata(spec),
        path=_text(location, "path"),
        signature=_text(spec, "signature"),
        node=_text(spec, "node"),
        image=_text(spec, "image"),
        exe=_text(spec, "exe"),
        truncated=bool(spec.get("truncated")),
        truncated_reason=_text(spec, "truncatedReason"),
        compression=_text(spec, "compression"),
        stored_size=_int(spec.get("storedSize")),
        location=_text(location, "path"),
        present=status.get("state") not in ("Gone", "Pruned"),
        kind=str(spec.get("kind") or "crash"),
        count=max(1, _int(status.get("count")) or 1),
        coredump=_text(meta, "name"),
        metadata=_metadata_view(meta, spec, status, location),
    )


def records_from_coredumps(items: list[dict]) -> list[CoreRecord]:
    return [r for r in (record_from_coredump(o) for o in items) if r is not None]


def pod_selector(pod: str) -> str:
    """The label selector of one pod's CoreDumps (the agent writes the label value so)."""
    import re

    value = re.sub(r"[^A-Za-z0-9._-]", "_", pod)[:63].strip("._-")
    return f"{LABEL_POD}={value}"


def read_index(api: Any, namespace: str | None, *, pod: str | None = None) -> tuple[list[CoreRecord], list[str]]:
    """Records of the index: ``namespace`` None = every namespace (``-A``).

    Raises ``kube.NotFound`` when the CRD is not installed (the caller falls back to reading the
    pods), ``kube.Forbidden`` for one namespace the user may not read.
    """
    from webhook.inspect import kube

    selector = pod_selector(pod) if pod else None
    if namespace is not None:
        records = records_from_coredumps(kube.list_coredumps(api, namespace, selector))
        return [r for r in records if not pod or r.pod == pod], []
    try:
        return records_from_coredumps(kube.list_coredumps(api, None, selector)), []
    except kube.Forbidden:
        pass
    warnings = ["no right to list coredumps in all namespaces: listing the namespaces you may read"]
    try:
        namespaces = kube.list_namespaces(api)
    except kube.Forbidden:
        raise kube.Forbidden("forbidden: -A needs RBAC verb 'list' on 'coredumps' cluster-wide, or 'list' on "
                             "'namespaces' to try them one by one; use -n NAMESPACE", 403, "Forbidden") from None
    records = []
    for ns in namespaces:
        try:
            records += records_from_coredumps(kube.list_coredumps(api, ns, selector))
        except kube.Forbidden:
            warnings.append(f"namespace {ns}: no access to its coredumps, skipped")
    return records, warnings
