"""The real server: ``coredump serve`` (gunicorn, gthread workers) over TLS on 127.0.0.1.

Certificates come from ``certs.generate``; clients trust only the generated CA. Covers the
SANs, the endpoints, keep-alive, malformed traffic (workers survive), certificate rotation
under load (no failed request, new connections get the new certificate), a broken rotation
(the old certificate keeps serving), metrics summed across workers, and a clean SIGTERM.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tests.process_support import coredump_command, free_port, stop_group
from webhook import constants as C
from webhook.certs import generate as gen

REPO = Path(__file__).resolve().parent.parent
BODY_LIMIT = 64 * 1024


def review_body(uid: str = "uid-1", annotated: bool = True) -> bytes:
    annotations = {C.ANN_PATTERN: "/data/dump/core-%E-%p-%t"} if annotated else {}
    obj = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "web-", "namespace": "team-a", "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1", "command": ["/app"]}]},
    }
    return json.dumps({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "namespace": "team-a", "operation": "CREATE", "object": obj},
    }).encode()


def client_context(cafile: Path | str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cafile))


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    cert_dir: Path
    log_path: Path
    ca_file: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def conn(self, cafile: Path | None = None, host: str = "localhost", timeout: float = 10) -> http.client.HTTPSConnection:
        ctx = client_context(cafile or self.ca_file)
        c = http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx, timeout=timeout)
        # connect to 127.0.0.1 but check the certificate for `host` (http.client would use the IP)
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        c.sock = ctx.wrap_socket(sock, server_hostname=host)
        return c

    def request(self, method: str, path: str, body: bytes | None = None, conn: http.client.HTTPSConnection | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        own = conn is None
        c = conn or self.conn()
        try:
            hdrs = {"Content-Type": "application/json"} if body is not None else {}
            hdrs.update(headers or {})
            c.request(method, path, body=body, headers=hdrs)
            resp = c.getresponse()
            return resp.status, resp.read()
        finally:
            if own:
                c.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> set[int]:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True)
        return {int(p) for p in out.stdout.split()}


@contextlib.contextmanager
def running_server(tmp: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Server]:
    cert_dir = tmp / "certs"
    gen.write_bundle(gen.generate("coredump-webhook", "coredump-webhook", 30), cert_dir)
    ca_file = tmp / "client-ca.crt"
    ca_file.write_bytes((cert_dir / "ca.crt").read_bytes())
    port = free_port()
    log_path = tmp / "server.log"
    full_env = {**os.environ, "COREDUMP_WEBHOOK_CERT_DIR": str(cert_dir),
                "COREDUMP_WEBHOOK_BIND": f"127.0.0.1:{port}", **(env or {})}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*coredump_command(), "serve", "--cert-reload-interval", "0.2", "--max-body-bytes", str(BODY_LIMIT),
             "--workers", "2", "--threads", "4", "--no-resolve-entrypoints", *args],
            stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True,
        )
    server = Server(proc, port, cert_dir, log_path, ca_file)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited {proc.returncode}:\n{server.log()}")
            try:
                if server.request("GET", "/readyz")[0] == 200:
                    break
            except (OSError, http.client.HTTPException):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"server not ready:\n{server.log()}")
            time.sleep(0.1)
        yield server
    finally:
        stop_group(proc)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("tls")) as s:
        yield s


def peer_cert(server: Server, host: str = "localhost", cafile: Path | None = None) -> x509.Certificate:
    ctx = client_context(cafile or server.ca_file)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


# --- basics ---------------------------------------------------------------------------------


def test_start_log_shows_effective_settings_from_env(server: Server) -> None:
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    start = next(line for line in lines if line.get("event") == "serve.start")
    assert start["settings"]["bind"] == f"127.0.0.1:{server.port}"
    assert start["settings"]["certDir"] == str(server.cert_dir)
    assert start["settings"]["maxBodyBytes"] == BODY_LIMIT
    assert start["settings"]["admission"]["resolve_entrypoints"] is False


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "coredump-webhook.coredump-webhook.svc"])
def test_certificate_verifies_with_generated_ca(server: Server, host: str) -> None:
    cert = peer_cert(server, host)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "coredump-webhook.coredump-webhook.svc.cluster.local" in sans.get_values_for_type(x509.DNSName)


def test_wrong_hostname_or_unknown_ca_is_rejected(server: Server, tmp_path: Path) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        peer_cert(server, "evil.example")
    other = tmp_path / "other-ca.crt"
    other.write_bytes(gen.generate().ca_crt)
    with pytest.raises(ssl.SSLCertVerificationError):
        peer_cert(server, cafile=other)


def test_endpoints_over_tls_with_keepalive(server: Server) -> None:
    conn = server.conn()
    try:
        assert server.request("GET", "/healthz", conn=conn) == (200, b'{"status":"ok"}')
        status, body = server.request("GET", "/readyz", conn=conn)
        assert status == 200 and json.loads(body)["status"] == "ready"
        local = conn.sock.getsockname()
        for i in range(5):  # the same TCP connection serves them all
            status, body = server.request("POST", "/mutate", review_body(f"uid-{i}"), conn=conn)
            assert status == 200
            out = json.loads(body)["response"]
            assert out["uid"] == f"uid-{i}" and out["allowed"] is True
            assert json.loads(base64.b64decode(out["patch"]))
        assert conn.sock.getsockname() == local
        status, body = server.request("GET", "/metrics", conn=conn)
        assert status == 200 and b"coredump_webhook_requests_total" in body
    finally:
        conn.close()


def _raw_tls(server: Server, payload: bytes) -> bytes:
    ctx = client_context(server.ca_file)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(payload)
        chunks = []
        with contextlib.suppress(OSError):
            while chunk := tls.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


def test_malformed_traffic_does_not_kill_workers(server: Server) -> None:
    workers = server.worker_pids()
    assert len(workers) == 2
    # plain HTTP to the TLS port, and random bytes instead of a handshake
    for junk in (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", os.urandom(2048)):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(junk)
            with contextlib.suppress(OSError):
                s.recv(100)
    # a TLS connection that closes mid-request, and garbage that is not HTTP
    _raw_tls(server, b"POST /mutate HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
    assert _raw_tls(server, b"\x00\x01garbage\r\n\r\n").startswith(b"HTTP/1.1 400")
    # not AdmissionReviews: 400 with JSON; over the limit: 413; a chunked body over the limit too
    for body in (b"", b"{", b"[]", b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}'):
        status, out = server.request("POST", "/mutate", body)
        assert status == 400 and json.loads(out)["error"]
    status, out = server.request("POST", "/mutate", b" " * (BODY_LIMIT + 1))
    assert status == 413 and json.loads(out)["error"]
    chunk = b" " * 8192
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(BODY_LIMIT // len(chunk) + 2)) + b"0\r\n\r\n"
    response = _raw_tls(server, b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunked)
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    status, out = server.request("POST", "/mutate", review_body("still-served"))
    assert status == 200 and json.loads(out)["response"]["uid"] == "still-served"
    assert server.worker_pids() == workers
    assert "Traceback" not in server.log()


def test_metrics_add_up_across_workers(server: Server) -> None:
    def total(text: bytes) -> float:
        return sum(float(line.rsplit(b" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(b"coredump_webhook_requests_total{") and b'outcome="allowed"' in line)

    before = total(server.request("GET", "/metrics")[1])
    for i in range(12):  # new connections: both workers take some
        assert server.request("POST", "/mutate", review_body(f"m-{i}", annotated=False))[0] == 200
    readings = {total(server.request("GET", "/metrics")[1]) for _ in range(4)}
    assert readings == {before + 12}
    expiry = [line for line in server.request("GET", "/metrics")[1].splitlines()
              if line.startswith(b"coredump_webhook_certificate_expiry_timestamp_seconds")]
    assert expiry and abs(float(expiry[0].split()[-1]) - gen.not_after((server.cert_dir / "tls.crt").read_bytes()).timestamp()) < 1


# --- rotation -------------------------------------------------------------------------------


def _fp(cert: x509.Certificate) -> bytes:
    return cert.fingerprint(hashes.SHA256())


def wait_for_certificate(server: Server, cafile: Path, bundle: gen.CertBundle, timeout: float = 10) -> None:
    """New connections (trusting ``cafile``) get ``bundle``'s certificate within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(ssl.SSLCertVerificationError):
            if _fp(peer_cert(server, cafile=cafile)) == _fp(gen.load_cert(bundle.tls_crt)):
                return
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.1)


def test_rotation_under_load_drops_nothing(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        old_pem = (server.cert_dir / "tls.crt").read_bytes()
        old_fp = _fp(gen.load_cert(old_pem))
        new = gen.generate("coredump-webhook", "coredump-webhook", 30)
        new_fp = _fp(gen.load_cert(new.tls_crt))
        both = tmp_path / "both.crt"  # what the caBundle holds during a rotation
        both.write_bytes(gen.merge_ca_bundle(new.ca_crt, (server.cert_dir / "ca.crt").read_bytes()))

        seen: list[tuple[float, bytes]] = []
        errors: list[str] = []
        stop_flag = threading.Event()
        ok_requests = [0]

        def fresh_connections() -> None:
            while not stop_flag.is_set():
                try:
                    conn = server.conn(cafile=both)
                    seen.append((time.monotonic(), _fp(x509.load_der_x509_certificate(conn.sock.getpeercert(True)))))
                    status, body = server.request("POST", "/mutate", review_body("rot"), conn=conn)
                    conn.close()
                    if status != 200 or json.loads(body)["response"]["uid"] != "rot":
                        errors.append(f"fresh: HTTP {status}")
                    else:
                        ok_requests[0] += 1
                except Exception as exc:  # noqa: BLE001
                    errors.append(f"fresh: {exc!r}")

        def keepalive() -> None:
            conn = server.conn(cafile=both)
            try:
                while not stop_flag.is_set():
                    try:
                        status, _ = server.request("POST", "/mutate", review_body("ka"), conn=conn)
                        if status != 200:
                            errors.append(f"keepalive: HTTP {status}")
                        ok_requests[0] += 1
                    except Exception as exc:  # noqa: BLE001
                        errors.append(f"keepalive: {exc!r}")
                        conn.close()
                        conn = server.conn(cafile=both)
            finally:
                conn.close()

        threads = [threading.Thread(target=fresh_connections), threading.Thread(target=fresh_connections),
                   threading.Thread(target=keepalive)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.7)
            rotated_at = time.monotonic()
            gen.write_bundle(new, server.cert_dir)  # what a Secret update does to the mounted files
            deadline = rotated_at + 10
            while time.monotonic() < deadline and not any(fp == new_fp for _, fp in seen):
                time.sleep(0.05)
            time.sleep(1.5)
        finally:
            stop_flag.set()
            for t in threads:
                t.join(15)
        assert not errors, errors[:5]
        assert ok_requests[0] > 20
        assert any(fp == old_fp for _, fp in seen)
        first_new = min(t for t, fp in seen if fp == new_fp)
        assert first_new - rotated_at < 3
        # once every worker has had its reload interval, only the new certificate is served
        assert all(fp == new_fp for t, fp in seen if t > first_new + 1.0)
        # a client that trusts only the new CA gets in; one that trusts only the old one does not
        new_ca = tmp_path / "new-ca.crt"
        new_ca.write_bytes(new.ca_crt)
        assert server.request("GET", "/readyz", conn=server.conn(cafile=new_ca))[0] == 200
        with pytest.raises(ssl.SSLCertVerificationError):
            server.conn(cafile=server.ca_file)
        assert '"event": "tls.loaded"' in server.log()


def test_broken_rotation_keeps_serving_the_old_certificate(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        old_fp = _fp(peer_cert(server))
        a, b = gen.generate(), gen.generate()
        (server.cert_dir / "tls.crt").write_bytes(a.tls_crt)  # a certificate with another key
        (server.cert_dir / "tls.key").write_bytes(b.tls_key)
        time.sleep(0.5)
        for _ in range(4):
            assert _fp(peer_cert(server)) == old_fp
        assert server.request("GET", "/readyz")[0] == 200
        assert "tls.reload_failed" in server.log()
        gen.write_bundle(a, server.cert_dir)  # the rest of the rotation arrives
        new_ca = tmp_path / "a-ca.crt"
        new_ca.write_bytes(a.ca_crt)
        wait_for_certificate(server, new_ca, a)


def _secret_volume_swap(cert_dir: Path, bundle: gen.CertBundle, version: str) -> None:
    """Update ``cert_dir`` the way kubelet updates a Secret volume: a new timestamped directory,
    then one atomic rename of the ``..data`` symlink (the file names are symlinks through it)."""
    new_dir = cert_dir / f"..{version}"
    new_dir.mkdir()
    for name, content in bundle.files().items():
        (new_dir / name).write_bytes(content)
    old_target = os.readlink(cert_dir / "..data") if (cert_dir / "..data").is_symlink() else None
    tmp_link = cert_dir / "..data_tmp"
    tmp_link.symlink_to(new_dir.name)
    os.replace(tmp_link, cert_dir / "..data")
    for name in bundle.files():
        link = cert_dir / name
        if not link.is_symlink():
            if link.exists():
                link.unlink()
            link.symlink_to(f"..data/{name}")
    if old_target:
        for f in (cert_dir / old_target).iterdir():
            f.unlink()
        (cert_dir / old_target).rmdir()


def test_secret_volume_style_rotation(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        first, second = gen.generate(), gen.generate()
        _secret_volume_swap(server.cert_dir, first, "2024_01_01_00_00_00.1")  # plain files -> symlinks
        _secret_volume_swap(server.cert_dir, second, "2024_01_02_00_00_00.2")
        assert (server.cert_dir / "tls.crt").read_bytes() == second.tls_crt
        ca = tmp_path / "second-ca.crt"
        ca.write_bytes(second.ca_crt)
        wait_for_certificate(server, ca, second)
        assert server.request("POST", "/mutate", review_body("after-swap"), conn=server.conn(cafile=ca))[0] == 200


# --- start and stop -------------------------------------------------------------------------


def test_sigterm_stops_cleanly(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        workers = server.worker_pids()
        conn = server.conn()
        assert server.request("GET", "/healthz", conn=conn)[0] == 200  # an idle keep-alive connection
        os.killpg(server.proc.pid, signal.SIGTERM)
        assert server.proc.wait(20) == 0
        conn.close()
        for pid in workers:
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
        assert "Shutting down" in server.log()


def test_missing_certificates_fail_fast(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run([*coredump_command(), "serve", "--cert-dir", str(empty), "--bind", f"127.0.0.1:{free_port()}"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "tls.crt" in proc.stderr
    proc = subprocess.run([*coredump_command(), "serve", "--cert-dir", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--cert-dir" in proc.stderr
    proc = subprocess.run([*coredump_command(), "serve", "--cert-dir", str(empty), "--bind", "nonsense"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--bind" in proc.stderr


# --- the reloader itself (no server) ---------------------------------------------------------


class Clock:
    """A clock the test moves by hand (the reloader takes any monotonic-time callable)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_reloader_follows_the_files_at_its_interval(tmp_path: Path) -> None:
    from webhook.serving.tls import CertLoadError, CertReloader

    clock = Clock()
    reloader = CertReloader(tmp_path / "tls.crt", tmp_path / "tls.key", interval=1.0, clock=clock)
    with pytest.raises(CertLoadError, match="tls.crt"):
        reloader.load()
    assert reloader.status() == (False, reloader.last_error)
    first, second = gen.generate(), gen.generate()
    gen.write_bundle(first, tmp_path)
    clock.now = 5.0
    ctx1 = reloader.context()
    assert reloader.status()[0] is True
    gen.write_bundle(second, tmp_path)
    clock.now = 5.5  # within the interval: the loaded context is kept
    assert reloader.context() is ctx1
    clock.now = 6.1
    ctx2 = reloader.context()
    assert ctx2 is not ctx1 and reloader.reloads == 1
    assert reloader.cert_not_after() == gen.not_after(second.tls_crt).timestamp()
    clock.now = 8.0  # same bytes: no new context
    assert reloader.context() is ctx2
    (tmp_path / "tls.key").write_bytes(first.tls_key)  # mismatched pair: keep serving the last good one
    clock.now = 10.0
    assert reloader.context() is ctx2 and "do not load" in (reloader.last_error or "")
    assert reloader.status()[0] is True


def test_reloader_reports_an_expired_certificate_as_not_ready(tmp_path: Path) -> None:
    import datetime as dt

    from webhook.serving.tls import CertReloader

    old = gen.generate(days=1, now=dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
    gen.write_bundle(old, tmp_path)
    reloader = CertReloader(tmp_path / "tls.crt", tmp_path / "tls.key")
    reloader.load()
    ready, reason = reloader.status()
    assert ready is False and "expired" in reason
