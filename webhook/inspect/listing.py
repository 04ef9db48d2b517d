"""Reading cores' metadata files: the exec commands that list them, and their output parsed.

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

Records are :mod:`webhook.inspect.records`; grouping and output :mod:`webhook.inspect.rendering`.
"""

from __future__ import annotations

import json
import os

from webhook import constants
from webhook.inspect.records import CoreRecord, record_from_metadata

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
