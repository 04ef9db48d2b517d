"""The digest of a core's original bytes: which algorithm, and how it is written down.

The agent records it in a core's metadata as ``digest: "<algorithm>:<hex>"`` (self-describing,
as OCI writes ``sha256:<hex>``), computed after the crashed process was released; ``coredump
get`` checks a download against it. The metadata sits in the same volume as the core, so the
digest guards against a damaged or incomplete copy, not against tampering: a fast
non-cryptographic hash does that job. ``xxh128`` (XXH3, 128 bits: the same value the standard
``xxh128sum`` tool prints) is the default, about three times cheaper than ``sha256`` here;
``sha256`` stays available. Metadata written before the ``digest`` key has ``sha256: <hex>``
only, which readers still accept (:func:`of_metadata`).

Pure: the agent and the inspection CLI both import it.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

#: The default algorithm.
XXH128 = "xxh128"
SHA256 = "sha256"
ALGORITHMS = (XXH128, SHA256)
DEFAULT = XXH128
#: Hex digits of each algorithm's digest.
HEX_LENGTH = {XXH128: 32, SHA256: 64}
#: Metadata key of the digest (and the key older metadata has instead: a bare sha256 hex).
KEY = "digest"
LEGACY_KEY = "sha256"
#: Longest "algorithm:hex" value (the CRD's maxLength).
MAX_LENGTH = max(len(a) + 1 + n for a, n in HEX_LENGTH.items())
_HEX = frozenset("0123456789abcdef")


class Hasher(Protocol):
    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...

    def hexdigest(self) -> str: ...


def check(algorithm: str) -> str:
    """``algorithm`` when known; a clear error otherwise (the agent refuses to start with it)."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"digest must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}")
    return algorithm


def new(algorithm: str) -> Hasher:
    """A fresh hasher for ``algorithm`` (ValueError when unknown)."""
    if check(algorithm) == XXH128:
        import xxhash

        return xxhash.xxh3_128()
    return hashlib.sha256()


def format_digest(algorithm: str, hexdigest: str) -> str:
    """``"xxh128:<hex>"``: how the metadata records it."""
    return f"{algorithm}:{hexdigest}"


def parse(value: object) -> tuple[str, str] | None:
    """(algorithm, hex) of a recorded digest; None unless it is well formed and known."""
    if not isinstance(value, str):
        return None
    algorithm, sep, hexdigest = value.partition(":")
    if not sep or algorithm not in HEX_LENGTH:
        return None
    if len(hexdigest) != HEX_LENGTH[algorithm] or not set(hexdigest) <= _HEX:
        return None
    return algorithm, hexdigest


def of_metadata(meta: dict) -> str:
    """The digest a core's metadata (or an index record's spec) records, as ``"<algorithm>:<hex>"``:
    its ``digest`` key, else an older file's bare ``sha256``; "" when none was computed."""
    if not isinstance(meta, dict):
        return ""
    if parse(meta.get(KEY)):
        return str(meta[KEY])
    legacy = meta.get(LEGACY_KEY)
    if parse(format_digest(SHA256, legacy) if isinstance(legacy, str) else None):
        return format_digest(SHA256, str(legacy))
    return ""


def hex_part(value: str) -> str:
    """The hex digits of a recorded digest ("" when there is none)."""
    parsed = parse(value)
    return parsed[1] if parsed else ""


def hasher_for(value: str) -> Hasher:
    """A fresh hasher of the algorithm a recorded digest names (ValueError when malformed)."""
    parsed = parse(value)
    if parsed is None:
        raise ValueError(f"not a digest: {value!r}")
    return new(parsed[0])
