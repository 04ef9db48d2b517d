"""Records as output: grouped by signature, rendered for ``-o`` (table, wide, JSON, YAML)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import yaml

from webhook.inspect.download import human_size
from webhook.inspect.records import CoreRecord, newest_first


@dataclass
class Group:
    """All cores sharing one signature ("" = not computed yet: each such core is its own group).

    Snapshots (``coredump gcore``) form their own groups: a live process is not a crash."""

    signature: str
    records: list[CoreRecord]
    kind: str = "crash"

    @property
    def count(self) -> int:
        return sum(max(1, r.count) for r in self.records)

    @property
    def last(self) -> CoreRecord:
        return self.records[0]

    @property
    def first_seen(self) -> float:
        return min(r.time for r in self.records)

    @property
    def pods(self) -> list[str]:
        return sorted({f"{r.namespace}/{r.pod}" for r in self.records})

    def top_frames(self, n: int = 3) -> list[str]:
        frames = self.last.metadata.get("signature_frames") or []
        if frames:
            return [str(f) for f in frames[:n]]
        return [line.split(" ", 2)[1] if line.startswith("#") and " " in line else line for line in self.last.backtrace[:n]]

    def as_dict(self) -> dict:
        return {
            "signature": self.signature,
            "kind": self.kind,
            "count": self.count,
            "first_seen": self.first_seen,
            "last_seen": self.last.time,
            "pods": self.pods,
            "top_frames": self.top_frames(),
            "cores": [r.as_dict() for r in self.records],
        }


def group_by_signature(records: list[CoreRecord]) -> list[Group]:
    """Groups, the most frequent first, then the most recent; cores newest first in each."""
    buckets: dict[tuple[str, str], list[CoreRecord]] = {}
    loose: list[Group] = []
    for rec in newest_first(records):
        if rec.signature:
            buckets.setdefault((rec.kind, rec.signature), []).append(rec)
        else:
            loose.append(Group("", [rec], rec.kind))
    groups = [Group(sig, recs, kind) for (kind, sig), recs in buckets.items()] + loose
    return sorted(groups, key=lambda g: (-g.count, -g.last.time))


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["   ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for r in rows:
        lines.append("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip())
    return "\n".join(lines)


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) if t else "?"


def _short(sig: str) -> str:
    return sig[:12] if sig else "-"


def _size(rec: CoreRecord) -> str:
    s = human_size(rec.size)
    if rec.truncated:
        s += " (truncated)"
    if not rec.present:
        s += " (missing)"
    return s


def _signature_counts(records: list[CoreRecord]) -> dict[str, int]:
    """Crashes per signature (a record may stand for several: ``count``)."""
    counts: dict[str, int] = {}
    for r in records:
        if r.signature:
            counts[r.signature] = counts.get(r.signature, 0) + max(1, r.count)
    return counts


def _wide_cells(r: CoreRecord, counts: dict[str, int], named: bool) -> list[str]:
    """What ``-o wide`` adds to a row: count per signature, node, top frame (and the CoreDump)."""
    top = Group(r.signature, [r]).top_frames(1)
    cells = [str(counts.get(r.signature, 1)), r.node or "-", top[0] if top else "-"]
    return cells + ([r.coredump or "-"] if named else [])


def render_table(records: list[CoreRecord], *, wide: bool = False) -> str:
    """kubectl-style table, newest first; ``wide`` adds node, count per signature, top frame."""
    records = newest_first(records)
    counts = _signature_counts(records)
    headers = ["NAMESPACE", "POD", "CONTAINER", "TIME", "SIGNAL", "SIZE", "SIGNATURE", "CORE"]
    named = wide and any(r.coredump for r in records)
    if wide:
        headers += ["COUNT", "NODE", "TOP FRAME"] + (["COREDUMP"] if named else [])
    rows = []
    for r in records:
        row = [r.namespace, r.pod, r.container, _when(r.time), r.signal_name or "-", _size(r), _short(r.signature), r.path]
        rows.append(row + (_wide_cells(r, counts, named) if wide else []))
    return _table(headers, rows)


def render_groups(groups: list[Group]) -> str:
    headers = ["SIGNATURE", "COUNT", "LAST SEEN", "PODS", "TOP FRAMES", "LATEST CORE"]
    rows = []
    for g in groups:
        pods = g.pods
        shown = ", ".join(pods[:2]) + (f" +{len(pods) - 2}" if len(pods) > 2 else "")
        sig = _short(g.signature) + (" (snapshot)" if g.kind == "snapshot" else "")
        rows.append([sig, str(g.count), _when(g.last.time), shown, " < ".join(g.top_frames()) or "-", g.last.path])
    return _table(headers, rows)


def render(records: list[CoreRecord], output: str = "", *, group: bool = False) -> str:
    """Render for ``-o``: "" (table), "wide", "json", "yaml"; ``group`` groups by signature."""
    if output in ("json", "yaml"):
        if group:
            data: dict = {"groups": [g.as_dict() for g in group_by_signature(records)]}
        else:
            data = {"cores": [r.as_dict() for r in newest_first(records)]}
        if output == "json":
            return json.dumps(data, indent=2, sort_keys=True)
        return yaml.safe_dump(data, sort_keys=True).rstrip("\n")
    if group:
        return render_groups(group_by_signature(records))
    return render_table(records, wide=output == "wide")


