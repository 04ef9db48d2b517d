"""The ``<core>.json`` written next to each core: a pure builder (dict in, JSON out).

The inspection CLI (``coredump list/get``) reads these files; the schema is documented in the
README ("Where cores land, and their metadata"). Add keys, never rename them: ``schema`` says
which version wrote a file.
"""

from __future__ import annotations

import datetime as _dt
import json
import signal as _signal
from dataclasses import dataclass, field

from webhook import __version__

#: Version of the metadata layout (bump when a key changes meaning).
#: 2: the `digest` key ("xxh128:<hex>") replaced 1's `sha256` (bare hex), which readers still accept.
SCHEMA_VERSION = 2


@dataclass(frozen=True)
class PodView:
    """What the agent's pod watch knows about a pod (never fetched on the crash path)."""

    namespace: str
    name: str
    uid: str
    #: container name -> image
    images: dict[str, str] = field(default_factory=dict)
    #: container ID (no runtime prefix) -> container name
    container_ids: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    owner: str | None = None  # "ReplicaSet/web-7d9c"
    #: volume name -> (kind: "emptyDir", "persistentVolumeClaim", "nfs"..., claim name or "")
    volumes: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: container name -> [(mountPath, volume name)] (the crash index names a core's volume)
    mount_names: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    #: container name -> its mounts (podvolumes.Mount): the storage a core directory lies on
    mounts: dict[str, tuple] = field(default_factory=dict)
    #: the webhook's coredump-webhook.io/unwritable annotation (a read-only mount at admission)
    unwritable: str = ""


def signal_name(number: int) -> str | None:
    try:
        return _signal.Signals(number).name
    except ValueError:
        return None


def iso_time(epoch: float) -> str:
    return _dt.datetime.fromtimestamp(epoch, _dt.UTC).isoformat().replace("+00:00", "Z")


def build(*, node: str, namespace: str | None, pod: str | None, pod_uid: str | None,
          container: str | None, container_id: str | None, image: str | None,
          labels: dict[str, str] | None = None, owner: str | None = None,
          runtime: str | None, registered: bool, identification: str, destination: str,
          pid: int, global_pid: int, tid: int, global_tid: int, uid: int, gid: int,
          signal: int, exe: str, comm: str, hostname: str, time: int, path: str, file: str,
          size: int, stored_size: int, disk_size: int, digest: str | None, compression: str,
          truncated: bool, reason: str | None, pattern: str, rlimit_core: int, dump_mode: int,
          spool_reason: str = "") -> dict:
    """The metadata document (plain JSON types). ``path`` is where the core is as the crashing
    container sees it (or on the node for the node location). ``spool_reason``: why the helper
    spooled the core (agent unreachable, no ACK, ...), None in the document when it was not.
    ``digest`` (``"xxh128:<hex>"``, webhook/digest.py) is of the original bytes, computed after the
    process was released and before this document is first written; None (null) when it could not
    be computed, never a guess."""
    return {
        "schema": SCHEMA_VERSION,
        "agent_version": __version__,
        "node": node,
        "namespace": namespace,
        "pod": pod,
        "pod_uid": pod_uid,
        "container": container,
        "container_id": container_id,
        "image": image,
        "labels": labels or {},
        "owner": owner,
        "runtime": runtime,
        "registered": registered,
        "identification": identification,
        "destination": destination,
        "pid": pid,
        "global_pid": global_pid,
        "tid": tid,
        "global_tid": global_tid,
        "uid": uid,
        "gid": gid,
        "signal": signal,
        "signal_name": signal_name(signal),
        "exe": exe,
        "comm": comm,
        "hostname": hostname,
        "time": time,
        "time_iso": iso_time(time),
        "path": path,
        "file": file,
        "size": size,
        "stored_size": stored_size,
        "disk_size": disk_size,
        "digest": digest,
        "compression": compression,
        "truncated": truncated,
        "truncated_reason": reason,
        "pattern": pattern,
        "rlimit_core": rlimit_core,
        "dump_mode": dump_mode,
        "spool_reason": spool_reason or None,
    }


def dumps(doc: dict) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=False) + "\n").encode()


def loads(data: bytes | str) -> dict:
    """Read a metadata file (for the inspection CLI); raises ValueError on garbage."""
    doc = json.loads(data)
    if not isinstance(doc, dict) or "schema" not in doc:
        raise ValueError("not a coredump-webhook metadata document")
    return doc
