"""Certificates: generation, SANs, files on disk, renewal decisions, caBundle merging."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import ssl
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography import x509

from tests.process_support import coredump_command
from webhook.certs import generate as gen

REPO = Path(__file__).resolve().parent.parent
NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def _sans(pem: bytes) -> tuple[list[str], list[str]]:
    cert = x509.load_pem_x509_certificate(pem)
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return ext.get_values_for_type(x509.DNSName), [str(ip) for ip in ext.get_values_for_type(x509.IPAddress)]


def test_generate_sans_chain_and_validity() -> None:
    bundle = gen.generate("hook", "ops", 10, now=NOW)
    dns, ips = _sans(bundle.tls_crt)
    assert dns == ["hook", "hook.ops", "hook.ops.svc", "hook.ops.svc.cluster.local", "localhost"]
    assert ips == ["127.0.0.1"]
    assert gen.signed_by(bundle.tls_crt, bundle.ca_crt)
    assert gen.key_matches(bundle.tls_crt, bundle.tls_key)
    assert gen.not_after(bundle.tls_crt) == NOW + dt.timedelta(days=10)
    ca = x509.load_pem_x509_certificate(bundle.ca_crt)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    leaf = x509.load_pem_x509_certificate(bundle.tls_crt)
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_two_generations_are_independent() -> None:
    a, b = gen.generate(now=NOW), gen.generate(now=NOW)
    assert a.ca_crt != b.ca_crt
    assert not gen.signed_by(a.tls_crt, b.ca_crt)
    assert not gen.key_matches(a.tls_crt, b.tls_key)


def test_bad_arguments() -> None:
    with pytest.raises(gen.CertError):
        gen.generate(days=0)
    with pytest.raises(gen.CertError):
        gen.generate("", "ns")
    with pytest.raises(gen.CertError):
        gen.load_cert(b"not a certificate")


def test_write_bundle_atomic_modes_and_overwrite(tmp_path: Path) -> None:
    first = gen.generate(now=NOW)
    paths = gen.write_bundle(first, tmp_path / "certs")
    assert stat.S_IMODE(os.stat(paths[gen.KEY_FILE]).st_mode) == 0o600
    assert gen.read_bundle(tmp_path / "certs") == first
    second = gen.generate(now=NOW)
    gen.write_bundle(second, tmp_path / "certs")
    assert gen.read_bundle(tmp_path / "certs") == second
    assert sorted(p.name for p in (tmp_path / "certs").iterdir()) == ["ca.crt", "tls.crt", "tls.key"]  # no temp leftovers


@pytest.mark.parametrize(
    ("age_days", "renew_before", "due", "reason"),
    [
        (0, 30, False, "valid until"),
        (59, 30, False, "valid until"),
        (60, 30, True, "within the renewal margin"),
        (70, 30, True, "within the renewal margin"),
        (100, 30, True, "expired"),
    ],
)
def test_renewal_due_by_time(age_days: int, renew_before: int, due: bool, reason: str) -> None:
    bundle = gen.generate("hook", "ops", 90, now=NOW)
    renewal = gen.renewal_due(bundle, renew_before=dt.timedelta(days=renew_before), service="hook",
                              namespace="ops", now=NOW + dt.timedelta(days=age_days))
    assert renewal.due is due
    assert reason in renewal.reason


def test_renewal_due_for_wrong_material() -> None:
    a, b = gen.generate("hook", "ops", now=NOW), gen.generate("hook", "ops", now=NOW)
    margin = dt.timedelta(days=1)
    mismatched_key = gen.CertBundle(a.ca_crt, a.tls_crt, b.tls_key)
    assert "does not belong" in gen.renewal_due(mismatched_key, renew_before=margin, now=NOW).reason
    wrong_ca = gen.CertBundle(b.ca_crt, a.tls_crt, a.tls_key)
    assert "not signed by" in gen.renewal_due(wrong_ca, renew_before=margin, now=NOW).reason
    other_service = gen.renewal_due(a, renew_before=margin, service="other", namespace="ops", now=NOW)
    assert other_service.due and "other.ops.svc" in other_service.reason
    garbage = gen.CertBundle(b"", b"junk", b"junk")
    assert gen.renewal_due(garbage, renew_before=margin, now=NOW).due


def test_merge_ca_bundle_keeps_valid_previous_cas_once() -> None:
    old = gen.generate(days=10, now=NOW)
    expired = gen.generate(days=1, now=NOW - dt.timedelta(days=5))
    new = gen.generate(days=10, now=NOW)
    merged = gen.merge_ca_bundle(new.ca_crt, old.ca_crt + expired.ca_crt + new.ca_crt, now=NOW)
    cas = gen.load_certs(merged)
    assert [c.public_bytes(gen.serialization.Encoding.PEM) for c in cas] == [new.ca_crt, old.ca_crt]
    # both the old and the new serving certificate verify against the merged bundle
    assert gen.signed_by(old.tls_crt, merged) and gen.signed_by(new.tls_crt, merged)
    assert gen.merge_ca_bundle(new.ca_crt, b"garbage", now=NOW) == new.ca_crt


def test_cli_generate_contract(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [*coredump_command(), "certs", "generate", "--out", str(out), "--service", "svc", "--namespace", "ns", "--days", "5"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    line = json.loads(proc.stderr.strip().splitlines()[-1])
    assert line["event"] == "certs.generated"
    assert line["sans"] == ["svc", "svc.ns", "svc.ns.svc", "svc.ns.svc.cluster.local", "localhost", "127.0.0.1"]
    assert stat.S_IMODE(os.stat(out / "tls.key").st_mode) == 0o600
    # openssl agrees with us about the chain
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(out / "ca.crt"), str(out / "tls.crt")],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    bad = subprocess.run([*coredump_command(), "certs", "generate", "--out", str(out), "--days", "0"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--days" in bad.stderr


def test_generated_cert_serves_real_tls_with_hostname_check(tmp_path: Path) -> None:
    """A real TLS handshake: the client trusts only ca.crt and checks each SAN name."""
    bundle = gen.generate("svc", "ns")
    gen.write_bundle(bundle, tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"ok")
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        for name in ("svc", "svc.ns.svc", "svc.ns.svc.cluster.local", "localhost", "127.0.0.1"):
            ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                    ctx.wrap_socket(raw, server_hostname=name) as tls:
                assert tls.recv(2) == b"ok"
        ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
        with pytest.raises(ssl.SSLCertVerificationError):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                    ctx.wrap_socket(raw, server_hostname="evil.example"):
                pass
    finally:
        stop.set()
        listener.close()
        thread.join(5)
