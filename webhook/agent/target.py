"""Where a crash's core goes: the pod's own volume or the node location, and its files there.

A registered pod's core is named by its pattern, expanded as the kernel would (a relative
pattern only below the process's proven cwd), within the smaller of the node's and the pod's
size caps; anything else goes to the node location, filed by verified names or by pod UID. The
files are created in the target directory (as the crashing process, for a pod): the temporary
core and its metadata, with the metadata's space reserved. A pod target that cannot take the
core raises :class:`NoPodTarget` before anything was read: the node location gets it then.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import re
import threading
from dataclasses import dataclass
from typing import Any

from webhook import constants
from webhook.agent.crash_request import CrashRequest
from webhook.agent.creds import Credentials
from webhook.agent.identity import UNVERIFIED_DIR, Resolved
from webhook.agent.metafile import ReservedMetadata
from webhook.agent.procinfo import Identity, ProcessInfo
from webhook.agent.settings import AgentSettings
from webhook.agent.stream import parse_size
from webhook.agent.stream_limits import REASON_RLIMIT
from webhook.agent.writer import OutputFile, SafeRoot
from webhook.pattern import PatternError, expand, parse

log = logging.getLogger(__name__)


@dataclass
class Target:
    """Where to write: a root, a directory inside it, a file name, and the limits."""

    root_path: str  # what SafeRoot opens (the agent's path of the root)
    directory: str  # inside the root
    name: str
    destination: str  # "pod" or "node"
    max_bytes: int | None
    max_reason: str
    compression: str
    uid: int | None
    gid: int | None
    pattern: str
    #: The crashing process's filesystem credentials: the pod's directories, core, metadata and
    #: saved binaries are created with them (None: the node location, created as the agent).
    creds: Credentials | None = None

    @property
    def pod(self) -> bool:
        return self.destination == "pod"


#: errnos that mean "the crashing process itself could not create this here".
DENIED = (errno.EACCES, errno.EPERM)

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def component(value: str | None, fallback: str) -> str:
    """A single, harmless path component for the node location."""
    value = _SAFE_NAME.sub("_", value or "")[:128].strip(".")
    return value or fallback


class TargetPlanner:
    """Where each crash's core goes (safe to call from several threads at once)."""

    def __init__(self, settings: AgentSettings, proc: str = "/proc") -> None:
        self.settings = settings
        self.proc = proc
        self.node_pattern = parse(settings.node_core_name)
        self._dropped_seen: set[str] = set()
        self._dropped_lock = threading.Lock()

    def pod_target(self, request: CrashRequest, proc: ProcessInfo, ident: Identity) -> Target:
        reg = ident.registration
        assert reg is not None
        try:
            pattern = parse(reg.pattern, kernel=True)  # named as the kernel would name it
        except PatternError as exc:
            raise NoPodTarget("invalid_pattern", exc.reason) from None
        if pattern.dropped:
            self._log_dropped_once(pattern, request)
        expanded = expand(pattern, request.crash_info(proc.exe), append_pid=self.settings.append_pid)
        if pattern.is_relative:
            if request.spooled:  # the crashed process's cwd is gone with it
                raise NoPodTarget("relative_pattern_spooled", "a relative pattern needs the crashed process's cwd")
            cwd = self._checked_cwd(request, proc)
            expanded = posixpath.join(cwd, expanded)
        directory, name = posixpath.split(expanded)
        # The smaller of the node's and the pod's caps; 0 (or nothing) is no cap, never "no limit
        # at all" for the other (COREDUMP_MAX_SIZE=0 must not lift the node's maximum).
        caps = [c for c in (self.settings.max_core_bytes, parse_size(reg.max_size)) if c]
        max_bytes = min(caps) if caps else None
        compression = (reg.compress or self.settings.compression).strip().lower()
        if compression not in ("zstd", "none"):
            compression = self.settings.compression
        if proc.credentials is None:
            raise NoPodTarget("root_unreachable",
                              f"credentials of {request.global_pid} unreadable: no filesystem uid/gid in its status")
        # proc is the crashed process, or for a spooled core a live process of the same container
        return Target(root_path=f"{self.proc}/{proc.global_pid}/root", directory=directory or "/", name=name,
                      destination="pod", max_bytes=max_bytes, max_reason="size_limit",
                      compression=compression, uid=request.uid, gid=request.gid, pattern=reg.pattern,
                      creds=proc.credentials)

    def _log_dropped_once(self, pattern: Any, request: CrashRequest) -> None:
        """The kernel drops unknown specifiers; so do we, and say so once per pattern."""
        with self._dropped_lock:
            if pattern.raw in self._dropped_seen:
                return
            self._dropped_seen.add(pattern.raw)
        log.warning("pattern has specifiers the kernel drops; dropped them too",
                    extra={"pattern": pattern.raw, "dropped": list(pattern.dropped), "pid": request.global_pid})

    def _checked_cwd(self, request: CrashRequest, proc: ProcessInfo) -> str:
        """The process cwd inside its root, proven to be the same directory as its real cwd.

        ``/proc/<pid>/cwd`` is a magic link we must not follow inside the container, and the
        cwd may even lie outside the root (chroot without chdir): we resolve the cwd's path
        from the root with RESOLVE_IN_ROOT and check it is the very directory (st_dev,
        st_ino) the process has as cwd. Anything else is refused (the node location gets it).
        """
        if not proc.cwd:
            raise NoPodTarget("cwd_outside_root", "the working directory is not below the process root")
        try:
            real = os.stat(f"{self.proc}/{request.global_pid}/cwd")
            with SafeRoot.open(f"{self.proc}/{request.global_pid}/root") as root:
                seen = root.stat(proc.cwd)
        except OSError as exc:
            raise NoPodTarget("cwd_unreachable", str(exc)) from None
        if (real.st_dev, real.st_ino) != (seen.st_dev, seen.st_ino):
            raise NoPodTarget("cwd_outside_root", f"{proc.cwd} inside the root is not the process cwd")
        return proc.cwd

    def node_target(self, request: CrashRequest, proc: ProcessInfo | None, who: Resolved,
                    registered: bool) -> Target:
        short_id = (who.container_id or "unknown-container")[:12]
        parts: tuple[str, ...]
        if who.pod_uid and who.verified:
            parts = (component(who.namespace, "_unknown-namespace"), component(who.pod, f"pod-{who.pod_uid}"),
                     component(who.container, short_id))
        elif who.pod_uid:  # names not verified: filed by pod UID and container ID only
            parts = (UNVERIFIED_DIR, component(f"pod-{who.pod_uid}", "pod"), component(short_id, "container"))
        elif proc is None:
            parts = ("unknown",)
        else:
            parts = ("host",)
        name = expand(self.node_pattern, request.crash_info(proc.exe if proc else ""), append_pid=False)
        name = component(name, f"core.{request.global_pid}.{request.time}")
        if registered or proc is None:  # a pod's opt-in (or unknown): its full core up to the maximum
            max_bytes, reason = self.settings.max_core_bytes, "size_limit"
        else:  # %c honoured: truncate at the soft limit, like systemd-coredump
            max_bytes = min(self.settings.max_core_bytes, request.rlimit_core)
            reason = REASON_RLIMIT if request.rlimit_core < self.settings.max_core_bytes else "size_limit"
        return Target(root_path=self.settings.node_cores_dir, directory="/" + "/".join(parts), name=name,
                      destination="node", max_bytes=max_bytes or None,
                      max_reason=reason, compression=self.settings.compression, uid=None, gid=None,
                      pattern=self.settings.node_core_name)


class NoPodTarget(Exception):
    """The pod's destination cannot take the core; nothing was read yet."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def create_files(root: SafeRoot, target: Target, names: tuple[str | None, str | None] = (None, None), *,
                 keep_free_bytes: int = 0) -> tuple[int, OutputFile, ReservedMetadata]:
    """The target directory's fd (made when missing), the temporary core file in it, and the
    metadata file with its space reserved (metafile.py: a full volume still gets the reason).

    For a pod, a refusal becomes :class:`NoPodTarget`: ``permission_denied`` when the
    process's own credentials may not create it (EACCES/EPERM), else why the directory or
    the file is unusable.
    """
    pod = target.pod
    try:
        dirfd = root.open_dir(target.directory, uid=target.uid, gid=target.gid)
    except OSError as exc:
        if pod:
            reason = "permission_denied" if exc.errno in DENIED else "directory_unusable"
            raise NoPodTarget(reason, f"{target.directory}: {exc.strerror or exc}") from None
        raise
    try:
        if pod:
            st = os.fstatvfs(dirfd)
            if st.f_bavail * st.f_frsize <= keep_free_bytes:
                raise NoPodTarget("pod_volume_full",
                                   f"{target.directory} has less than keep_free_bytes free")
        try:
            meta_out = ReservedMetadata(dirfd, target.name + constants.METADATA_SUFFIX, mode=0o644,
                                        tmp_name=names[1])
        except OSError as exc:
            if pod:
                reason = ("permission_denied" if exc.errno in DENIED else
                          "pod_volume_full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "create_failed")
                raise NoPodTarget(reason, f"{target.directory}: {exc.strerror or exc}") from None
            raise
        try:
            return dirfd, OutputFile(dirfd, target.name, mode=0o600, tmp_name=names[0]), meta_out
        except OSError as exc:
            meta_out.discard()
            if pod:
                reason = "permission_denied" if exc.errno in DENIED else "create_failed"
                raise NoPodTarget(reason, f"{target.directory}: {exc.strerror or exc}") from None
            raise
    except BaseException:
        os.close(dirfd)
        raise
