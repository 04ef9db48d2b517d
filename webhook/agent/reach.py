"""Reaching a dump's directory again after the agent that wrote it was killed.

A pod's volume is reached through a live process of the same container (by container ID, from
``/proc/<pid>/cgroup``: the kernel's word), else through a live process of any container on this
node that mounts the same storage (the entry's ``volume``: same PVC in the same namespace, same
NFS export, same hostPath, or the same pod's volume; webhook/agent/podvolumes.py) at a path
under which the directory lies. The node location is reached directly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from webhook.agent.podvolumes import translate
from webhook.agent.procinfo import parse_cgroup

log = logging.getLogger(__name__)


#: Another container's view of an entry's storage: (root path, directory inside it, "<ns>/<pod>/<container>").
Peer = tuple[str, str, str]


def _same_container_pids(container_id: str, proc: str, prefer: int | None) -> list[int]:
    """Live processes whose cgroup names ``container_id`` (the original PID first)."""
    return _container_pids({container_id}, proc, prefer).get(container_id, [])


def _container_pids(container_ids: set[str], proc: str, prefer: int | None = None) -> dict[str, list[int]]:
    """Live processes of these containers (by the container ID their cgroup names), one /proc scan."""
    pids: dict[str, list[int]] = {}
    try:
        names = [n for n in os.listdir(proc) if n.isdigit()]
    except OSError:
        return pids
    if prefer:
        names.sort(key=lambda n: n != str(prefer))
    for name in names:
        try:
            with open(f"{proc}/{name}/cgroup") as f:
                ident = parse_cgroup(f.read())
            if ident.container_id not in container_ids:
                continue
            with open(f"{proc}/{name}/stat") as f:
                state = f.read().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            pids.setdefault(ident.container_id, []).append(int(name))
    return pids


def peers_on_node(records: Callable[[], list[Any]], proc: str = "/proc",
                  ready: Callable[[], bool] | None = None) -> Callable[[dict[str, Any]], list[Peer]]:
    """``peers(entry)`` for :func:`recover`: live containers of this node's pods (the pod watch's
    ``PodIndex.records``) that mount the entry's storage; ``ready()`` waits for the watch's list."""

    def peers(entry: dict[str, Any]) -> list[Peer]:
        claim = entry.get("volume")
        if not isinstance(claim, dict) or not claim.get("source"):
            return []
        if ready is not None and not ready():
            log.warning("the pod watch has not listed the pods: no other pod on the claim can be found",
                        extra={"pod": entry.get("pod"), "namespace": entry.get("namespace")})
        wanted: list[tuple[str, str, str]] = []  # (container ID, directory, who)
        for record in records():
            view = record.view
            for cid, name in view.container_ids.items():
                if cid == entry.get("container_id"):
                    continue  # tried first, by recover_entry
                for directory in translate(claim, view.mounts.get(name, ())):
                    wanted.append((cid, directory, f"{view.namespace}/{view.name}/{name}"))
        if not wanted:
            return []
        live = _container_pids({cid for cid, _, _ in wanted}, proc)
        return [(f"{proc}/{pid}/root", directory, who) for cid, directory, who in wanted
                for pid in live.get(cid, [])]

    return peers


def roots(entry: dict[str, Any], node_cores_dir: str, proc: str,
           peers: Callable[[dict[str, Any]], list[Peer]] | None = None) -> Iterator[Peer]:
    """Where the entry's directory may be reached from, in order: (root, directory, via)."""
    directory = entry.get("directory") or "/"
    if entry.get("destination") == "node":
        yield node_cores_dir, directory, ""
        return
    cid = entry.get("container_id")
    if cid:
        for pid in _same_container_pids(cid, proc, entry.get("global_pid")):
            yield f"{proc}/{pid}/root", directory, ""
    if peers is not None:
        yield from peers(entry)

