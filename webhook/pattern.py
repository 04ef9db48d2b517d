"""core(5) patterns: parse, validate and expand them exactly as the kernel does.

One module for both sides: the webhook validates the annotation at admission, the node agent
expands the very same parsed pattern at crash time (``fs/coredump.c: format_corename``).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

#: The kernel keeps core_pattern in a 128-byte buffer with its NUL: 127 usable characters.
MAX_PATTERN_LENGTH = 127

#: Every specifier core(5) documents, with what it stands for.
SPECIFIERS: dict[str, str] = {
    "%": "a literal %",
    "c": "soft RLIMIT_CORE of the crashing process",
    "C": "CPU the crash happened on",
    "d": "dump mode (PR_SET_DUMPABLE)",
    "e": "comm (thread name, at most 15 characters)",
    "E": "executable path with / replaced by !",
    "f": "executable file name",
    "g": "real GID",
    "h": "hostname (the pod's own)",
    "i": "TID in the process's PID namespace",
    "I": "TID in the initial PID namespace",
    "p": "PID in the process's PID namespace",
    "P": "PID in the initial PID namespace",
    "s": "signal number",
    "t": "time of dump, seconds since the Epoch",
    "u": "real UID",
}

#: Specifiers whose value the kernel escapes with ``cn_esc_printf`` ('/' becomes '!', and a
#: value of "", "." or ".." is made harmless).
_ESCAPED = frozenset("eEfh")


class PatternError(ValueError):
    """The pattern is not acceptable; ``reason`` says why in words a user understands."""

    def __init__(self, pattern: str, reason: str) -> None:
        super().__init__(f"invalid core pattern {pattern!r}: {reason}")
        self.pattern = pattern
        self.reason = reason


@dataclass(frozen=True)
class Token:
    """A piece of a pattern: literal text (``spec`` is None) or one ``%x`` specifier."""

    text: str = ""
    spec: str | None = None


@dataclass(frozen=True)
class Pattern:
    """A validated pattern. Build it with :func:`parse`."""

    raw: str
    tokens: tuple[Token, ...]
    warnings: tuple[str, ...] = field(default=())
    #: What the kernel drops and :func:`parse` (``kernel=True``) dropped with it: unknown
    #: ``%x`` specifiers and a trailing lone ``%`` (the admission webhook refuses them).
    dropped: tuple[str, ...] = field(default=())

    @property
    def is_relative(self) -> bool:
        """A pattern without a leading '/' is relative to the crashing process's cwd."""
        return not self.raw.startswith("/")

    @property
    def has_pid(self) -> bool:
        """Only ``%p`` stops the kernel from appending ``.PID`` (``%P`` does not)."""
        return any(t.spec == "p" for t in self.tokens)

    @property
    def specifiers(self) -> tuple[str, ...]:
        return tuple(t.spec for t in self.tokens if t.spec and t.spec != "%")

    @property
    def directory(self) -> str | None:
        """Longest leading directory with no specifier in it: where a volume can be mounted.

        ``/data/dump-a/core-%E-%p-%t`` gives ``/data/dump-a``; ``/data/%h/core`` gives
        ``/data``. None for a relative pattern (it lands in the process's cwd).
        """
        return None if self.is_relative else _static_dir(self.raw)


def parse(raw: str, *, kernel: bool = False) -> Pattern:
    """Parse and validate a pattern given in an annotation. Raise :class:`PatternError`.

    ``kernel`` (the node agent at crash time): read the pattern as ``format_corename`` does,
    so agent and kernel never disagree on a name: an unknown ``%x`` and a trailing lone ``%``
    are dropped (listed in :attr:`Pattern.dropped`) instead of refused. The webhook keeps
    refusing them at admission; a registration can still carry one (set by hand, or by an
    older webhook).
    """
    if not isinstance(raw, str):
        raise PatternError(str(raw), "must be a string")
    if raw == "" or raw.strip() == "":
        raise PatternError(raw, "is empty")
    if raw.startswith("|"):
        raise PatternError(raw, "pipe patterns ('|program') are not allowed: the node agent owns the pipe")
    if len(raw) > MAX_PATTERN_LENGTH:
        raise PatternError(raw, f"is {len(raw)} characters long, the kernel allows at most {MAX_PATTERN_LENGTH}")
    for ch in raw:
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            raise PatternError(raw, f"contains the control character {ch!r}")
    if raw.endswith("/"):
        raise PatternError(raw, "ends with '/': it names a directory, not a file")

    tokens: list[Token] = []
    literal: list[str] = []
    dropped: list[str] = []
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch != "%":
            literal.append(ch)
            i += 1
            continue
        if i + 1 >= len(raw):
            if kernel:  # format_corename: "case 0: goto out"
                dropped.append("%")
                break
            raise PatternError(raw, "ends with a lone '%'")
        spec = raw[i + 1]
        if spec not in SPECIFIERS:
            if kernel:  # format_corename: "default: break" - both characters vanish
                dropped.append("%" + spec)
                i += 2
                continue
            raise PatternError(raw, f"unknown specifier '%{spec}' (known: {_known()})")
        if literal:
            tokens.append(Token(text="".join(literal)))
            literal = []
        tokens.append(Token(spec=spec))
        i += 2
    if literal:
        tokens.append(Token(text="".join(literal)))

    # '..' is judged on the literal text: a specifier can never expand to '..' (the kernel
    # escapes it), but a literal one would climb out of the volume.
    # (In kernel mode on the text left once the dropped specifiers are gone: ".%z." is "..".)
    effective = "".join(t.text if t.spec is None else "%" + t.spec for t in tokens) if kernel else raw
    for part in effective.split("/"):
        if part == "..":
            raise PatternError(raw, "contains a '..' path component")

    warnings: list[str] = []
    if not raw.startswith("/"):
        warnings.append(
            "pattern has no leading '/': cores land in the process's working directory "
            "and are lost with the container"
        )
    elif _static_dir(raw) == "/":
        raise PatternError(raw, "its directory is '/': give the cores a directory of their own")
    return Pattern(raw=raw, tokens=tuple(tokens), warnings=tuple(warnings), dropped=tuple(dropped))


def _static_dir(raw: str) -> str:
    """Leading directories of an absolute pattern up to the first one with a specifier."""
    static: list[str] = []
    for part in raw.split("/")[1:-1]:  # drop the leading "" and the file name
        if "%" in part:
            break
        if part:
            static.append(part)
    return "/" + "/".join(static)


def _known() -> str:
    return " ".join("%" + s for s in SPECIFIERS)


@dataclass(frozen=True)
class CrashInfo:
    """What the kernel knows about a crashing process when it formats the core name."""

    pid: int  # %p, in the process's own PID namespace
    global_pid: int  # %P
    tid: int  # %i
    global_tid: int  # %I
    uid: int  # %u
    gid: int  # %g
    signal: int  # %s
    time: int  # %t
    hostname: str = ""  # %h
    comm: str = ""  # %e
    exe: str = ""  # %E (full path) and %f (its basename)
    rlimit_core: int = 2**64 - 1  # %c (soft limit; RLIM_INFINITY prints as 2^64-1)
    dump_mode: int = 1  # %d
    cpu: int = 0  # %C


def _escape(value: str) -> str:
    """``cn_esc_printf``: no '/' in a value, and never an empty, '.' or '..' component."""
    if value == "":
        return "!"
    if value in (".", ".."):
        value = "!" + value[1:]
    return value.replace("/", "!")


def _values(info: CrashInfo) -> dict[str, str]:
    """What each specifier stands for in this crash (before escaping)."""
    return {
        "%": "%", "c": str(info.rlimit_core), "C": str(info.cpu), "d": str(info.dump_mode),
        "e": info.comm, "E": info.exe, "f": posixpath.basename(info.exe), "g": str(info.gid),
        "h": info.hostname, "i": str(info.tid), "I": str(info.global_tid), "p": str(info.pid),
        "P": str(info.global_pid), "s": str(info.signal), "t": str(info.time), "u": str(info.uid),
    }


def expand(pattern: Pattern, info: CrashInfo, *, append_pid: bool = True) -> str:
    """The file name the kernel would produce for ``info`` (relative patterns stay relative).

    ``append_pid`` mirrors ``kernel.core_uses_pid``: ``.PID`` (the namespace PID) is added
    when the pattern has no ``%p``, as the ECI document shows (``core-eci`` -> ``core-eci.12``).
    """
    values = _values(info)
    out: list[str] = []
    for token in pattern.tokens:
        if token.spec is None:
            out.append(token.text)
        elif token.spec in _ESCAPED:
            out.append(_escape(values[token.spec]))
        else:
            out.append(values[token.spec])
    name = "".join(out)
    if append_pid and not pattern.has_pid:
        name += f".{info.pid}"
    return name


def describe(pattern: Pattern) -> str:
    """One line for logs and warnings: what each specifier in the pattern becomes."""
    specs = [s for s in dict.fromkeys(pattern.specifiers)]
    if not specs:
        return f"{pattern.raw} (no specifiers)"
    return f"{pattern.raw} (" + ", ".join(f"%{s} = {SPECIFIERS[s]}" for s in specs) + ")"
