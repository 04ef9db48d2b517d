"""Helpers for the registry tests: a loopback HTTPS server and the CA that signs its certificate."""

from __future__ import annotations

import datetime
import http.server
import os
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID


def serve(handler_cls, tls: LoopbackCA | None = None, host: str = "127.0.0.1") -> tuple[Server, int]:
    srv = Server((host, 0), handler_cls)
    if tls is not None:
        srv.socket = tls.server_context(host).wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return srv, srv.server_address[1]


def self_signed_ca(common_name: str) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """A CA key and its self-signed certificate, valid from an hour ago for a day."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256()))
    return key, cert


class LoopbackCA:
    """A CA of the tests and serving certificates for loopback addresses (token realms and
    redirect targets must be HTTPS)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.key, self.cert = self_signed_ca("registry tests CA")
        self.bundle = tmp / "tests-ca.pem"
        self.bundle.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def server_context(self, address: str):
        import ipaddress
        import ssl

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)]))
            .issuer_name(self.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]), critical=False)
            .sign(self.key, hashes.SHA256()))
        pem = self.tmp / f"server-{address}-{os.urandom(4).hex()}.pem"
        pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pem)
        return ctx


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
