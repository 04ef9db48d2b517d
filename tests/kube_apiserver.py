"""The one stand-in kube-apiserver of the suite: recorded answers over a real socket.

No kube-apiserver can be installed here, so the code that talks to the API is tested against
this server: routes map (METHOD, path) to a list of answers served in order (the last one
repeats); a path ending in ``/*`` is a prefix route. An answer is a recorded JSON file of
``tests/recorded/<area>/`` or a dict (:class:`Recorded`, or a ``(status, body)`` tuple), a write
echoed back (:class:`Echo`), an answer chosen by the caller's bearer token (:class:`ByToken`),
an exec (:class:`Exec`) or any object with ``status`` and ``bytes()`` (the pod watch of
tests/pod_api.py). Unrouted requests get a 404 Status. Every request is recorded
(:attr:`FakeApiServer.requests`, or :meth:`FakeApiServer.seen` as :class:`Seen`), so a test
asserts what the real kubernetes client, or a real ``coredump`` process, sent.

Exec requests are upgraded to a real websocket (``v4.channel.k8s.io``) and the command is run
here, in a directory that plays the container's filesystem: absolute paths in its arguments are
mapped under that directory, the way the kubelet would run them in the container. A container
can hold the real coredump wrapper (installed under that directory by its own install mode, as
the webhook's init container does) and can lack programs (``missing``, e.g. :data:`DISTROLESS`):
exec'ing one of those, or a path that does not exist, fails the way containerd reports it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from kubernetes import client

from webhook import constants

RECORDED_ROOT = Path(__file__).resolve().parent / "recorded"
#: The default area of recorded answers (the inspection CLI's and the agent's API calls).
RECORDED = RECORDED_ROOT / "inspect"
_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def recorded(name: str, area: str = "inspect") -> dict[str, Any]:
    """One recorded API response of ``tests/recorded/<area>/`` (a fresh copy each time)."""
    return json.loads((RECORDED_ROOT / area / name).read_text())


class Recorded:
    """A response: HTTP status and the recorded JSON file of ``area`` (or a dict), sent after
    ``delay`` seconds (a slow server)."""

    def __init__(self, status: int, body: str | dict, area: str = "inspect", delay: float = 0.0):
        self.status = status
        self.body = body
        self.area = area
        self.delay = delay

    def bytes(self) -> bytes:
        if isinstance(self.body, dict):
            return json.dumps(self.body).encode()
        return (RECORDED_ROOT / self.area / self.body).read_bytes()


@dataclass
class Seen:
    """A recorded request as attributes, the body parsed as JSON."""

    method: str
    path: str
    content_type: str | None
    body: Any
    authorization: str | None = None


class Echo:
    """A write the API server accepts: the body sent back with the fields the server sets
    (``uid``, ``resourceVersion``, ``creationTimestamp``), 201 for POST and 200 for PUT."""

    def __init__(self) -> None:
        self.version = 100
        self.lock = threading.Lock()

    def answer(self, req: dict) -> tuple[int, bytes]:
        body = json.loads(req["body"] or b"{}")
        with self.lock:
            self.version += 1
            meta = body.setdefault("metadata", {})
            meta.setdefault("uid", hashlib.sha256(meta.get("name", "").encode()).hexdigest()[:36])
            meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
            meta["resourceVersion"] = str(self.version)
        return (201 if req["method"] == "POST" else 200), json.dumps(body).encode()


class ByToken:
    """Answers that depend on the caller's bearer token (RBAC): ``{token: response}``; other
    tokens get ``default`` (a 401 Status unless given)."""

    def __init__(self, answers: dict, default=None) -> None:
        self.answers = answers
        self.default = default or Recorded(401, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                                 "message": "Unauthorized", "reason": "Unauthorized", "code": 401})

    def pick(self, req: dict):
        auth = req["headers"].get("authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else ""
        return self.answers.get(token, self.default)


#: What a distroless or scratch image lacks: no shell, no coreutils, no busybox.
DISTROLESS = ("sh", "bash", "ash", "dash", "busybox", "find", "cat", "tail")


class Exec:
    """Marker: run the exec command for real under ``root``.

    ``wrapper``: the real built coredump-wrapper, installed at ``root`` + WRAPPER_PATH by its
    ``--coredump-install`` mode, so an exec of WRAPPER_PATH runs it. ``missing``: program names
    (matched on argv[0]'s base name) this container does not have.
    """

    def __init__(self, root: Path | None = None, frame: int = 65536, wrapper: Path | None = None,
                 missing: tuple[str, ...] = (), pace: float = 0.0):
        self.root = root
        self.frame = frame
        #: Seconds between stdout frames: the client then sees them arrive one by one (it
        #: reads every frame already received at once, which merges frames sent back to back).
        self.pace = pace
        self.missing = frozenset(missing)
        if wrapper is not None:
            assert root is not None, "the wrapper is installed into the container's directory"
            dest = str(root) + constants.WRAPPER_PATH
            subprocess.run([str(wrapper), constants.WRAPPER_INSTALL_FLAG, dest], check=True, capture_output=True)


def _not_found(argv0: str) -> dict:
    """The exec Status containerd + kubelet send when the program is not in the container."""
    why = f"stat {argv0}: no such file or directory" if argv0.startswith("/") else "executable file not found in $PATH"
    msg = ("Internal error occurred: error executing command in container: failed to exec in container: failed to "
           f'start exec "5f0c3b1e9a7d": OCI runtime exec failed: exec failed: unable to start container process: '
           f'exec: "{argv0}": {why}: unknown')
    return {"metadata": {}, "status": "Failure", "message": msg, "reason": "InternalError",
            "details": {"causes": [{"message": msg}]}, "code": 500}


class FakeApiServer:
    def __init__(self):
        self.routes: dict[tuple[str, str], list] = {}
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _handle(self):
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                req = {"method": self.command, "path": url.path, "query": parse_qs(url.query),
                       "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
                server.requests.append(req)
                queue = server.routes.get((self.command, url.path))
                if not queue:  # a prefix route (PUT .../coredumps/<name>)
                    queue = next((q for (m, p), q in server.routes.items()
                                  if m == self.command and p.endswith("/*") and url.path.startswith(p[:-1])), None)
                if not queue:
                    self._send(404, json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                                "message": "the server could not find the requested resource",
                                                "reason": "NotFound", "details": {}, "code": 404}).encode())
                    return
                resp = queue.pop(0) if len(queue) > 1 else queue[0]
                if isinstance(resp, ByToken):
                    resp = resp.pick(req)
                if isinstance(resp, Exec):
                    self._exec(resp, req)
                elif isinstance(resp, Echo):
                    self._send(*resp.answer(req))
                else:
                    time.sleep(getattr(resp, "delay", 0.0))
                    self._send(resp.status, resp.bytes())

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle

            def _send(self, status, data):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _frame(self, opcode: int, payload: bytes) -> bytes:
                n = len(payload)
                head = bytes([0x80 | opcode])
                if n < 126:
                    head += bytes([n])
                elif n < 65536:
                    head += bytes([126]) + struct.pack(">H", n)
                else:
                    head += bytes([127]) + struct.pack(">Q", n)
                return head + payload

            def _exec(self, spec: Exec, req):
                key = self.headers["Sec-WebSocket-Key"]
                accept = base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()
                self.send_response(101)
                self.send_header("Upgrade", "websocket")
                self.send_header("Connection", "Upgrade")
                self.send_header("Sec-WebSocket-Accept", accept)
                self.send_header("Sec-WebSocket-Protocol", "v4.channel.k8s.io")
                self.end_headers()
                cmd = req["query"].get("command", [])
                argv0 = cmd[0] if cmd else ""
                if spec.root is not None:
                    root = str(spec.root)
                    cmd = [a if not a.startswith("/") or a.startswith(root) else root + a for a in cmd]
                try:
                    if os.path.basename(argv0) in spec.missing:
                        raise FileNotFoundError(argv0)
                    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                except (FileNotFoundError, PermissionError, IndexError):
                    self.wfile.write(self._frame(2, b"\x03" + json.dumps(_not_found(argv0)).encode()))
                    self.wfile.write(self._frame(8, struct.pack(">H", 1000)))
                    self.wfile.flush()
                    self.close_connection = True
                    return
                while block := proc.stdout.read(spec.frame):
                    self.wfile.write(self._frame(2, b"\x01" + block))
                    if spec.pace:
                        self.wfile.flush()
                        time.sleep(spec.pace)
                err = proc.stderr.read()
                if err:
                    self.wfile.write(self._frame(2, b"\x02" + err))
                code = proc.wait()
                if code == 0:
                    status = {"metadata": {}, "status": "Success"}
                else:
                    status = {"metadata": {}, "status": "Failure",
                              "message": f"command terminated with non-zero exit code: error executing command [{' '.join(cmd[:2])}...], exit code {code}",
                              "reason": "NonZeroExitCode",
                              "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}
                self.wfile.write(self._frame(2, b"\x03" + json.dumps(status).encode()))
                self.wfile.write(self._frame(8, struct.pack(">H", 1000)))
                self.wfile.flush()
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def route(self, method: str, path: str, *responses) -> None:
        """Answers for (method, path), served in order, the last one repeating; a ``(status, body)``
        tuple is a :class:`Recorded` dict."""
        self.routes[(method, path)] = [Recorded(*r) if isinstance(r, tuple) else r for r in responses]

    def seen(self, method: str | None = None) -> list[Seen]:
        """The requests so far (of ``method``), as :class:`Seen`."""
        return [Seen(r["method"], r["path"], r["headers"].get("content-type"),
                     json.loads(r["body"]) if r["body"] else None, r["headers"].get("authorization"))
                for r in self.requests if method is None or r["method"] == method]

    def api(self) -> client.ApiClient:
        cfg = client.Configuration()
        cfg.host = self.url
        cfg.api_key = {"authorization": "Bearer test-token"}
        return client.ApiClient(cfg)

    def kubeconfig(self, path: Path, namespace: str | None = "shop", token: str = "alice-token") -> Path:
        """A kubeconfig pointing at this server with a bearer token (a developer's, or a Job
        pod's with ``namespace=None``)."""
        context = {"cluster": "test", "user": "alice", **({"namespace": namespace} if namespace else {})}
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.url}}],
            "users": [{"name": "alice", "user": {"token": token}}],
            "contexts": [{"name": "test", "context": context}],
        }))
        return path

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
