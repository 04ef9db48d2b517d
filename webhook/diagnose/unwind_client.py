"""The agent's side of the unwinder server (webhook/diagnose/unwind.py): start it once, send it
a core's fds, wait a bounded time for the frames; a server that hangs or dies is killed (with
its child) and started afresh for the next core.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence

from webhook.diagnose.unwind import MAX_ANSWER, FileRef, request, server_env

#: The server's command; ``FD AS_BYTES`` are appended.
SERVER = (sys.executable, "-m", "webhook.diagnose.unwind", "--serve")


class UnwindError(RuntimeError):
    """No frames: the reason, as the server or the wait for it gave it."""


class Unwinder:
    """One server, one request at a time (the signature worker is one thread)."""

    def __init__(self, *, memory_bytes: int = 0, command: Sequence[str] = SERVER) -> None:
        self.memory_bytes = memory_bytes
        self.command = list(command)
        self._proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def _start(self) -> socket.socket:
        if self._sock is not None and self._proc is not None and self._proc.poll() is None:
            return self._sock
        self.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            # A session of its own: a timeout kills the server and the child it forked at once.
            self._proc = subprocess.Popen([*self.command, str(theirs.fileno()), str(self.memory_bytes)],
                                          pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=server_env(),
                                          cwd="/", start_new_session=True)
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        self._sock = ours
        return ours

    def frames(self, core_fd: int, exe_fd: int, files: list[FileRef], *, timeout: float) -> list[dict]:
        """The crashing thread's frames as dicts; raises :class:`UnwindError`."""
        req, fds = request(core_fd, exe_fd, files, cpu_seconds=int(timeout) + 1)
        with self._lock:
            try:
                sock = self._start()
                sock.settimeout(timeout)
                socket.send_fds(sock, [json.dumps(req).encode()], fds)
                answer = sock.recv(MAX_ANSWER)
            except TimeoutError as exc:
                self.close()
                raise UnwindError(f"the unwinder took more than {timeout:.0f}s") from exc
            except OSError as exc:
                self.close()
                raise UnwindError(f"the unwinder is not there: {exc.strerror or exc}") from exc
            if not answer:
                why = self._exit_reason()
                self.close()
                raise UnwindError(f"the unwinder stopped: {why}")
        try:
            out = json.loads(answer)
        except ValueError as exc:
            raise UnwindError("the unwinder's answer is not JSON") from exc
        if not isinstance(out, dict) or not isinstance(out.get("frames"), list):
            raise UnwindError(str(out.get("error") if isinstance(out, dict) else "no frames"))
        return out["frames"]

    def _exit_reason(self) -> str:
        proc = self._proc
        if proc is None:
            return "not started"
        try:
            code = proc.wait(2)
        except subprocess.TimeoutExpired:
            return "closed its socket"
        return f"killed by signal {-code}" if code < 0 else f"exit status {code}"

    def close(self) -> None:
        """Stop the server (and a child of it still running)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
