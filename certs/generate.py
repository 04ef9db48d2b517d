"""A private CA and the webhook's serving certificate, made with ``cryptography``.

Keys are ECDSA P-256: a handshake costs a fraction of RSA-2048's (the kube-apiserver opens
connections to the webhook all the time), keys are generated in milliseconds (tests make many),
and every TLS stack involved (Go's crypto/tls in the apiserver, OpenSSL in Python) supports it.

Everything here is pure but for :func:`write_bundle`, which writes the three files atomically.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: File names inside a certificate directory (the keys of a kubernetes.io/tls Secret, too).
CA_FILE = "ca.crt"
CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"

DEFAULT_SERVICE = "coredump-webhook"
DEFAULT_NAMESPACE = "coredump-webhook"
DEFAULT_DAYS = 365
#: Certificates are backdated this much so a node whose clock is slightly behind accepts them.
CLOCK_SKEW = dt.timedelta(minutes=5)


class CertError(ValueError):
    """Certificate material that cannot be parsed or used."""


@dataclass(frozen=True)
class CertBundle:
    """PEM bytes of the CA certificate, the serving certificate and its private key."""

    ca_crt: bytes
    tls_crt: bytes
    tls_key: bytes

    def files(self) -> dict[str, bytes]:
        """File name -> content, as written to disk and into the Secret."""
        return {CA_FILE: self.ca_crt, CERT_FILE: self.tls_crt, KEY_FILE: self.tls_key}


@dataclass(frozen=True)
class Renewal:
    """Whether a serving certificate must be replaced, and why (for the logs)."""

    due: bool
    reason: str


def dns_names(service: str, namespace: str) -> list[str]:
    """The DNS SANs the apiserver may use to reach the Service, plus localhost."""
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
        "localhost",
    ]


IP_SANS = (ipaddress.ip_address("127.0.0.1"),)


def _now(now: dt.datetime | None) -> dt.datetime:
    return now if now is not None else dt.datetime.now(dt.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_id(key: ec.EllipticCurvePrivateKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key.public_key())


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """digitalSignature, plus keyCertSign and cRLSign for the CA."""
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
        encipher_only=False, decipher_only=False,
    )


def generate(
    service: str = DEFAULT_SERVICE,
    namespace: str = DEFAULT_NAMESPACE,
    days: int = DEFAULT_DAYS,
    *,
    now: dt.datetime | None = None,
) -> CertBundle:
    """A fresh CA and a serving certificate for ``service.namespace`` signed by it.

    The CA's key is thrown away: a rotation makes a new CA and the caBundle is re-patched,
    so no long-lived signing key has to be stored anywhere.
    """
    if days < 1:
        raise CertError(f"--days must be at least 1, got {days}")
    if not service or not namespace:
        raise CertError("service and namespace must not be empty")
    when = _now(now)
    start = when - CLOCK_SKEW
    end = when + dt.timedelta(days=days)

    ca_key = _new_key()
    ca_name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"coredump-webhook CA {start:%Y%m%dT%H%M%S}")]
    )
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(_key_id(ca_key), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = _new_key()
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names(service, namespace)]
    sans += [x509.IPAddress(ip) for ip in IP_SANS]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{service}.{namespace}.svc")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(_key_id(key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(_key_id(ca_key)),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return CertBundle(
        ca_crt=ca_cert.public_bytes(pem),
        tls_crt=cert.public_bytes(pem),
        tls_key=key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )


def load_cert(pem: bytes) -> x509.Certificate:
    """The first certificate of a PEM blob, or :class:`CertError`."""
    try:
        return x509.load_pem_x509_certificate(pem)
    except (ValueError, TypeError) as exc:
        raise CertError(f"not a PEM certificate: {exc}") from exc


def load_certs(pem: bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle (a caBundle may hold several CAs during a rotation)."""
    try:
        return x509.load_pem_x509_certificates(pem)
    except (ValueError, TypeError) as exc:
        raise CertError(f"not a PEM certificate bundle: {exc}") from exc


def not_after(pem: bytes) -> dt.datetime:
    """Expiry (UTC) of the first certificate in ``pem``."""
    return load_cert(pem).not_valid_after_utc


def fingerprint(pem: bytes) -> str:
    """SHA-256 fingerprint (hex) of the first certificate in ``pem``, for logs."""
    return load_cert(pem).fingerprint(hashes.SHA256()).hex()


def san_dns_names(cert: x509.Certificate) -> list[str]:
    """DNS names in the certificate's subjectAltName (empty when it has none)."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return ext.value.get_values_for_type(x509.DNSName)


def key_matches(cert_pem: bytes, key_pem: bytes) -> bool:
    """True when ``key_pem`` is the private key of the certificate ``cert_pem``."""
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        return False
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return key.public_key().public_bytes(der, pub) == load_cert(cert_pem).public_key().public_bytes(der, pub)


def signed_by(cert_pem: bytes, ca_pem: bytes) -> bool:
    """True when the certificate's signature verifies with one of the CAs in ``ca_pem``."""
    cert = load_cert(cert_pem)
    for ca in load_certs(ca_pem):
        try:
            cert.verify_directly_issued_by(ca)
            return True
        except (ValueError, TypeError, InvalidSignature):
            continue
    return False


def renewal_due(
    bundle: CertBundle,
    *,
    renew_before: dt.timedelta,
    service: str | None = None,
    namespace: str | None = None,
    now: dt.datetime | None = None,
) -> Renewal:
    """Whether ``bundle`` must be replaced: unparsable, mismatched, missing a SAN, or expiring.

    ``renew_before`` is the margin before expiry at which a new certificate is made, so the
    Secret update can reach the pods long before the old one stops working.
    """
    try:
        cert = load_cert(bundle.tls_crt)
        if not key_matches(bundle.tls_crt, bundle.tls_key):
            return Renewal(True, "tls.key does not belong to tls.crt")
        if not signed_by(bundle.tls_crt, bundle.ca_crt):
            return Renewal(True, "tls.crt is not signed by ca.crt")
    except CertError as exc:
        return Renewal(True, str(exc))
    if service and namespace:
        missing = sorted(set(dns_names(service, namespace)) - set(san_dns_names(cert)))
        if missing:
            return Renewal(True, f"subjectAltName lacks {', '.join(missing)}")
    when = _now(now)
    if cert.not_valid_before_utc > when + CLOCK_SKEW:
        return Renewal(True, f"not valid before {cert.not_valid_before_utc.isoformat()}")
    expiry = cert.not_valid_after_utc
    if expiry <= when:
        return Renewal(True, f"expired at {expiry.isoformat()}")
    if expiry - when <= renew_before:
        return Renewal(True, f"expires at {expiry.isoformat()}, within the renewal margin")
    return Renewal(False, f"valid until {expiry.isoformat()}")


def merge_ca_bundle(new_ca: bytes, old_bundle: bytes | None, *, now: dt.datetime | None = None) -> bytes:
    """``new_ca`` followed by the still-valid CAs of ``old_bundle``, without duplicates.

    Keeping the previous CA trusted while pods still serve the previous certificate (a Secret
    volume update takes up to a minute to reach them) means a rotation drops no admission.
    """
    when = _now(now)
    out = [load_cert(new_ca)]
    seen = {out[0].fingerprint(hashes.SHA256())}
    if old_bundle:
        try:
            olds = load_certs(old_bundle)
        except CertError:
            olds = []
        for ca in olds:
            fp = ca.fingerprint(hashes.SHA256())
            if fp in seen or ca.not_valid_after_utc <= when:
                continue
            seen.add(fp)
            out.append(ca)
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in out)


def digest(*parts: bytes) -> str:
    """A short hash of some bytes, used to tell whether certificate files changed."""
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)
    return h.hexdigest()


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_bundle(bundle: CertBundle, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``ca.crt``, ``tls.crt`` and ``tls.key`` (0600) into ``out_dir``, each atomically.

    The key is written first and the certificate last, so a server reloading on a change of
    ``tls.crt`` never pairs a new certificate with an old key for long; the reloader also
    rejects a mismatched pair and keeps serving the previous one.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in (KEY_FILE, CA_FILE, CERT_FILE)}
    _atomic_write(paths[KEY_FILE], bundle.tls_key, 0o600)
    _atomic_write(paths[CA_FILE], bundle.ca_crt, 0o644)
    _atomic_write(paths[CERT_FILE], bundle.tls_crt, 0o644)
    return paths


def read_bundle(cert_dir: str | os.PathLike[str]) -> CertBundle:
    """The three files of a certificate directory (``ca.crt`` may be absent: then empty)."""
    d = Path(cert_dir)
    ca = d / CA_FILE
    return CertBundle(
        ca_crt=ca.read_bytes() if ca.exists() else b"",
        tls_crt=(d / CERT_FILE).read_bytes(),
        tls_key=(d / KEY_FILE).read_bytes(),
    )
