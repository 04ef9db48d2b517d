"""Cores as records: one core's metadata (or CoreDump) as the CLI and the page show it.

The namespace and pod a record is shown, and authorized, under come from the reader (the pod
the user exec'd into) or from names the agent verified, never from what a crashing process
wrote (:func:`_names`). Pure: no I/O.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import TypeGuard

from webhook import constants
from webhook import digest as digests

#: Metadata keys that mark a JSON file as a core's metadata (other JSON files are ignored): ``size``
#: and one of these (``digest``; ``sha256`` in metadata written before it, null when not computed).
_REQUIRED = ("size",)
_DIGEST_KEYS = (digests.KEY, digests.LEGACY_KEY)


@dataclass
class CoreRecord:
    """One core as the CLI and the page show it."""

    namespace: str
    pod: str
    container: str
    time: float
    signal: int | None
    signal_name: str
    size: int | None
    #: "xxh128:<hex>" (or "sha256:<hex>") of the original core; "" when none was computed.
    digest: str
    #: Path of the core as the crashed container sees it (metadata ``path``).
    path: str
    signature: str = ""
    backtrace: list[str] = field(default_factory=list)
    node: str = ""
    image: str = ""
    exe: str = ""
    truncated: bool = False
    truncated_reason: str = ""
    compression: str = ""
    #: Bytes of the stored file (differs from ``size`` when compressed); what a download fetches.
    stored_size: int | None = None
    #: Where the core was found by whoever listed it (a path in the pod or reader pod the exec
    #: ran in, or a local path for the page): what a download reads.
    location: str = ""
    #: False when the metadata is there but the core file is not (deleted by hand).
    present: bool = True
    #: "crash", or "snapshot" for a gcore of a live process (never grouped with crashes).
    kind: str = "crash"
    #: Crashes this record stands for (a CoreDump whose signature reached its quota counts the rest).
    count: int = 1
    #: The CoreDump's name when the record came from the index.
    coredump: str = ""
    #: The full metadata as read.
    metadata: dict = field(default_factory=dict, repr=False)

    @property
    def time_iso(self) -> str:
        return self.metadata.get("time_iso") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.time))

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("metadata")
        d["time_iso"] = self.time_iso
        return d


def _num(value, default=None):
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


#: The metadata's ``identity`` when the agent took namespace, pod and container from its pod
#: watch (the API server); anything else (``unverified``, or metadata from before the key) names
#: no namespace or pod anyone may be authorized by.
VERIFIED = "verified"


def is_verified(meta: dict) -> bool:
    return isinstance(meta, dict) and meta.get("identity") == VERIFIED


def _names(meta: dict, namespace: str, pod: str) -> tuple[str, str]:
    """Namespace and pod a record is shown (and authorized) under.

    Read through a pod (``namespace`` given: the user's own RBAC-checked exec), the namespace is
    always that pod's, whatever the file says (a process can write any JSON into its volume);
    the metadata's pod name is kept only when the agent verified it in that same namespace.
    Read from a directory (the page, the node location), only verified names are shown.
    """
    verified = is_verified(meta)
    if namespace:
        same = verified and meta.get("namespace") == namespace and meta.get("pod")
        return namespace, str(meta["pod"]) if same else pod
    if verified:
        return str(meta.get("namespace") or ""), str(meta.get("pod") or "")
    return "", ""


def is_core_metadata(meta: object) -> TypeGuard[dict]:
    """A core's metadata has ``size`` and a digest key (other JSON files are ignored)."""
    return (isinstance(meta, dict) and all(k in meta for k in _REQUIRED)
            and any(k in meta for k in _DIGEST_KEYS))


def _text(meta: dict, key: str) -> str:
    return str(meta.get(key) or "")


def _time(meta: dict) -> float:
    try:
        return float(meta.get("time") or 0)
    except (TypeError, ValueError):
        return 0.0


def _signal_name(meta: dict) -> str:
    return str(meta.get("signal_name") or (f"SIG{meta['signal']}" if meta.get("signal") else ""))


def _backtrace(meta: dict) -> list[str]:
    backtrace = meta.get("backtrace") or []
    return [str(x) for x in backtrace] if isinstance(backtrace, list) else []


def _kind(meta: dict) -> str:
    return "snapshot" if meta.get("gcore") or meta.get("snapshot") else "crash"


def record_from_metadata(meta: object, meta_path: str, *, present: bool = True, namespace: str = "", pod: str = "") -> CoreRecord | None:
    """A record from one metadata dict; None when the JSON is not a core's metadata."""
    if not is_core_metadata(meta):
        return None
    shown_ns, shown_pod = _names(meta, namespace, pod)
    core_path = meta_path[: -len(constants.METADATA_SUFFIX)] if meta_path.endswith(constants.METADATA_SUFFIX) else meta_path
    return CoreRecord(
        namespace=shown_ns,
        pod=shown_pod,
        container=_text(meta, "container") if is_verified(meta) else "",
        time=_time(meta),
        signal=_num(meta.get("signal")),
        signal_name=_signal_name(meta),
        size=_num(meta.get("size")),
        digest=digests.of_metadata(meta),
        path=str(meta.get("path") or core_path),
        location=core_path,
        signature=_text(meta, "signature"),
        backtrace=_backtrace(meta),
        node=_text(meta, "node"),
        image=_text(meta, "image"),
        exe=_text(meta, "exe"),
        truncated=bool(meta.get("truncated")),
        truncated_reason=_text(meta, "truncated_reason"),
        compression=_text(meta, "compression"),
        stored_size=_num(meta.get("stored_size"), _num(meta.get("size"))),
        present=present,
        kind=_kind(meta),
        metadata=meta,
    )


def newest_first(records: list[CoreRecord]) -> list[CoreRecord]:
    return sorted(records, key=lambda r: (-r.time, r.namespace, r.pod, r.path))


def find_record(records: list[CoreRecord], core: str) -> CoreRecord | None:
    """Match ``coredump get``'s CORE argument: a full path, a file name, or a digest prefix (its
    hex digits, or with the algorithm: ``xxh128:3f2a...``)."""
    for r in records:
        if core in (r.path, r.name, r.location):
            return r
    hits = [r for r in records if r.digest and len(core.partition(":")[2] or core) >= 8
            and (r.digest.startswith(core) or digests.hex_part(r.digest).startswith(core))]
    return hits[0] if len(hits) == 1 else None
