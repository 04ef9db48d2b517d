"""Cores as rows: read metadata files, sort newest first, group by signature, render.

The metadata files (``<core>.json``, written by the agent next to each core) are read either
through an exec stream in the pod, or from a local directory (:func:`scan_directory`, the page
and the node-side view). In the pod there are two readers, and :func:`parse_listing` takes the
output of either:

- the coredump wrapper the webhook put in every prepared container
  (:func:`wrapper_listing_command`, no shell needed: distroless and scratch images work), whose
  output is length-framed (:data:`webhook.constants.WRAPPER_LIST_MAGIC`, format in
  ``webhook/native/coredump-wrapper.c``);
- :data:`LISTING_SCRIPT`, plain POSIX ``sh`` + ``find`` + ``cat`` (busybox is enough), for
  containers without the wrapper and for the reader pod on a claim.

Everything after that is pure.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field

import yaml

from webhook import constants
from webhook import digest as digests
from webhook.inspect.download import human_size

#: Record separator in the listing stream (ASCII RS: never in a path we care about or in JSON).
RS = "\x1e"

#: Prints, for each metadata file under the given directories: RS, its path, TAB,
#: "present"/"missing" (is the core itself there), newline, then the file's content.
LISTING_SCRIPT = r"""
for d in "$@"; do
  [ -d "$d" ] || continue
  find "$d" -maxdepth 8 -type f -name '*.json' 2>/dev/null
done | while IFS= read -r f; do
  core="${f%.json}"
  if [ -e "$core" ]; then state=present; else state=missing; fi
  printf '\036%s\t%s\n' "$f" "$state"
  cat "$f" 2>/dev/null
  printf '\n'
done
"""

#: Metadata keys that mark a JSON file as a core's metadata (other JSON files are ignored): ``size``
#: and one of these (``digest``; ``sha256`` in metadata written before it, null when not computed).
_REQUIRED = ("size",)
_DIGEST_KEYS = (digests.KEY, digests.LEGACY_KEY)


def listing_command(directories: list[str]) -> list[str]:
    """The exec command that lists metadata under ``directories`` (passed as argv, unquoted)."""
    return ["sh", "-c", LISTING_SCRIPT, "coredump-list", *directories]


def core_path_command(path: str, offset: int = 0) -> list[str]:
    """The exec command that streams a core from ``offset`` (``tail -c +N`` is 1-based)."""
    return ["tail", "-c", f"+{offset + 1}", path]


def wrapper_listing_command(directories: list[str], wrapper: str = constants.WRAPPER_PATH) -> list[str]:
    """The exec argv that lists metadata through the wrapper's list mode (no shell involved)."""
    return [wrapper, constants.WRAPPER_LIST_FLAG, *directories]


def wrapper_cat_command(path: str, offset: int = 0, wrapper: str = constants.WRAPPER_PATH) -> list[str]:
    """The exec argv that streams a core from ``offset`` through the wrapper's cat mode."""
    return [wrapper, constants.WRAPPER_CAT_FLAG, path, str(offset)]


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


def record_from_metadata(meta: object, meta_path: str, *, present: bool = True, namespace: str = "", pod: str = "") -> CoreRecord | None:
    """A record from one metadata dict; None when the JSON is not a core's metadata."""
    if (not isinstance(meta, dict) or not all(k in meta for k in _REQUIRED)
            or not any(k in meta for k in _DIGEST_KEYS)):
        return None
    shown_ns, shown_pod = _names(meta, namespace, pod)
    core_path = meta_path[: -len(constants.METADATA_SUFFIX)] if meta_path.endswith(constants.METADATA_SUFFIX) else meta_path
    try:
        when = float(meta.get("time") or 0)
    except (TypeError, ValueError):
        when = 0.0
    backtrace = meta.get("backtrace") or []
    return CoreRecord(
        namespace=shown_ns,
        pod=shown_pod,
        container=str(meta.get("container") or "") if is_verified(meta) else "",
        time=when,
        signal=_num(meta.get("signal")),
        signal_name=str(meta.get("signal_name") or (f"SIG{meta['signal']}" if meta.get("signal") else "")),
        size=_num(meta.get("size")),
        digest=digests.of_metadata(meta),
        path=str(meta.get("path") or core_path),
        location=core_path,
        signature=str(meta.get("signature") or ""),
        backtrace=[str(x) for x in backtrace] if isinstance(backtrace, list) else [],
        node=str(meta.get("node") or ""),
        image=str(meta.get("image") or ""),
        exe=str(meta.get("exe") or ""),
        truncated=bool(meta.get("truncated")),
        truncated_reason=str(meta.get("truncated_reason") or ""),
        compression=str(meta.get("compression") or ""),
        stored_size=_num(meta.get("stored_size"), _num(meta.get("size"))),
        present=present,
        kind="snapshot" if meta.get("gcore") or meta.get("snapshot") else "crash",
        metadata=meta,
    )


#: One metadata file as a reader saw it: (path, state, body). ``state`` is "present" or
#: "missing" (is the core file there?) with the file's text as body, or "error" with the reason
#: the reader skipped ``path`` as body.
Entry = tuple[str, str, str]

_FRAMED_KINDS = (b"present", b"missing", b"error")


def _script_entries(text: str) -> tuple[list[Entry], list[str]]:
    """Entries of :data:`LISTING_SCRIPT` output (RS-separated, path TAB state, content)."""
    entries: list[Entry] = []
    for chunk in text.split(RS)[1:]:
        header, _, body = chunk.partition("\n")
        path, _, state = header.partition("\t")
        entries.append((path, "missing" if state.strip() == "missing" else "present", body))
    return entries, []


def _framed_entries(data: bytes) -> tuple[list[Entry], list[str]]:
    """Entries of the wrapper's framed listing; a damaged or cut stream keeps what came before."""
    entries: list[Entry] = []
    pos = len(constants.WRAPPER_LIST_MAGIC) + 1
    while True:
        nl = data.find(b"\n", pos)
        if nl < 0:
            return entries, [f"listing cut short after {len(entries)} files (no end marker)"]
        head = data[pos:nl].split(b" ")
        if len(head) == 2 and head[0] == b"end":
            if head[1] != str(len(entries)).encode():
                return entries, [f"listing damaged: it announces {head[1].decode(errors='replace')} files, {len(entries)} read"]
            return entries, []
        if len(head) != 3 or head[0] not in _FRAMED_KINDS or not (head[1].isdigit() and head[2].isdigit()):
            return entries, [f"listing damaged at byte {pos}: {data[pos:nl][:80]!r}"]
        start = nl + 1
        cut = start + int(head[1])
        end = cut + int(head[2])
        if data[end:end + 1] != b"\n":
            return entries, [f"listing cut short after {len(entries)} files"]
        entries.append((data[start:cut].decode(errors="replace"), head[0].decode(), data[cut:end].decode(errors="replace")))
        pos = end + 1


def listing_entries(output: bytes | str) -> tuple[list[Entry], list[str]]:
    """The entries of either reader's output: the wrapper's frames (bytes starting with
    :data:`~webhook.constants.WRAPPER_LIST_MAGIC`) or :data:`LISTING_SCRIPT`'s text."""
    magic = constants.WRAPPER_LIST_MAGIC.encode() + b"\n"
    if isinstance(output, bytes):
        if output.startswith(magic):
            return _framed_entries(output)
        output = output.decode(errors="replace")
    return _script_entries(output)


def parse_listing(output: bytes | str, *, namespace: str = "", pod: str = "") -> tuple[list[CoreRecord], list[str]]:
    """Records from a listing (the wrapper's frames, as bytes, or :data:`LISTING_SCRIPT`'s
    output); unreadable, skipped or non-JSON files become warnings, never errors."""
    records: list[CoreRecord] = []
    entries, problems = listing_entries(output)
    where = f"{namespace}/{pod}: " if namespace or pod else ""
    warnings = [where + p for p in problems]
    for path, state, body in entries:
        if state == "error":
            warnings.append(f"{where}{path}: {body}")
            continue
        try:
            meta = json.loads(body) if body.strip() else None
        except json.JSONDecodeError as exc:
            warnings.append(f"{where}{path}: not valid JSON ({exc.msg})")
            continue
        rec = record_from_metadata(meta, path, present=state == "present", namespace=namespace, pod=pod)
        if rec is not None:
            records.append(rec)
    return records, warnings


def scan_directory(root: str) -> tuple[list[CoreRecord], list[str]]:
    """Records from metadata files under a local directory (page, node fallback location)."""
    records: list[CoreRecord] = []
    warnings: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in sorted(filenames):
            if not fn.endswith(constants.METADATA_SUFFIX):
                continue
            full = os.path.join(dirpath, fn)
            try:
                rec = read_metadata_file(full)
            except (OSError, ValueError) as exc:
                warnings.append(f"{full}: {exc}")
                continue
            if rec is not None:
                records.append(rec)
    return records, warnings


def read_metadata_file(meta_path: str) -> CoreRecord | None:
    """The record of one local ``<core>.json`` (None when it is not a core's metadata).

    Raises OSError when it cannot be read and ValueError when it is not JSON.
    """
    with open(meta_path) as f:
        meta = json.load(f)
    core = meta_path[: -len(constants.METADATA_SUFFIX)]
    return record_from_metadata(meta, meta_path, present=os.path.exists(core))


def newest_first(records: list[CoreRecord]) -> list[CoreRecord]:
    return sorted(records, key=lambda r: (-r.time, r.namespace, r.pod, r.path))


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


def render_table(records: list[CoreRecord], *, wide: bool = False) -> str:
    """kubectl-style table, newest first; ``wide`` adds node, count per signature, top frame."""
    records = newest_first(records)
    counts: dict[str, int] = {}
    for r in records:
        if r.signature:
            counts[r.signature] = counts.get(r.signature, 0) + max(1, r.count)
    headers = ["NAMESPACE", "POD", "CONTAINER", "TIME", "SIGNAL", "SIZE", "SIGNATURE", "CORE"]
    named = wide and any(r.coredump for r in records)
    if wide:
        headers += ["COUNT", "NODE", "TOP FRAME"] + (["COREDUMP"] if named else [])
    rows = []
    for r in records:
        row = [r.namespace, r.pod, r.container, _when(r.time), r.signal_name or "-", _size(r), _short(r.signature), r.path]
        if wide:
            top = Group(r.signature, [r]).top_frames(1)
            row += [str(counts.get(r.signature, 1)), r.node or "-", top[0] if top else "-"]
            if named:
                row.append(r.coredump or "-")
        rows.append(row)
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


def find_record(records: list[CoreRecord], core: str) -> CoreRecord | None:
    """Match ``coredump get``'s CORE argument: a full path, a file name, or a digest prefix (its
    hex digits, or with the algorithm: ``xxh128:3f2a...``)."""
    for r in records:
        if core in (r.path, r.name, r.location):
            return r
    hits = [r for r in records if r.digest and len(core.partition(":")[2] or core) >= 8
            and (r.digest.startswith(core) or digests.hex_part(r.digest).startswith(core))]
    return hits[0] if len(hits) == 1 else None
