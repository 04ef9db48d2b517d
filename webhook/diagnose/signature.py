"""Crash signatures: the backtrace of the crashing thread and a stable hash of its top frames.

The same bug crashing on many pods (different PIDs, ASLR, different hosts) must give one
signature, so it can be shown once with a count: only *function names* enter the hash, never
addresses, offsets, argument values or line numbers. The frames of the C library's abort
machinery (``raise``, ``abort``, ``__pthread_kill_*``) are dropped from the top first: they are
the same for every ``abort()`` and would hide the caller that matters.

The executable and libraries a pinned process mapped are kept by the agent
(``webhook/agent/binaries.py``), read only through the kernel's own references.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field

#: Default number of frames whose function names make the signature.
DEFAULT_TOP = 5
#: Marker printed between gdb's load chatter and the backtrace we parse.
_MARK = "@@coredump-webhook-backtrace@@"

#: Frames at the top of a backtrace that only say "the process signalled itself".
NOISE_FUNCTIONS = frozenset(
    {
        "raise",
        "abort",
        "gsignal",
        "pthread_kill",
        "__pthread_kill",
        "__pthread_kill_implementation",
        "__pthread_kill_internal",
        "__GI_raise",
        "__GI_abort",
        "__GI___pthread_kill",
        "__assert_fail_base",
        "__assert_fail",
        "__GI___assert_fail",
        "__libc_message",
        "__libc_message_impl",
        "__fortify_fail",
        "__chk_fail",
        "__stack_chk_fail",
        "malloc_printerr",
    }
)

_FRAME = re.compile(r"^#(?P<index>\d+)\s+(?:(?P<address>0x[0-9a-fA-F]+) in )?(?P<rest>.*)$")
_AT = re.compile(r"\) at (?P<source>\S+:\d+)\s*$")
_FROM = re.compile(r"\) from (?P<library>\S+)\s*$")


class SignatureError(RuntimeError):
    """gdb could not produce a backtrace (missing gdb, unreadable core, timeout)."""


@dataclass(frozen=True)
class Frame:
    """One backtrace frame as gdb printed it, with the parts a signature may use split out."""

    index: int
    #: Function name; "??" when gdb knows none.
    function: str
    #: Program counter, when gdb printed one (absent on frame #0 and on inline frames).
    address: str | None = None
    #: "file.c:LINE" when debug info is there.
    source: str | None = None
    #: Shared object the frame is in, when gdb printed "from LIB" (no symbols).
    library: str | None = None

    def key(self) -> str:
        """What this frame contributes to a signature: its name, or '??@library' when unknown."""
        if self.function != "??":
            return self.function
        return "??@" + os.path.basename(self.library) if self.library else "??"

    def text(self) -> str:
        """A short human line: '#4 g at abrt.c:3'."""
        line = f"#{self.index} {self.function}"
        if self.source:
            line += f" at {self.source}"
        elif self.library:
            line += f" from {self.library}"
        return line


@dataclass(frozen=True)
class Analysis:
    """The result stored in a core's metadata (``backtrace``, ``signature``)."""

    signature: str
    #: Human lines of the crashing thread's frames, innermost first.
    backtrace: list[str]
    #: The function names that were hashed, in order.
    signature_frames: list[str]
    frames: list[Frame] = field(default_factory=list)

    def metadata(self) -> dict:
        """The keys the agent merges into ``<core>.json``."""
        return {
            "signature": self.signature,
            "backtrace": self.backtrace,
            "signature_frames": self.signature_frames,
        }

    def as_dict(self) -> dict:
        return {**self.metadata(), "frames": [asdict(f) for f in self.frames]}


def parse_backtrace(text: str) -> list[Frame]:
    """Parse gdb ``bt`` output. Lines that are not frames ("Backtrace stopped", source lines,
    warnings) are ignored; a frame number seen again ends the list (gdb re-prints frame #0)."""
    if _MARK in text:
        text = text.split(_MARK, 1)[1]
    frames: list[Frame] = []
    seen: set[int] = set()
    for line in text.splitlines():
        m = _FRAME.match(line.strip())
        if not m:
            continue
        index = int(m["index"])
        if index in seen:
            break
        seen.add(index)
        rest = m["rest"]
        # The function name ends where gdb's argument list " (" starts; "??" has "()".
        function = rest.split(" (", 1)[0].strip() or "??"
        source = library = None
        if at := _AT.search(rest):
            source = at["source"]
        elif frm := _FROM.search(rest):
            library = frm["library"]
        frames.append(Frame(index, function, m["address"], source, library))
    return frames


def signature_of(frames: list[Frame], top: int = DEFAULT_TOP) -> tuple[str, list[str]]:
    """sha256 (hex) of the top ``top`` frame keys after the noise frames, cut after ``main``;
    and those keys."""
    keys = [f.key() for f in frames]
    # The abort machinery is dropped from the top: its named frames, and the unnamed ones among
    # them (a C library without debug info has no name for __pthread_kill_implementation or
    # __assert_fail_base), so the same abort() signs alike whether or not its libc has symbols.
    # An unnamed frame with no noise frame below it is the crash's own and stays.
    start = i = 0
    while i < len(keys) - 1 and (keys[i] in NOISE_FUNCTIONS or keys[i].startswith("??")):
        i += 1
        if keys[i - 1] in NOISE_FUNCTIONS:
            start = i
    picked = keys[start : start + top]
    # Frames below main are the C runtime's start-up (__libc_start_main, _start): whether gdb
    # can name them depends on whether the libraries were saved, so they never sign a crash.
    if "main" in picked:
        picked = picked[: picked.index("main") + 1]
    digest = hashlib.sha256("\n".join(picked).encode()).hexdigest()
    return digest, picked


def gdb_command(
    executable: str | None, core: str, *, sysroot: str | None = None, gdb: str = "gdb"
) -> list[str]:
    """The gdb invocation: batch, no init files, no pager, the current (crashing) thread's bt.

    The kernel writes the crashing thread's NT_PRSTATUS first, and gdb selects that thread,
    so a plain ``bt`` is the crashing thread's.
    """
    # No separate debug files: only what the process itself mapped (through ``sysroot``) names
    # its frames. The agent's own /usr/lib/debug describes the agent's image, not the crashed
    # container; reading it made signatures depend on the node's packages, and it was half of
    # gdb's CPU on a core (benchmarks/bench_vs_systemd.py).
    cmd = [gdb, "-batch", "-nx", "-iex", "set debug-file-directory", "-ex", "set pagination off", "-ex", "set width 0"]
    cmd += ["-ex", "set confirm off", "-ex", "set debuginfod enabled off"]
    if sysroot:
        cmd += ["-ex", f"set sysroot {sysroot}"]
    cmd += ["-ex", f"echo \\n{_MARK}\\n", "-ex", "bt"]
    return cmd + ([executable, core] if executable else ["--core", core])


def run_gdb(
    executable: str | None,
    core: str,
    *,
    sysroot: str | None = None,
    gdb: str = "gdb",
    timeout: float = 120.0,
    memory_bytes: int = 0,
) -> str:
    """Run gdb over a core and return its output. Raises :class:`SignatureError`.

    ``memory_bytes`` > 0 caps gdb's address space (and its CPU time at ``timeout``) through
    webhook/rlimited.py: the agent's gdb must fail alone rather than take the agent down.
    """
    if shutil.which(gdb) is None and not os.path.exists(gdb):
        raise SignatureError(f"{gdb} not found: install gdb to compute crash signatures")
    try:
        cmd = gdb_command(executable, core, sysroot=sysroot, gdb=gdb)
        if memory_bytes > 0:
            from webhook.rlimited import command

            cmd = command(cmd, memory_bytes, int(timeout) + 1)
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise SignatureError(f"gdb took more than {timeout:.0f}s on {core}") from exc
    if _MARK not in proc.stdout:
        cap = f" (address space capped at {memory_bytes >> 20} MiB)" if memory_bytes > 0 and proc.returncode else ""
        raise SignatureError(f"gdb failed on {core}{cap}: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def analyze(
    executable: str | None,
    core: str,
    *,
    top: int = DEFAULT_TOP,
    sysroot: str | None = None,
    gdb: str = "gdb",
    timeout: float = 120.0,
    memory_bytes: int = 0,
) -> Analysis:
    """Backtrace and signature of a core (the agent runs this off the crash path)."""
    frames = parse_backtrace(run_gdb(executable, core, sysroot=sysroot, gdb=gdb, timeout=timeout,
                                     memory_bytes=memory_bytes))
    if not frames:
        raise SignatureError(f"gdb printed no frames for {core}")
    digest, picked = signature_of(frames, top)
    return Analysis(digest, [f.text() for f in frames], picked, frames)
