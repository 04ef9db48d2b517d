"""The crash index's quota per signature: which CoreDumps the agent wrote, kept across restarts.

The records of one quota key (namespace, kind, signature, workload) follow the rule retention
applies to the files: the first N crashes keep their own CoreDump, the latest M have one each,
and the rest are counted. Past N + M, the oldest of the latest M records is rolled forward to
describe the newest core (one update, never a new object) and its ``status.count`` grows by one:
the sum of the counts of a key's records is always the number of its crashes. A record deleted
with its pruned core hands its count on (``carry``) to the next record written.

The agent may not read CoreDumps back (no get/list), so this state is its only memory of them:
it lives in a small JSON file in the agent's host directory, rewritten atomically (temporary
file, fsync, rename), bounded (``max_keys`` keys, ``max_bytes`` bytes; the least recently used
keys go first) and read leniently: a damaged file or entry is logged and skipped, never fatal.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, cast

from webhook.agent.statefile import write_atomically

log = logging.getLogger(__name__)

FORMAT = 1
Key = tuple[str, str, str, str]


@dataclass
class Slot:
    """One CoreDump of a key: its name, the core it describes now and what it counts."""

    name: str
    core: str  # coredump_name() of the core described (the name it was created under, until rolled)
    count: int = 1
    rv: str = ""  # the resourceVersion the server last answered ("" until then)
    created: bool = False  # the create was answered (201, or 409: an earlier try went through)
    gone: bool = False  # deleted with its pruned core (a first slot stays taken)
    pending: str = ""  # "create" or "roll": a write planned, not done yet (memory only)
    body: dict | None = None  # the object to write next (memory only)

    def to_json(self) -> dict:
        return {"name": self.name, "core": self.core, "count": self.count, "rv": self.rv,
                "created": self.created, "gone": self.gone}

    @classmethod
    def from_json(cls, doc: Any) -> Slot:
        if not isinstance(doc, dict):
            raise ValueError("slot is not an object")
        name, core, count, rv = doc.get("name"), doc.get("core"), doc.get("count"), doc.get("rv", "")
        if not (isinstance(name, str) and name and isinstance(core, str) and core and isinstance(rv, str)
                and isinstance(count, int) and not isinstance(count, bool) and count >= 1):
            raise ValueError("slot fields")
        return cls(name[:253], core[:253], count, rv[:64], bool(doc.get("created")), bool(doc.get("gone")))


@dataclass
class KeyState:
    first: list[Slot] = field(default_factory=list)
    latest: list[Slot] = field(default_factory=list)  # oldest first
    carry: int = 0  # counts of deleted records, added to the next record written
    total: int = 0  # crashes seen

    def slots(self) -> list[Slot]:
        return [s for s in self.first + self.latest if not s.gone]


class QuotaState:
    """Per-key slots in memory, saved to ``path`` (None: memory only)."""

    def __init__(self, path: str | None, keep_first: int, keep_latest: int, *, max_keys: int = 1024,
                 max_bytes: int = 1 << 20) -> None:
        self.path = path
        self.keep_first = max(0, keep_first)
        self.keep_latest = max(1, keep_latest)  # the newest record carries the count of the rest
        self.max_keys = max(1, max_keys)
        self.max_bytes = max_bytes
        self.keys: OrderedDict[Key, KeyState] = OrderedDict()
        #: (namespace, name) -> the last body of a Present record of an emptyDir core, as the
        #: server answered it: a restarted agent still marks it Gone when its pod is deleted.
        self.emptydir: OrderedDict[tuple[str, str], dict] = OrderedDict()
        self.max_emptydir = 512
        self.dirty = False
        if path:
            self.load()

    # --- placing a crash -------------------------------------------------------------------
    def place(self, key: Key, core: str, body: dict) -> tuple[str, Slot]:
        """Where a new crash goes: ("create", slot) while the first N or the latest M are not
        all there; else ("roll", slot): the oldest latest record now describes this core, or
        ("fold", slot): the newest record's roll is not written yet and this newer core takes
        its place (a crash storm: several crashes, one write; also a create still being retried,
        then under the newer core's name)."""
        ks = self.keys.get(key)
        if ks is None:
            ks = self.keys[key] = KeyState()
            while len(self.keys) > self.max_keys:
                self.keys.popitem(last=False)
        self.keys.move_to_end(key)
        self.dirty = True
        ks.total += 1
        add, ks.carry = 1 + ks.carry, 0
        if len(ks.first) < self.keep_first or len(ks.latest) < self.keep_latest:
            slot = Slot(core, core, add, pending="create", body=body)
            (ks.first if len(ks.first) < self.keep_first else ks.latest).append(slot)
            return "create", slot
        newest = ks.latest[-1]
        target = newest if newest.pending == "roll" else ks.latest[0]
        if target.pending:  # its write is not done yet: this newer core takes its place
            if target.pending == "create":
                target.name = core
            target.core, target.body = core, body
            target.count += add
            ks.latest.remove(target)
            ks.latest.append(target)
            return "fold", target
        slot = ks.latest.pop(0)
        ks.latest.append(slot)
        slot.core, slot.body, slot.pending = core, body, "roll"
        slot.count += add
        return "roll", slot

    def find(self, namespace: str, core: str) -> tuple[Key, Slot] | None:
        """The live record describing ``core`` in ``namespace`` (None: none this agent wrote)."""
        for key, ks in self.keys.items():
            if key[0] != namespace:
                continue
            for slot in ks.slots():
                if slot.core == core:
                    return key, slot
        return None

    def forget(self, key: Key, slot: Slot) -> None:
        """``slot``'s record was deleted with its core: its count goes on with the next record;
        a first slot stays taken (the first N are the first), a latest one frees its place."""
        ks = self.keys.get(key)
        if ks is None:
            return
        ks.carry += slot.count
        if slot in ks.latest:
            ks.latest.remove(slot)
        else:
            slot.gone = True
        slot.pending, slot.body = "", None
        self.dirty = True

    def answered(self, namespace: str, name: str, rv: str) -> None:
        """The server answered a write of ``name``: the next update must carry this version."""
        for key, ks in self.keys.items():
            if key[0] == namespace:
                for slot in ks.slots():
                    if slot.name == name:
                        slot.rv, slot.created = rv, True
                        self.dirty = True

    def watch_emptydir(self, body: dict) -> None:
        """Remember ``body`` (an answered record) while it is a Present emptyDir core's; forget it
        otherwise (marked Gone or Pruned, rolled to a core elsewhere)."""
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        if _is_present_emptydir(body):
            small = {**body, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
            self.emptydir[key] = small
            self.emptydir.move_to_end(key)
            while len(self.emptydir) > self.max_emptydir:
                self.emptydir.popitem(last=False)
            self.dirty = True
        elif self.emptydir.pop(key, None) is not None:
            self.dirty = True

    def drop_emptydir(self, namespace: str, name: str) -> None:
        if self.emptydir.pop((namespace, name), None) is not None:
            self.dirty = True

    # --- the file --------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"format": FORMAT, "keepFirst": self.keep_first, "keepLatest": self.keep_latest,
                "keys": [{"key": list(k), "first": [s.to_json() for s in ks.first],
                          "latest": [s.to_json() for s in ks.latest], "carry": ks.carry, "total": ks.total}
                         for k, ks in self.keys.items()],
                "emptyDir": list(self.emptydir.values())}

    def load(self) -> None:
        """Read the file; what cannot be read is logged and left out (an empty state at worst)."""
        assert self.path
        doc = self._read()
        if doc is None:
            return
        skipped = 0
        for entry in doc["keys"][-self.max_keys:]:
            loaded = self._load_key(entry)
            if loaded is None:
                skipped += 1
            else:
                self.keys[loaded[0]] = loaded[1]
        skipped += self._load_emptydir(doc.get("emptyDir"))
        if skipped:
            log.warning("index state: damaged entries skipped", extra={"path": self.path, "skipped": skipped})

    def _read(self) -> dict | None:
        """The file's document when it is one this agent understands, else None (logged)."""
        assert self.path
        try:
            with open(self.path, "rb") as f:
                data = f.read(self.max_bytes + 1)
            doc = json.loads(data) if len(data) <= self.max_bytes else None
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("index state unreadable: starting without it", extra={"path": self.path, "error": str(exc)})
            return None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("keys"), list):
            log.warning("index state not understood: starting without it", extra={"path": self.path})
            return None
        return doc

    def _load_key(self, entry: Any) -> tuple[Key, KeyState] | None:
        """One key of the file, settled for a restart; None when it is damaged."""
        try:
            key = tuple(entry["key"])
            if len(key) != 4 or not all(isinstance(k, str) for k in key):
                raise ValueError("key")
            carry, total = int(entry.get("carry", 0)), int(entry.get("total", 0))
            first = [Slot.from_json(s) for s in entry.get("first", [])]
            latest = [Slot.from_json(s) for s in entry.get("latest", [])]
        except (KeyError, TypeError, ValueError):
            return None
        carry = self._settle(first, latest, carry)
        return cast(Key, key), KeyState(first, latest, max(0, carry), max(0, total))

    def _settle(self, first: list[Slot], latest: list[Slot], carry: int) -> int:
        """Writes the restart left unanswered and slots over today's settings: their counts
        go to the carry (returned); ``first`` and ``latest`` are changed in place."""
        # A create that was planned but never answered before the restart: no record to
        # update; its crash is counted on the next one.
        for slot in [s for s in latest if not s.created]:
            latest.remove(slot)
            carry += slot.count
        for slot in first:
            if not slot.created and not slot.gone:
                slot.gone, carry = True, carry + slot.count
        # Settings changed since (fewer first/latest): keep the newest, count the others.
        while len(latest) > self.keep_latest:
            carry += latest.pop(0).count
        return carry

    def _load_emptydir(self, emptydir: Any) -> int:
        """The emptyDir records of the file; returns how many were skipped as damaged."""
        skipped = 0
        for body in (emptydir if isinstance(emptydir, list) else [])[-self.max_emptydir:]:
            if isinstance(body, dict) and _is_present_emptydir(body):
                meta = body["metadata"]
                self.emptydir[(meta["namespace"], meta["name"])] = body
            else:
                skipped += 1
        return skipped

    def save(self) -> bool:
        """Rewrite the file atomically when something changed; bounded to ``max_bytes`` by
        dropping the least recently used keys. False when it could not be written (logged)."""
        if not self.path or not self.dirty:
            self.dirty = False
            return True
        data = json.dumps(self.to_json(), separators=(",", ":")).encode()
        while len(data) > self.max_bytes and (self.keys or self.emptydir):
            for pool in (self.emptydir, self.keys):
                for _ in range(min(len(pool), max(1, len(pool) // 8))):
                    pool.popitem(last=False)
            data = json.dumps(self.to_json(), separators=(",", ":")).encode()
        try:
            write_atomically(self.path, data)
        except OSError as exc:
            log.warning("index state not saved", extra={"path": self.path, "error": str(exc)})
            return False
        self.dirty = False
        return True


def _is_present_emptydir(body: dict) -> bool:
    """A record the sweep may still mark Gone: named, of a pod (UID), on an emptyDir, Present."""
    meta, spec, status = body.get("metadata"), body.get("spec"), body.get("status")
    if not (isinstance(meta, dict) and isinstance(spec, dict) and isinstance(status, dict)):
        return False
    location = spec.get("location")
    return (isinstance(meta.get("namespace"), str) and bool(meta.get("namespace"))
            and isinstance(meta.get("name"), str) and bool(meta.get("name"))
            and isinstance(spec.get("podUID"), str) and bool(spec.get("podUID"))
            and isinstance(location, dict) and location.get("volumeType") == "emptyDir"
            and status.get("state") == "Present")
