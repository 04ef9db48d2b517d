"""Helpers for the agent lifecycle tests: ``run_agent`` in a thread, its settings, a gate that
holds the first dump in flight, sleepers honouring their core limit."""

from __future__ import annotations

import resource
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from tests.process_support import wait_for
from webhook.agent import install
from webhook.agent.settings import AgentSettings
from webhook.agent.sysctl import CORE_PATTERN, Sysctl


def start_sleepers(n: int) -> list[subprocess.Popen]:
    """Sleepers whose soft RLIMIT_CORE is their hard one (unregistered processes honour it)."""

    def core_limit() -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_CORE)
        resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))

    return [subprocess.Popen(["sleep", "60"], preexec_fn=core_limit) for _ in range(n)]


class Agent:
    """``run_agent`` in a thread; ``stop()`` is what SIGTERM does in ``coredump agent run``."""

    def __init__(self, settings: AgentSettings, handler_factory: Any = None) -> None:
        from webhook.agent.commands import run_agent

        self.settings = settings
        self.stop_event = threading.Event()
        self.error: list[BaseException] = []
        self.registry = CollectorRegistry()

        def main() -> None:
            try:
                run_agent(settings, self.stop_event, handler_factory=handler_factory, registry=self.registry)
            except BaseException as exc:  # noqa: BLE001 - reported by stop()
                self.error.append(exc)

        self.thread = threading.Thread(target=main, daemon=True)
        self.thread.start()
        wait_for(lambda: Sysctl().read(CORE_PATTERN) == install.helper_pattern(settings) and self._listening(),
                 what="agent serving")

    def _listening(self) -> bool:
        return Path(self.settings.socket_path).exists() or bool(self.error)

    def stop(self, timeout: float = 60) -> None:
        self.stop_event.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the agent did not stop"
        assert not self.error, self.error


def agent_settings(host: Path, bin_dir: Path, **kw: Any) -> AgentSettings:
    base = dict(host_dir=str(host), helper_binary=str(bin_dir / "coredump-helper"), metrics_bind="",
                watch_pods=False, events=False, signatures=False, unregistered="node", rate_limit_count=100,
                spool_drain_interval_seconds=3600)
    base.update(kw)
    return AgentSettings(**base)


class Gate:
    """Wraps the real crash handler: the first core waits for ``release`` (a dump in flight)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.first = True
        self.lock = threading.Lock()

    def factory(self, settings: AgentSettings, previous: str) -> Callable[[Any, int], Any]:
        from webhook.agent.crash import CrashProcessor

        processor = CrashProcessor(settings, previous_pattern=previous or None)

        def handle(request: Any, fd: int) -> Any:
            with self.lock:
                first, self.first = self.first, False
            if first:
                self.entered.set()
                self.release.wait(60)
            return processor.handle(request, fd)

        return handle
