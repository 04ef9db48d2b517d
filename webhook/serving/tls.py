"""Serving certificates that follow their files: reload on change, never drop a connection.

gunicorn asks its ``ssl_context`` hook for a context on every new connection. The hook hands
out a cached ``ssl.SSLContext`` and, at most every ``interval`` seconds, compares the bytes of
``tls.crt``/``tls.key`` with what it loaded; on a change it builds a new context and swaps it
in. Connections already open keep the context they were accepted with; new ones get the new
certificate. A pair that does not load (a half-written rotation, a key that does not match)
is logged and the previous context keeps serving until a good pair appears.
"""

from __future__ import annotations

import logging
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from webhook.certs import generate as gen

log = logging.getLogger(__name__)


class CertLoadError(RuntimeError):
    """The certificate files cannot be read or loaded."""


@dataclass(frozen=True)
class LoadedCert:
    """What is being served: the context and facts about its certificate."""

    context: ssl.SSLContext
    digest: str
    not_after: float  # epoch seconds
    sha256: str


def build_context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """A TLS 1.2+ server context from PEM bytes (loaded through a private temp dir)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # load_cert_chain only takes paths: give it exactly the bytes that were hashed.
    with tempfile.TemporaryDirectory(prefix="coredump-tls-") as tmp:
        cert_path, key_path = Path(tmp, "tls.crt"), Path(tmp, "tls.key")
        cert_path.write_bytes(cert_pem)
        key_path.touch(mode=0o600)
        key_path.write_bytes(key_pem)
        try:
            ctx.load_cert_chain(certfile=str(cert_path), keyfile=str(key_path))
        except (ssl.SSLError, OSError) as exc:
            raise CertLoadError(f"certificate and key do not load: {exc}") from exc
    return ctx


class CertReloader:
    """Hands out the current server context; reloads it when the files' bytes change.

    Also the server's readiness: ready once a certificate is loaded and not expired.
    Thread-safe (gthread workers call it from many threads).
    """

    def __init__(
        self,
        cert_file: Path,
        key_file: Path,
        interval: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[LoadedCert], None] | None = None,
    ) -> None:
        self.cert_file = Path(cert_file)
        self.key_file = Path(key_file)
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._current: LoadedCert | None = None
        self._last_check = float("-inf")
        self.last_error: str | None = None
        self.reloads = 0
        self.on_change = on_change

    def _read(self) -> tuple[bytes, bytes]:
        try:
            return self.cert_file.read_bytes(), self.key_file.read_bytes()
        except OSError as exc:
            raise CertLoadError(f"cannot read {exc.filename}: {exc.strerror}") from exc

    def load(self) -> LoadedCert:
        """Load the files now (raises :class:`CertLoadError`); used at start to fail fast."""
        with self._lock:
            self._last_check = self._clock()
            return self._load_locked(force=True)

    def _load_locked(self, force: bool = False) -> LoadedCert:
        cert_pem, key_pem = self._read()
        digest = gen.digest(cert_pem, key_pem)
        if not force and self._current is not None and self._current.digest == digest:
            return self._current
        context = build_context(cert_pem, key_pem)
        try:
            expiry = gen.not_after(cert_pem).timestamp()
            sha = gen.fingerprint(cert_pem)
        except gen.CertError as exc:  # pragma: no cover - ssl already parsed it
            raise CertLoadError(str(exc)) from exc
        previous = self._current
        self._current = LoadedCert(context, digest, expiry, sha)
        self.last_error = None
        if previous is not None:
            self.reloads += 1
        log.info(
            "certificate loaded",
            extra={"event": "tls.loaded", "sha256": sha, "notAfter": expiry,
                   "previousSha256": previous.sha256 if previous else None},
        )
        if self.on_change is not None:
            self.on_change(self._current)
        return self._current

    def refresh(self) -> LoadedCert | None:
        """Reload if the check interval has passed and the files changed; the current cert."""
        now = self._clock()
        if now - self._last_check < self.interval and self._current is not None:
            return self._current
        with self._lock:
            if now - self._last_check < self.interval and self._current is not None:
                return self._current
            self._last_check = now
            try:
                return self._load_locked()
            except CertLoadError as exc:
                if self.last_error != str(exc):
                    log.error("certificate reload failed; keeping the previous one",
                              extra={"event": "tls.reload_failed", "error": str(exc)})
                self.last_error = str(exc)
                return self._current

    def context(self) -> ssl.SSLContext:
        """The context for a new connection (the gunicorn ``ssl_context`` hook calls this)."""
        current = self.refresh()
        if current is None:
            raise CertLoadError(self.last_error or "no certificate loaded")
        return current.context

    # --- readiness (the app's /readyz and metrics) ---

    def status(self) -> tuple[bool, str]:
        current = self.refresh()
        if current is None:
            return False, self.last_error or "no certificate loaded"
        if current.not_after <= time.time():
            return False, "certificate expired"
        return True, f"certificate {current.sha256[:16]} loaded"

    def cert_not_after(self) -> float | None:
        current = self._current
        return current.not_after if current else None


class StaticReadiness:
    """Readiness without TLS (tests through ``app.test_client()``, or a TLS-terminating proxy)."""

    def __init__(self, ready: bool = True, not_after: float | None = None, reason: str = "static") -> None:
        self.ready = ready
        self.not_after = not_after
        self.reason = reason

    def status(self) -> tuple[bool, str]:
        return self.ready, self.reason

    def cert_not_after(self) -> float | None:
        return self.not_after
