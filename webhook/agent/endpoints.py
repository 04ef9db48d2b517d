"""The agent's HTTP side: ``/healthz`` for the DaemonSet's probes, ``/metrics`` for Prometheus.

Served from a background thread by the standard library; nothing here is on the crash path.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger(__name__)


def parse_bind(bind: str) -> tuple[str, int]:
    """``"0.0.0.0:9402"``, ``":9402"`` or ``"[::]:9402"`` -> (host, port)."""
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"metrics bind {bind!r} must be HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class HealthServer:
    """``/healthz`` answers 200 while ``healthy()`` is true, else 503 with ``reason()`` (the
    readiness probe); ``/livez`` answers 200 while ``live()`` is true (default: ``healthy``), for
    a liveness probe that must not restart an agent that is up but refuses to serve for a reason
    a restart cannot fix; ``/metrics`` exposes ``registry``."""

    def __init__(self, bind: str, healthy: Callable[[], bool], registry: CollectorRegistry = REGISTRY, *,
                 live: Callable[[], bool] | None = None, reason: Callable[[], str] | None = None) -> None:
        host, port = parse_bind(bind)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    ok = outer.healthy()
                    body = b"ok\n" if ok else ((outer.reason() if outer.reason else "not serving") + "\n").encode()
                    self._reply(200 if ok else 503, body, "text/plain; charset=utf-8")
                elif path == "/livez":
                    ok = (outer.live or outer.healthy)()
                    self._reply(200 if ok else 503, b"ok\n" if ok else b"not serving\n", "text/plain")
                elif path == "/metrics":
                    self._reply(200, generate_latest(outer.registry), CONTENT_TYPE_LATEST)
                else:
                    self._reply(404, b"not found\n", "text/plain")

            def _reply(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                log.debug("http " + format % args)

        self.healthy = healthy
        self.live = live
        self.reason = reason
        self.registry = registry
        server_class = _HTTPServer6 if ":" in host else _HTTPServer
        self.httpd = server_class((host, port), Handler)
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="agent-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
