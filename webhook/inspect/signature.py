"""Crash signatures: the backtrace of the crashing thread and a stable hash of its top frames.

The same bug crashing on many pods (different PIDs, ASLR, different hosts) must give one
signature, so it can be shown once with a count: only *function names* enter the hash, never
addresses, offsets, argument values or line numbers. The frames of the C library's abort
machinery (``raise``, ``abort``, ``__pthread_kill_*``) are dropped from the top first: they are
the same for every ``abort()`` and would hide the caller that matters.

Also here: :func:`save_mappings`, which copies the executable and the shared libraries a live
(pinned) process mapped next to its core, under a size budget, in a sysroot layout that
``gdb -ex "set sysroot DIR"`` understands, so the core stays debuggable after the image is gone.
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
    start = 0
    while start < len(keys) - 1 and keys[start] in NOISE_FUNCTIONS:
        start += 1
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
    cmd = [gdb, "-batch", "-nx", "-ex", "set pagination off", "-ex", "set width 0"]
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


# --- executable and libraries next to the core -----------------------------------------------


@dataclass(frozen=True)
class SavedFile:
    """One mapped file considered by :func:`save_mappings`."""

    #: Path as the process saw it (inside its own root).
    path: str
    size: int
    #: Where it was copied (under dest), or None when skipped.
    saved_as: str | None
    #: Why it was skipped ("budget", "unreadable: ...", "deleted"), None when saved.
    skipped: str | None = None


def _map_ranges(maps_text: str) -> dict[str, str]:
    """File paths from /proc/<pid>/maps text, first-mapped first, each once, with the
    "start-end" of its first mapping (the name of its /proc/<pid>/map_files entry).

    Pseudo mappings ([heap], [vdso], anon) are left out; "(deleted)" files are kept with the
    marker so the caller can say why they were not saved.
    """
    out: dict[str, str] = {}
    for line in maps_text.splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].startswith("/"):
            out.setdefault(parts[5].strip(), parts[0])
    return out


def save_mappings(pid: int, dest: str, budget: int, *, proc: str = "/proc") -> list[SavedFile]:
    """Copy the executable and shared objects of ``pid`` under ``dest`` (sysroot layout).

    The executable comes first, then libraries in mapping order; a file that does not fit in
    what is left of ``budget`` bytes is skipped (smaller ones after it may still fit). Files
    are read through ``/proc/<pid>/map_files/<range>`` (the exact inode mapped, even if the
    path was replaced since) and otherwise through ``/proc/<pid>/root/<path>``, so a
    container's own libraries are saved, not the host's.
    """
    base = os.path.join(proc, str(pid))
    with open(os.path.join(base, "maps")) as f:
        maps_text = f.read()
    ranges = _map_ranges(maps_text)
    paths = list(ranges)
    try:
        exe = os.readlink(os.path.join(base, "exe"))
    except OSError:
        exe = None
    if exe in paths:
        paths.remove(exe)
        paths.insert(0, exe)

    results: list[SavedFile] = []
    left = budget
    for path in paths:
        if path.endswith(" (deleted)"):
            results.append(SavedFile(path, 0, None, "deleted"))
            continue
        sources = [os.path.join(base, "map_files", ranges[path]), os.path.join(base, "root", path.lstrip("/"))]
        src = next((s for s in sources if os.path.exists(s)), None)
        if src is None:
            results.append(SavedFile(path, 0, None, "unreadable: not found"))
            continue
        try:
            size = os.stat(src).st_size
        except OSError as exc:
            results.append(SavedFile(path, 0, None, f"unreadable: {exc.strerror}"))
            continue
        if size > left:
            results.append(SavedFile(path, size, None, "budget"))
            continue
        target = os.path.join(dest, path.lstrip("/"))
        if os.path.commonpath([os.path.realpath(dest), os.path.realpath(os.path.dirname(target))]) != os.path.realpath(dest):
            results.append(SavedFile(path, size, None, "unsafe path"))
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            with open(src, "rb") as fin, open(target, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
        except OSError as exc:
            results.append(SavedFile(path, size, None, f"unreadable: {exc.strerror}"))
            continue
        left -= size
        results.append(SavedFile(path, size, target))
    return results
