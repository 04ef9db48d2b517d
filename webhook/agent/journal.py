"""The in-flight journal: each dump in flight, recorded in the host dir while it runs.

Before the crash path creates a core's temporary file it writes ``HOSTDIR/inflight/<id>.json``:
where (destination, directory inside the root, temporary names, final name), whose (pod,
container, container ID) and what (the kernel's values). The entry is removed once the dump is
done, whatever its outcome. An agent killed mid-dump leaves the entry behind; its successor
finds it among the :meth:`Journal.leftovers` and recovers it (webhook/agent/inflight.py).

The entry is written without fsync: it must survive the agent's death, which the page cache
does; a node that loses power restarts its containers, whose leftovers are then unreachable
anyway (they are reported as such).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from typing import Any

from webhook.agent.identity import VERIFIED
from webhook.agent.metafile import reserved_tmp_name
from webhook.agent.podvolumes import claim_of
from webhook.agent.writer import TMP_PREFIX

log = logging.getLogger(__name__)

JOURNAL_DIR = "inflight"
_ENTRY_SUFFIX = ".json"


def tmp_names(name: str) -> tuple[str, str]:
    """Temporary names for a core and its metadata (the writer's prefix; distinct random tokens,
    so even names cut at 255 bytes never collide)."""
    return f"{TMP_PREFIX}{secrets.token_hex(6)}.{name}"[:255], reserved_tmp_name(name)


#: This agent process: its own entries are never "left over" for it, whichever Journal wrote them.
INSTANCE = f"{os.getpid()}-{time.time_ns()}"


class Journal:
    """``HOSTDIR/inflight``: one small JSON file per dump in flight."""

    def __init__(self, host_dir: str, instance: str = INSTANCE) -> None:
        self.dir = os.path.join(host_dir, JOURNAL_DIR)
        self.instance = instance

    def begin(self, entry: dict[str, Any]) -> str | None:
        """Record one dump; returns its token for :meth:`end` (None when it could not be
        recorded: logged, and the dump goes on: the journal never costs a core)."""
        token = f"{int(time.time())}-{secrets.token_hex(6)}"
        body = dict(entry, id=token, instance=self.instance, recorded_at=time.time())
        try:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            tmp = os.path.join(self.dir, f".{token}.tmp")
            with open(tmp, "w") as f:
                json.dump(body, f)
            os.rename(tmp, os.path.join(self.dir, token + _ENTRY_SUFFIX))
        except OSError as exc:
            log.warning("could not record the dump in flight", extra={"error": str(exc), "pid": entry.get("global_pid")})
            return None
        return token

    def end(self, token: str | None) -> None:
        if token is None:
            return
        try:
            os.unlink(os.path.join(self.dir, token + _ENTRY_SUFFIX))
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not clear a finished dump from the journal", extra={"error": str(exc)})

    def leftovers(self) -> list[tuple[str, dict[str, Any]]]:
        """Entries written by other (earlier) agents: (path, entry); unreadable ones are removed."""
        found: list[tuple[str, dict[str, Any]]] = []
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return found
        for name in names:
            path = os.path.join(self.dir, name)
            if name.startswith("."):
                if name.endswith(".tmp"):
                    discard_entry(path)  # a write cut by the agent's death: the dump had not started
                continue
            if not name.endswith(_ENTRY_SUFFIX):
                continue
            try:
                with open(path) as f:
                    entry = json.load(f)
                if not isinstance(entry, dict):
                    raise ValueError("not an object")
            except (OSError, ValueError) as exc:
                log.error("unreadable in-flight journal entry removed", extra={"entry": path, "error": str(exc)})
                discard_entry(path)
                continue
            if entry.get("instance") != self.instance:
                found.append((path, entry))
        return found


def discard_entry(path: str) -> None:
    """Remove an entry's file, if it is still there."""
    try:
        os.unlink(path)
    except OSError:
        pass



def entry_for(request: Any, who: Any, target: Any, names: tuple[str, str], *, node: str, exe: str,
              registered: bool, identification: str) -> dict[str, Any]:
    """The journal entry of one dump (plain JSON types). The names are kept only when the pod
    watch verified them (``identity``: who.state)."""
    verified = who.state == VERIFIED
    return {
        "destination": target.destination, "directory": target.directory, "name": target.name,
        "tmp_name": names[0], "meta_tmp_name": names[1], "compression": target.compression,
        "uid_owner": target.uid, "gid_owner": target.gid, "pattern": target.pattern, "node": node,
        "identity": who.state, "namespace": who.namespace if verified else None,
        "pod": who.pod if verified else None, "pod_uid": who.pod_uid,
        "container": who.container if verified else None, "container_id": who.container_id,
        "image": who.image if verified else None, "labels": dict(who.labels or {}) if verified else {},
        "owner": who.owner if verified else None, "runtime": who.runtime, "registered": registered,
        "identification": identification,
        "pid": request.pid, "global_pid": request.global_pid, "tid": request.tid, "global_tid": request.global_tid,
        "uid": request.uid, "gid": request.gid, "signal": request.signal, "comm": request.comm,
        "hostname": request.hostname, "time": request.time, "rlimit_core": request.rlimit_core,
        "dump_mode": request.dump_mode, "spool_reason": request.spool_reason, "exe": exe,
        # the storage the directory lies on (podvolumes.py): another pod on it can reach the leftover
        "volume": claim_of(getattr(who, "mounts", ()) or (), target.directory) if target.destination == "pod"
        else None,
    }
