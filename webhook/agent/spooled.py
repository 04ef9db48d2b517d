"""Who a spooled core belonged to: the record the helper kept while the process was pinned.

When the agent is down the static helper spools the core (webhook/native/coredump-helper.c) and,
while the crashing process is still pinned, copies what identifies it into the spool entry:
``cgroup`` (``/proc/<pid>/cgroup``: pod UID and container ID), ``environ`` (its ``COREDUMP_*``
items: what the pod asked for), ``exe`` and ``root`` (link targets, for ``%E``/``%f``). On
delivery the crash path resolves the pod from that record exactly as for a live crash (pod UID
and container ID through the pod watch, the environment only for the pattern and limits) and,
when a process of the same container still runs, writes into the pod's volume through it.
"""

from __future__ import annotations

import dataclasses
import logging
import os

from webhook.agent.procinfo import (
    MAX_ENVIRON_BYTES,
    CgroupIdentity,
    Identity,
    ProcessGone,
    ProcessInfo,
    container_process,
    identify,
    parse_cgroup,
    parse_environ,
    read_process,
    strip_root,
)

log = logging.getLogger(__name__)

#: The reason a spooled core without a usable record is filed under (as before the record).
SPOOLED = "spooled"

# The record's files in a spool entry (the static helper's names, coredump-helper.c record_process;
# the agent's own entries, webhook/agent/handback.py, use the same).
#: ``/proc/<pid>/cgroup`` as read.
RECORD_CGROUP = "cgroup"
#: ``/proc/<pid>/environ``'s ``COREDUMP_*`` items, each NUL-terminated.
RECORD_ENVIRON = "environ"
#: The target of ``/proc/<pid>/exe``.
RECORD_EXE = "exe"
#: The target of ``/proc/<pid>/root``.
RECORD_ROOT = "root"
#: The environment items kept in ``environ``: the registration, nothing else of the process's.
RECORD_ENVIRON_PREFIX = b"COREDUMP_"


def _read(entry: str, name: str, limit: int = 1 << 16) -> bytes | None:
    try:
        fd = os.open(os.path.join(entry, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read(limit)


def spooled_identity(entry: str, proc: str = "/proc") -> tuple[Identity, ProcessInfo | None]:
    """The identity recorded in a spool entry, and a live process of the same container to write
    through (its root and credentials; ``exe`` replaced by the crashed process's) or None.

    Without a record (an older helper, or /proc unreadable at the crash) the core is filed as
    before: unregistered, ``spooled``, at the node location.
    """
    raw_cgroup = _read(entry, RECORD_CGROUP) if entry else None
    if raw_cgroup is None:
        return Identity(None, CgroupIdentity(), SPOOLED), None
    cgroup = parse_cgroup(raw_cgroup.decode("utf-8", "replace"))
    env = parse_environ(_read(entry, RECORD_ENVIRON, MAX_ENVIRON_BYTES) or b"")
    ident = identify(env, cgroup)
    if ident.registration is not None:
        ident = Identity(ident.registration, cgroup, SPOOLED)
    live = None
    if ident.registration is not None and cgroup.pod_uid and cgroup.container_id:  # else: node location
        try:
            live = read_process(container_process(cgroup.container_id, cgroup.pod_uid, None, proc), proc)
        except (LookupError, ProcessGone, OSError):
            live = None
    if live is not None:
        exe_raw = (_read(entry, RECORD_EXE) or b"").decode("utf-8", "replace")
        root_raw = (_read(entry, RECORD_ROOT) or b"").decode("utf-8", "replace") or "/"
        exe = (strip_root(exe_raw, root_raw) or "") if exe_raw else ""
        live = dataclasses.replace(live, exe=exe)
    log.info("spooled core: identity from the helper's record",
             extra={"entry": os.path.basename(entry), "pod_uid": cgroup.pod_uid, "container_id": cgroup.container_id,
                    "registered": ident.registration is not None, "live_pid": live.global_pid if live else None})
    return ident, live
