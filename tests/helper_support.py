"""Helpers for the static kernel helper's tests: its argv, a handler that records what it
read, running the helper like the kernel does, its log and spool."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from webhook.agent.server import ServerOutcome
from webhook.agent.settings import AgentSettings

ARGV = ["4242", "7", "4243", "8", "11", "1700000000", "0", "1", "0", "1000", "1000", "my-pod host", "crash me"]


@dataclass
class Req:
    argv: list[str]
    spooled: bool


def make_request(argv: list[str], spooled: bool) -> Req:
    if len(argv) != 13:
        raise ValueError(f"expected 13 arguments, got {len(argv)}")
    return Req(list(argv), spooled)


@dataclass
class Recorder:
    """A handler that reads the core to EOF and remembers what it saw."""

    seen: list[tuple[Req, bytes]] = field(default_factory=list)
    delay: float = 0.0
    result: str = "written"
    active: int = 0
    max_active: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: Req, fd: int) -> ServerOutcome:
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            time.sleep(self.delay)
            chunks = []
            while True:
                b = os.read(fd, 1 << 20)
                if not b:
                    break
                chunks.append(b)
            data = b"".join(chunks)
            with self.lock:
                self.seen.append((request, data))
            return ServerOutcome(self.result, "test", f"/cores/{request.argv[0]}", len(data))
        finally:
            with self.lock:
                self.active -= 1


def settings_for(host: Path, **kw) -> AgentSettings:
    return AgentSettings(host_dir=str(host), metrics_bind="", spool_drain_interval_seconds=3600, **kw)


def run_helper(host: Path, core: bytes | Path, argv: list[str] = ARGV, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the helper with ``core`` on a pipe (or a file) as stdin, like the kernel does."""
    helper = str(host / "coredump-helper")
    if isinstance(core, Path):
        with open(core, "rb") as f:
            return subprocess.run([helper, *argv], stdin=f, capture_output=True, timeout=timeout, cwd="/", env={})
    proc = subprocess.Popen([helper, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd="/", env={})
    out, err = proc.communicate(core, timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def log_lines(host: Path) -> list[str]:
    path = host / "helper.log"
    return path.read_text().splitlines() if path.exists() else []


def spool_entries(host: Path) -> list[Path]:
    spool = host / "spool"
    return sorted(spool.iterdir()) if spool.exists() else []


CORE = os.urandom(3 << 20) + bytes(1 << 20) + b"tail"
