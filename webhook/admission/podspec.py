"""Reading a pod spec as the API server may send it: lists that hold non-dicts, paths as written.

Shared by the mutation's steps: the containers it prepares (:class:`Target`), mount paths
compared the way the kubelet mounts them, and names that do not collide with the user's.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass
class Target:
    """A container to prepare: where it sits in the pod and what it holds."""

    field: str  # "containers" or "initContainers"
    index: int
    container: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.container.get("name", ""))

    @property
    def path(self) -> str:
        return f"/spec/{self.field}/{self.index}"


def dicts(value: Any) -> list[dict[str, Any]]:
    """The dict items of a list field (the API server only sends dicts; tolerate the rest)."""
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, dict)]


def names(value: str) -> list[str]:
    """The names of a comma-separated annotation value, blanks dropped."""
    return [n.strip() for n in value.split(",") if n.strip()]


def unique(base: str, taken: set[str]) -> str:
    """``base``, or ``base-2``, ``base-3``... whichever the user has not taken."""
    if base not in taken:
        return base
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


def normalize_path(path: str) -> str:
    """A mount path compared the way the kubelet mounts it: no trailing or doubled '/'."""
    norm = posixpath.normpath(path)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    return norm


def covers(mount_path: str, directory: str) -> bool:
    """Whether a volume mounted at ``mount_path`` holds ``directory`` (same or a parent)."""
    mp = normalize_path(mount_path)
    return mp == directory or directory.startswith(mp.rstrip("/") + "/")


def covering_mount(container: dict[str, Any], directory: str) -> dict[str, Any] | None:
    """The deepest mount of ``container`` that holds ``directory``, if any."""
    return deepest(
        m for m in dicts(container.get("volumeMounts"))
        if isinstance(m.get("mountPath"), str) and isinstance(m.get("name"), str) and m["mountPath"]
        and covers(m["mountPath"], directory)
    )


def deepest(mounts: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The mount with the longest (normalized) mountPath; the first of equals."""
    best: dict[str, Any] | None = None
    for m in mounts:
        if best is None or len(normalize_path(m["mountPath"])) > len(normalize_path(best["mountPath"])):
            best = m
    return best
