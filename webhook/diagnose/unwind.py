"""The crashing thread's frames from a core, read by drgn in a confined process of its own.

Why drgn and not gdb: a signature needs the crashing thread's function names, nothing more.
gdb reads every symbol table it is given in full before it prints a frame (0.13-0.2 s of CPU
per core on a Python crash, flat in the core's size: benchmarks/bench_vs_systemd.py); drgn
unwinds with the files' call-frame information and names a frame from the DWARF scopes at its
address (libdw, what systemd-coredump and eu-stack use), about 5 ms on the same core. Inline
frames are listed as gdb lists them, so the signature keys are the same names.

Why another process: the core and every file handed over were made by the crashed container.
The agent passes them as open fds (the kernel's own references, taken while the process was
pinned), and the unwinder, before it parses a byte, caps itself (:mod:`webhook.rlimited`), drops
to an unprivileged user and forbids new privileges: it opens no path at all, so a file a container planted can cost its signature and nothing else. drgn's
plugins and debug-info finders are off, so nothing of the node (``/usr/lib/debug``,
debuginfod, libraries by name) ever names a container's frame.

Protocol: the agent starts ``python -m webhook.diagnose.unwind --serve FD AS_BYTES`` once
(webhook/diagnose/unwind_client.py) with one end of a SOCK_SEQPACKET pair. The server imports
drgn, confines itself, and then for each request (JSON, with the core's and the files' fds in
SCM_RIGHTS) forks a child that answers ``{"frames": [...]}`` or ``{"error": "..."}``. A child
per core keeps one core from touching another's answer; a server kept warm keeps Python's start
and drgn's import (0.04 s, most of what a signature cost) off every core.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass

from webhook.diagnose.cxxnames import load_demangler, short_name

#: Unprivileged identity the child runs as when started as root (the image's ``nobody``).
NOBODY = 65534
#: Frames read at most (a corrupt stack can loop; a signature uses the top few).
MAX_FRAMES = 256
#: fds one request carries at most (the kernel's SCM_MAX_FD is 253): the core, the executable
#: and the first mapped files; a process with more has its later libraries unnamed.
MAX_FDS = 250
#: Largest request and answer (bytes).
MAX_REQUEST = 1 << 20
MAX_ANSWER = 1 << 20


@dataclass(frozen=True)
class FileRef:
    """A file the process mapped, as an fd the unwinder is sent."""

    fd: int
    #: Where its first mapping starts (matches it to drgn's module by address); 0 = unknown.
    start: int = 0


def request(core_fd: int, exe_fd: int, files: list[FileRef], *, cpu_seconds: int) -> tuple[dict, list[int]]:
    """One request and the fds it sends along (SCM_RIGHTS); the request names them by index."""
    fds = [core_fd] + ([exe_fd] if exe_fd >= 0 else [])
    files = [f for f in files if f.fd >= 0][: MAX_FDS - len(fds)]
    req = {
        "core_fd": 0,
        "exe_fd": 1 if exe_fd >= 0 else -1,
        "files": [{"fd": len(fds) + i, "start": f.start} for i, f in enumerate(files)],
        "cpu_seconds": cpu_seconds,
    }
    return req, fds + [f.fd for f in files]


def server_env() -> dict[str, str]:
    """The unwinder's whole environment: drgn's plugins off (no entry points imported)."""
    env = {"DRGN_DISABLE_PLUGINS": "*", "PYTHONDONTWRITEBYTECODE": "1", "LC_ALL": "C"}
    for name in ("PATH", "PYTHONPATH"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def _confine(memory_bytes: int) -> None:
    """Limits, then no privilege (everything the unwinder reads comes as an fd; its own modules
    are imported before: the agent's venv need not be readable by nobody). CPU time is capped
    per core, in each child (:func:`_answer`)."""
    import ctypes

    from webhook.rlimited import apply

    apply(memory_bytes, 0)
    if os.geteuid() == 0:
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
    PR_SET_NO_NEW_PRIVS = 38
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


def _candidates(module, files: list[FileRef], exe_fd: int) -> list[int]:
    """The inherited fds that may be this module's file: the one mapped in its address range,
    else every file whose address is unknown (drgn keeps only one whose build-id matches)."""
    import drgn

    if isinstance(module, drgn.MainModule) and exe_fd >= 0:
        return [exe_fd]
    ranges = module.address_ranges or ()
    for f in files:
        if f.start and any(lo <= f.start < hi for lo, hi in ranges):
            return [f.fd]
    return [f.fd for f in files if not f.start]


def _library(prog, pc: int) -> str | None:
    try:
        return prog.module(pc).name
    except LookupError:
        return None


def read_frames(core_fd: int, exe_fd: int, files: list[FileRef],
                demangle: Callable[[str], str | None] | None = None) -> list[dict]:
    """The crashing thread's frames, innermost first, as :class:`signature.Frame` fields."""
    import drgn

    prog = drgn.Program()
    prog.set_core_dump(core_fd)
    prog.set_enabled_debug_info_finders([])  # only what we hand over names a frame
    for module, _new in prog.loaded_modules():
        for fd in _candidates(module, files, exe_fd):
            try:
                module.try_file(module.name or "exe", fd=os.dup(fd))  # drgn closes the dup
            except Exception:  # noqa: BLE001 - a bad file costs its names, not the other frames
                continue
            if not module.wants_loaded_file():
                break
    frames: list[dict] = []
    for index, frame in enumerate(prog.crashed_thread().stack_trace()):
        if index >= MAX_FRAMES:
            break
        try:
            _ = frame.pc
        except LookupError:
            break  # unwinding lost its way (no call-frame information for the frame above)
        frames.append(_frame(prog, index, frame, demangle))
        if index and frames[-1]["library"] is None and frames[-1]["source"] is None:
            break  # an address in no module: what lies above it is guesswork
    return frames


def _name(frame, demangle: Callable[[str], str | None] | None) -> str | None:
    """The DWARF name, else the ELF symbol's (without its version); a C++ function's symbol
    demangled and cut to its qualified name (webhook/diagnose/cxxnames.py), with or without
    debug info alike. Inline frames have no symbol of their own: their DWARF name it is."""
    name = frame.function_name
    if frame.is_inline and name:
        return name
    try:
        symbol = frame.symbol().name.split("@", 1)[0]
    except LookupError:
        return name
    if symbol.startswith("_Z") and demangle is not None and (full := demangle(symbol)):
        return short_name(full)
    return name or symbol


def _frame(prog, index: int, frame, demangle: Callable[[str], str | None] | None = None) -> dict:
    """One frame as :class:`signature.Frame` fields."""
    name = _name(frame, demangle)
    pc: int = frame.pc
    source = None
    try:
        filename, line, _column = frame.source()
        source = f"{os.path.basename(filename)}:{line}"
    except LookupError:
        pass
    # A return address is one past the call: look its module up at the call itself.
    at = pc if frame.interrupted else pc - 1
    return {
        "index": index,
        "function": name or "??",
        "address": None if frame.is_inline else f"0x{pc:016x}",
        "source": source,
        "library": None if source else _library(prog, at),
    }


def _answer(req: dict, fds: list[int], demangle: Callable[[str], str | None] | None) -> dict:
    """One request, in the forked child: its fds are the received ones, by index."""
    def fd_at(i: object) -> int:
        return fds[i] if isinstance(i, int) and 0 <= i < len(fds) else -1

    try:
        cpu = int(req.get("cpu_seconds", 0))
        if cpu > 0:
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))  # this child's own CPU time
        files = [FileRef(fd_at(f.get("fd")), int(f.get("start", 0))) for f in req["files"]]
        return {"frames": read_frames(fd_at(req.get("core_fd")), fd_at(req.get("exe_fd")),
                                      [f for f in files if f.fd >= 0], demangle)}
    except MemoryError:
        return {"error": "out of memory (address space cap)"}
    except Exception as exc:  # noqa: BLE001 - the agent wants the reason, not a traceback
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}


def _one(sock: socket.socket, req: dict, fds: list[int], demangle: Callable[[str], str | None] | None) -> bytes:
    """Fork a child for one core and return its answer (or why there is none): a core that
    crashes or corrupts the unwinder takes that child with it, never the next core's."""
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: answer, exit
        os.close(rd)
        sock.close()
        answer = json.dumps(_answer(req, fds, demangle)).encode()
        with os.fdopen(wr, "wb") as out:
            out.write(answer)
        os._exit(0)
    os.close(wr)
    with os.fdopen(rd, "rb") as answer_pipe:
        answer = answer_pipe.read(MAX_ANSWER + 1)
    _, status = os.waitpid(pid, 0)
    if not answer:
        why = f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit status {status}"
        return json.dumps({"error": f"the unwinder died ({why})"}).encode()
    return answer[:MAX_ANSWER]


def serve(sock_fd: int, memory_bytes: int) -> int:
    """The unwinder server: import, confine, then one forked child per request until EOF.

    A server that cannot start as it must (drgn missing, no privilege to drop) parses nothing
    and answers every request with why, so each core's metadata says it."""
    sock = socket.socket(fileno=sock_fd)
    demangle = None
    broken = ""
    try:
        # Imported while their files are still readable (drgn calls its plugin hook lazily).
        import _drgn_util.plugins  # noqa: F401
        import drgn  # noqa: F401

        demangle = load_demangler()  # libstdc++ is opened now, not after the drop
        _confine(memory_bytes)
    except (ImportError, OSError) as exc:
        broken = json.dumps({"error": f"the unwinder cannot start: {type(exc).__name__}: {exc}"[:500]})
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(sock, MAX_REQUEST, MAX_FDS)
        except OSError:
            return 1
        if not msg:
            return 0  # the agent closed its end
        try:
            req = json.loads(msg)
            if broken:
                answer = broken.encode()
            else:
                answer = _one(sock, req, fds, demangle) if isinstance(req, dict) else b'{"error": "bad request"}'
        except ValueError:
            answer = b'{"error": "bad request"}'
        finally:
            for fd in fds:
                os.close(fd)
        sock.sendall(answer)


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "--serve":
        print("usage: python -m webhook.diagnose.unwind --serve SOCKET_FD AS_BYTES", file=sys.stderr)
        return 2
    return serve(int(argv[1]), int(argv[2]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
