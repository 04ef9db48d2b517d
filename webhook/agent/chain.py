"""Hand a core to the pipe helper that was there before us (systemd-coredump, apport...).

The previous ``|program args`` pattern is split on spaces first and each argument expanded
afterwards, as the kernel does since 5.3; the program gets the core on stdin, an almost empty
environment and ``/`` as cwd, like a kernel-run helper. ``%F`` (a pidfd, 6.16) is honoured by
opening one and passing it down; specifiers the kernel would not know are dropped.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass

from webhook.pattern import SPECIFIERS, CrashInfo, Pattern, Token, expand


class ChainError(Exception):
    """The previous helper could not be run."""


def is_pipe(pattern: str | None) -> bool:
    return pattern is not None and pattern.lstrip().startswith("|")


def split_pipe(pattern: str) -> list[str]:
    """``|/usr/lib/systemd/systemd-coredump %P %u`` -> its raw arguments (program first)."""
    body = pattern.strip()
    if not body.startswith("|"):
        raise ChainError(f"not a pipe pattern: {pattern!r}")
    args = body[1:].strip().split()
    if not args:
        raise ChainError("the pipe pattern names no program")
    return args


def _tokens(arg: str) -> tuple[list[Token], bool]:
    tokens: list[Token] = []
    text: list[str] = []
    wants_pidfd = False
    i = 0
    while i < len(arg):
        ch = arg[i]
        if ch == "%" and i + 1 < len(arg):
            spec = arg[i + 1]
            i += 2
            if spec == "F":
                text.append("\0F")  # placeholder, replaced by the pidfd number
                wants_pidfd = True
                continue
            if spec not in SPECIFIERS:
                continue  # the kernel drops an unknown specifier
            if text:
                tokens.append(Token(text="".join(text)))
                text = []
            tokens.append(Token(spec=spec))
            continue
        if ch == "%":  # a lone trailing '%' is dropped too
            i += 1
            continue
        text.append(ch)
        i += 1
    if text:
        tokens.append(Token(text="".join(text)))
    return tokens, wants_pidfd


def expand_args(pattern: str, info: CrashInfo, pidfd: int | None = None) -> list[str]:
    """The argv the kernel would give the previous helper for ``info``."""
    out = []
    for raw in split_pipe(pattern):
        tokens, _ = _tokens(raw)
        value = expand(Pattern(raw=raw, tokens=tuple(tokens)), info, append_pid=False)
        out.append(value.replace("\0F", str(pidfd) if pidfd is not None else ""))
    return out


def wants_pidfd(pattern: str) -> bool:
    return any(_tokens(a)[1] for a in split_pipe(pattern))


@dataclass(frozen=True)
class ChainResult:
    argv: tuple[str, ...]
    returncode: int | None  # None: killed at the deadline
    stderr: str


def _host_root() -> str | None:
    """When the agent runs in its own mount namespace, PID 1's root is the host's."""
    try:
        own, init = os.stat("/"), os.stat("/proc/1/root")
    except OSError:
        return None
    return None if (own.st_dev, own.st_ino) == (init.st_dev, init.st_ino) else "/proc/1/root"


def run_previous(pattern: str, info: CrashInfo, core_fd: int, *, timeout: float,
                 global_pid: int) -> ChainResult:
    """Run the previous helper with ``core_fd`` as its stdin and wait (at most ``timeout``)."""
    pidfd = None
    if wants_pidfd(pattern):
        try:
            pidfd = os.pidfd_open(global_pid)
        except OSError:
            pidfd = None
    try:
        argv = expand_args(pattern, info, pidfd)
        root = _host_root()

        def enter_host() -> None:  # pragma: no cover - runs in the child
            if root:
                os.chroot(root)
                os.chdir("/")

        try:
            proc = subprocess.Popen(argv, stdin=core_fd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    cwd="/", env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                                    pass_fds=(pidfd,) if pidfd is not None else (),
                                    preexec_fn=enter_host if root else None)
        except OSError as exc:
            raise ChainError(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc
        deadline = time.monotonic() + timeout
        try:
            _out, err = proc.communicate(timeout=max(0.0, deadline - time.monotonic()))
            return ChainResult(tuple(argv), proc.returncode, err[-2000:].decode("utf-8", "replace"))
        except subprocess.TimeoutExpired:
            proc.kill()
            _out, err = proc.communicate()
            return ChainResult(tuple(argv), None, err[-2000:].decode("utf-8", "replace"))
    finally:
        if pidfd is not None:
            os.close(pidfd)
