"""A stand-in kube-apiserver for the certificate bootstrap: recorded answers, recorded requests.

A small HTTP server on 127.0.0.1 answers (method, path) from tests/recorded/certs/ and records
every request (method, path, content type, body, Authorization), so a test asserts what the
real kubernetes client (or the real ``coredump certs bootstrap`` process) sent. Shared by
tests/test_certs_kube.py and the chart's RBAC test in tests/test_chart.py.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

RECORDED = Path(__file__).resolve().parent / "recorded" / "certs"

NOT_FOUND = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
             "message": "unrouted"}


def recorded(name: str) -> dict[str, Any]:
    """One recorded API response (a fresh copy each time)."""
    return json.loads((RECORDED / name).read_text())


@dataclass
class Seen:
    method: str
    path: str
    content_type: str | None
    body: Any
    authorization: str | None = None


class FakeAPI:
    """Routes (method, path) to queued (status, JSON) answers (the last one repeats); records
    what arrives. Unrouted requests get a 404 Status. Use as a context manager."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], list[tuple[int, Any]]] = {}
        self.seen: list[Seen] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                api.seen.append(Seen(self.command, path, self.headers.get("Content-Type"),
                                     json.loads(raw) if raw else None, self.headers.get("Authorization")))
                answers = api.routes.get((self.command, path))
                if answers:
                    status, body = answers.pop(0) if len(answers) > 1 else answers[0]
                else:
                    status, body = 404, NOT_FOUND
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeAPI:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def route(self, method: str, path: str, *answers: tuple[int, Any]) -> None:
        self.routes[(method, path)] = list(answers)

    def requests(self, method: str | None = None) -> list[Seen]:
        return [s for s in self.seen if method is None or s.method == method]

    def write_kubeconfig(self, path: Path, token: str = "t0ken") -> Path:
        """A kubeconfig pointing at this server with a bearer token (what a Job's pod would use)."""
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.url}}],
            "users": [{"name": "test", "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        }))
        return path
