"""A core's ``<name>.json``, with its disk space taken *before* the core streams in.

A core that fills its volume is kept as ``<name>.partial``; its metadata (why it was cut) must
still fit. So the metadata file is created next to the core's temporary file and given
:data:`RESERVE_BYTES` at once (``posix_fallocate``, else zeros written); once the core is
committed the document is written over that space, cut to its length and renamed beside the
core. A document larger than the reservation is tried as is and, when the volume is full,
replaced by its essential keys (:data:`ESSENTIAL_KEYS`), which always fit.
"""

from __future__ import annotations

import errno
import os
import secrets

from webhook.agent.writer import TMP_PREFIX, OutputFile
from webhook.constants import METADATA_SUFFIX

#: Space held for the metadata while the core streams (a document is ~2 KiB; saved binaries
#: and a signature make it larger, the signature being added later by its own rewrite).
RESERVE_BYTES = 64 * 1024
#: What a compacted document keeps: who, what, where, and why it was cut.
ESSENTIAL_KEYS = (
    "schema", "agent_version", "node", "namespace", "pod", "pod_uid", "container", "container_id", "image",
    "destination", "pid", "global_pid", "signal", "signal_name", "exe", "comm", "time", "time_iso", "path",
    "file", "size", "stored_size", "digest", "compression", "truncated", "truncated_reason", "spool_reason",
    "gcore", "gcore_request",
)


def reserved_tmp_name(core_name: str) -> str:
    """The reservation's temporary name: never ending in ``.json``, so no listing (the wrapper,
    the listing script, the page) takes a file still being filled for a core's metadata."""
    return f"{TMP_PREFIX}{secrets.token_hex(6)}.{core_name[:200]}.meta"


def compact(doc: dict) -> dict:
    """The essential keys of ``doc`` (``metadata_compacted`` says the rest did not fit)."""
    small = {k: doc[k] for k in ESSENTIAL_KEYS if k in doc}
    small["metadata_compacted"] = True
    return small


class ReservedMetadata:
    """The metadata file of one core: reserved at creation, written and named at :meth:`commit`."""

    def __init__(self, dirfd: int, name: str, *, mode: int = 0o644, reserve: int = RESERVE_BYTES,
                 tmp_name: str | None = None) -> None:
        stem = name[: -len(METADATA_SUFFIX)] if name.endswith(METADATA_SUFFIX) else name
        self.out = OutputFile(dirfd, name, mode=mode, tmp_name=tmp_name or reserved_tmp_name(stem))
        self.reserved = 0
        try:
            _reserve(self.out.fd, reserve)
            self.reserved = reserve
        except BaseException:
            self.out.discard()
            raise

    @property
    def tmp_name(self) -> str:
        return self.out.tmp_name

    def commit(self, name: str, doc: dict, dumps, *, uid: int | None = None, gid: int | None = None) -> str:
        """Write ``doc`` (``dumps(doc) -> bytes``) into the reserved space; rename to ``name``."""
        data = dumps(doc)
        try:
            self._write(data)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            self._write(dumps(compact(doc)))
        self.out.chown(uid, gid)
        return self.out.commit(name)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        offset = 0
        while offset < len(view):
            offset += os.pwrite(self.out.fd, view[offset:], offset)
        os.ftruncate(self.out.fd, len(data))

    def discard(self) -> None:
        """Remove the reservation unless it was committed (idempotent)."""
        self.out.discard()


def _reserve(fd: int, size: int) -> None:
    """Allocate ``size`` bytes for ``fd`` now; ENOSPC means the volume is already full."""
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    zeros = bytes(min(size, 1 << 16))
    done = 0
    while done < size:
        done += os.pwrite(fd, zeros[: size - done], done)

