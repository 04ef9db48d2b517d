"""Crash signatures: the backtrace of the crashing thread and a stable hash of its top frames.

The same bug crashing on many pods (different PIDs, ASLR, different hosts) must give one
signature, so it can be shown once with a count: only *function names* enter the hash, never
addresses, offsets, argument values or line numbers. The frames of the C library's abort
machinery (``raise``, ``abort``, ``__pthread_kill_*``) are dropped from the top first: they are
the same for every ``abort()`` and would hide the caller that matters.

The frames come from webhook/diagnose/unwind.py, which reads the core and the files the
process mapped as open fds (taken by the agent while the process was pinned, through the
kernel's own references: ``webhook/agent/mappings.py``), in a confined child.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field

from webhook.diagnose.unwind import FileRef
from webhook.diagnose.unwind_client import Unwinder, UnwindError

#: Default number of frames whose function names make the signature.
DEFAULT_TOP = 5

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

class SignatureError(RuntimeError):
    """No backtrace (unreadable core, a file the unwinder could not parse, timeout, memory cap)."""


@dataclass(frozen=True)
class Frame:
    """One backtrace frame, with the parts a signature may use split out (gdb's ``bt`` fields)."""

    index: int
    #: Function name; "??" when none is known.
    function: str
    #: Program counter (absent on inline frames, which share their caller's).
    address: str | None = None
    #: "file.c:LINE" when debug info is there.
    source: str | None = None
    #: Shared object the frame is in, when there is no source line to show.
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
    # Frames below main are the C runtime's start-up (__libc_start_main, _start): whether they
    # have names depends on whether the libraries were saved, so they never sign a crash.
    if "main" in picked:
        picked = picked[: picked.index("main") + 1]
    digest = hashlib.sha256("\n".join(picked).encode()).hexdigest()
    return digest, picked


def run_unwinder(core_fd: int, exe_fd: int = -1, files: list[FileRef] | None = None, *,
                 timeout: float = 120.0, unwinder: Unwinder | None = None, memory_bytes: int = 0) -> list[Frame]:
    """The crashing thread's frames (webhook/diagnose/unwind.py, through ``unwinder`` or a server
    started for this core alone). Raises :class:`SignatureError`.

    ``memory_bytes`` > 0 caps a one-off server's address space (a kept ``unwinder`` has its own):
    a core it cannot read fails alone rather than take the agent down.
    """
    own = unwinder is None
    server = Unwinder(memory_bytes=memory_bytes) if unwinder is None else unwinder
    try:
        found = server.frames(core_fd, exe_fd, files or [], timeout=timeout)
    except UnwindError as exc:
        cap = f" (address space capped at {server.memory_bytes >> 20} MiB)" if server.memory_bytes > 0 else ""
        raise SignatureError(f"no backtrace{cap}: {exc}") from exc
    finally:
        if own:
            server.close()
    try:
        return [Frame(int(f["index"]), str(f["function"]), f.get("address"), f.get("source"), f.get("library"))
                for f in found]
    except (KeyError, TypeError, ValueError) as exc:
        raise SignatureError(f"the unwinder's frames are malformed: {exc}") from exc


def analyze_fds(core_fd: int, exe_fd: int = -1, files: list[FileRef] | None = None, *, top: int = DEFAULT_TOP,
                timeout: float = 120.0, memory_bytes: int = 0, unwinder: Unwinder | None = None) -> Analysis:
    """Backtrace and signature of an open core (the agent runs this off the crash path)."""
    frames = run_unwinder(core_fd, exe_fd, files, timeout=timeout, memory_bytes=memory_bytes, unwinder=unwinder)
    if not frames:
        raise SignatureError("the core's crashing thread has no frames")
    digest, picked = signature_of(frames, top)
    return Analysis(digest, [f.text() for f in frames], picked, frames)


def analyze(executable: str | None, core: str, libraries: list[str] | None = None, *, top: int = DEFAULT_TOP,
            timeout: float = 120.0, memory_bytes: int = 0) -> Analysis:
    """:func:`analyze_fds` for files by path (a core of this host's; ``libraries`` are matched to
    the core's by build-id, the others stay unresolved)."""
    opened: list[int] = []
    try:
        core_fd = os.open(core, os.O_RDONLY | os.O_CLOEXEC)
        opened.append(core_fd)
        exe_fd = os.open(executable, os.O_RDONLY | os.O_CLOEXEC) if executable else -1
        if exe_fd >= 0:
            opened.append(exe_fd)
        files = []
        for path in libraries or []:
            opened.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
            files.append(FileRef(opened[-1]))
        return analyze_fds(core_fd, exe_fd, files, top=top, timeout=timeout, memory_bytes=memory_bytes)
    finally:
        for fd in opened:
            os.close(fd)
