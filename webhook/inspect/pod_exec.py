"""Commands in a pod's container over the websocket exec API: listings and core streams.

The user's own credentials and RBAC (``create pods/exec``); stdout is streamed frame by frame,
never buffered whole (a core can be many GiB).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from webhook.inspect.kube import KubeError, translate_error
from webhook.inspect.listing import core_path_command, wrapper_cat_command

STREAM_STDOUT, STREAM_STDERR, STREAM_ERROR = 1, 2, 3


def _connect(api: client.ApiClient, namespace: str, pod: str, container: str, command: list[str], what: str) -> Any:
    """The exec websocket, made not to keep a copy of what it reads."""
    from kubernetes.stream import stream, ws_client

    core = client.CoreV1Api(api)
    try:
        ws = stream(core.connect_get_namespaced_pod_exec, pod, namespace, command=command, container=container,
                    stderr=True, stdin=False, stdout=True, tty=False, binary=True, _preload_content=False)
    except ApiException as exc:
        # The websocket client reports a refused upgrade as status 0 "Handshake status 403 ...".
        m = re.search(r"Handshake status (\d{3})", str(exc.reason or ""))
        if exc.status == 0 and m:
            exc.status = int(m.group(1))
        raise translate_error(exc, what, "create", "pods/exec", namespace) from exc
    # stream() cannot pass capture_all=False: stop the client keeping a copy of everything read
    # (a multi-GiB core would otherwise end up in memory).
    if hasattr(ws_client, "_IgnoredIO"):
        ws._all = ws_client._IgnoredIO()
    return ws


def _read_all(ws: Any, timeout: float) -> Generator[bytes, None, tuple[bytes, bytes]]:
    """Yield stdout frame by frame until the stream closes (or ``timeout``); returns the tail of
    stderr and the error channel."""
    stderr = b""
    error = b""
    deadline = time.monotonic() + timeout
    try:
        while ws.is_open() and time.monotonic() < deadline:
            ws.update(timeout=1)
            out = ws.read_channel(STREAM_STDOUT)
            if out:
                yield out
            stderr += ws.read_channel(STREAM_STDERR)[-4096:]
            error += ws.read_channel(STREAM_ERROR)
        if out := ws.read_channel(STREAM_STDOUT):
            yield out
        error += ws.read_channel(STREAM_ERROR)
    finally:
        ws.close()
    return stderr, error


def _failure(what: str, stderr: bytes, error: bytes) -> KubeError | None:
    """The error of an exec whose error channel reports a failure (a non-zero exit, no binary)."""
    status = {}
    if error:
        try:
            status = json.loads(error)
        except ValueError:
            status = {"status": "Failure", "message": error.decode(errors="replace")}
    if status.get("status") == "Failure":
        detail = (status.get("message") or "") + (f"; stderr: {stderr.decode(errors='replace').strip()}" if stderr.strip() else "")
        return KubeError(f"{what}: {detail}", 0, status.get("reason", ""))
    return None


def exec_stream(api: client.ApiClient, namespace: str, pod: str, container: str, command: list[str],
                *, timeout: float = 3600.0) -> Iterator[bytes]:
    """Run ``command`` in a container over the websocket exec API and yield its stdout.

    Nothing is buffered beyond one websocket frame. A non-zero exit or an exec failure (no such
    binary, 403) raises :class:`KubeError` after the output already yielded.
    """
    what = f"exec in {namespace}/{pod} -c {container}"
    ws = _connect(api, namespace, pod, container, command, what)
    stderr, error = yield from _read_all(ws, timeout)
    failure = _failure(what, stderr, error)
    if failure is not None:
        raise failure


def exec_output(api: client.ApiClient, namespace: str, pod: str, container: str, command: list[str]) -> bytes:
    return b"".join(exec_stream(api, namespace, pod, container, command))


@dataclass
class ExecSource:
    """A core in a pod as a :class:`~webhook.inspect.download.ByteSource`."""

    api: client.ApiClient
    namespace: str
    pod: str
    container: str
    path: str
    #: The coredump wrapper's path in the container: read through its cat mode (no shell or
    #: tail needed). "" = ``tail -c +N``.
    wrapper: str = ""

    def read_from(self, offset: int) -> Iterator[bytes]:
        cmd = wrapper_cat_command(self.path, offset, self.wrapper) if self.wrapper else core_path_command(self.path, offset)
        return exec_stream(self.api, self.namespace, self.pod, self.container, cmd)
