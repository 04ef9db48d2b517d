"""Real metadata files for the inspection tests, written with the agent's own builder."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import xxhash

from webhook.agent import metadata


def write_core(root: Path, rel: str, *, namespace: str, pod: str, container: str, t: int,
               signal: int = 11, signature: str | None = None, frames: list[str] | None = None,
               payload: bytes | None = None, node: str = "node-3", identity: str = "verified",
               legacy_sha256: bool = False) -> Path:
    """A core file and its ``.json`` as the agent writes them; returns the core's path.
    ``legacy_sha256``: as agents before the ``digest`` key wrote it (``sha256``: bare hex)."""
    core = root / rel.lstrip("/")
    core.parent.mkdir(parents=True, exist_ok=True)
    data = payload if payload is not None else os.urandom(2048) + bytes(4096) + pod.encode()
    core.write_bytes(data)
    doc = metadata.build(
        node=node, namespace=namespace, pod=pod, pod_uid="6f1c2a7e-3b9d-4c51-9a0e-2d8f4b7c1e93",
        container=container, container_id="8e2a4c6b1d3f", image="registry.example.com/shop/web:1.4.2",
        runtime="containerd", registered=True, identification="env+cgroup", destination="pod",
        pid=7, global_pid=40000 + t % 1000, tid=7, global_tid=40000 + t % 1000, uid=1000, gid=1000,
        signal=signal, exe="/usr/local/bin/web", comm="web", hostname=pod, time=t, path="/" + rel.lstrip("/"),
        file=core.name, size=len(data), stored_size=len(data), disk_size=len(data),
        digest="xxh128:" + xxhash.xxh3_128(data).hexdigest(), compression="none", truncated=False, reason=None,
        pattern="/data/dump-a/core-%E-%p-%t", rlimit_core=-1, dump_mode=1,
    )
    if legacy_sha256:
        del doc["digest"]
        doc.update(schema=1, sha256=hashlib.sha256(data).hexdigest())
    doc["identity"] = identity  # names from the agent's pod watch (or "unverified": pod UID only)
    if signature:
        doc.update({"signature": signature, "signature_frames": frames or [],
                    "backtrace": [f"#{i} {f} at web.c:{10 + i}" for i, f in enumerate(frames or [])]})
    (core.parent / (core.name + ".json")).write_bytes(metadata.dumps(doc))
    return core
