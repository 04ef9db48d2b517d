"""The thin Kubernetes edge of the certificates: the serving Secret and the caBundle.

Used by ``coredump certs bootstrap`` (the chart's Job). Every call goes through the official
client with ``_preload_content=False`` and works on the API's own JSON, so what is tested
against recorded API responses is exactly what the client sends and receives. The decisions
(reuse or rotate, what to patch) are pure functions beneath it.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from webhook.certs import generate as gen
from webhook.certs.settings import BootstrapSettings

log = logging.getLogger(__name__)


class KubeError(RuntimeError):
    """An API call failed in a way the bootstrap cannot work around (clear message, exit 1)."""


@dataclass
class BootstrapResult:
    """What the bootstrap did, logged as one JSON line."""

    secret_action: str  # "created", "reused" or "rotated"
    reason: str
    not_after: str
    webhooks_patched: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {
            "secret": self.secret_action,
            "reason": self.reason,
            "notAfter": self.not_after,
            "webhooksPatched": self.webhooks_patched,
        }


# --- pure decisions -------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes:
    if not text:
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        return b""


def bundle_from_secret(secret: dict[str, Any]) -> gen.CertBundle:
    """The certificate material of a Secret as the API returns it (base64 ``data``)."""
    data = secret.get("data") or {}
    return gen.CertBundle(
        ca_crt=_unb64(data.get(gen.CA_FILE)),
        tls_crt=_unb64(data.get(gen.CERT_FILE)),
        tls_key=_unb64(data.get(gen.KEY_FILE)),
    )


def secret_body(settings: BootstrapSettings, bundle: gen.CertBundle, resource_version: str | None = None) -> dict[str, Any]:
    """A kubernetes.io/tls Secret holding ``bundle`` (with ``ca.crt`` for clients and probes)."""
    metadata: dict[str, Any] = {
        "name": settings.secret,
        "namespace": settings.namespace,
        "labels": {"app.kubernetes.io/name": "coredump-webhook", "app.kubernetes.io/component": "certificates"},
    }
    if resource_version:
        metadata["resourceVersion"] = resource_version  # optimistic concurrency on replace
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "kubernetes.io/tls",
        "data": {name: _b64(content) for name, content in bundle.files().items()},
    }


def ca_bundle_patch(config: dict[str, Any], ca_crt: bytes, *, now: dt.datetime | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """JSONPatch operations giving every webhook of ``config`` a caBundle that trusts ``ca_crt``.

    A webhook whose caBundle already holds ``ca_crt`` is left alone; others get ``ca_crt``
    followed by their still-valid previous CAs (so pods still serving the previous
    certificate keep being trusted until their Secret volume catches up). Each change is
    guarded by a ``test`` of the webhook's name at that index, so a concurrent edit of the
    list makes the PATCH fail instead of writing into the wrong webhook.
    """
    new_fp = gen.load_cert(ca_crt).fingerprint(gen.hashes.SHA256())
    ops: list[dict[str, Any]] = []
    names: list[str] = []
    for i, webhook in enumerate(config.get("webhooks") or []):
        current = _unb64((webhook.get("clientConfig") or {}).get("caBundle"))
        try:
            present = {c.fingerprint(gen.hashes.SHA256()) for c in gen.load_certs(current)} if current else set()
        except gen.CertError:
            present = set()
        if new_fp in present:
            continue
        merged = gen.merge_ca_bundle(ca_crt, current, now=now)
        ops.append({"op": "test", "path": f"/webhooks/{i}/name", "value": webhook.get("name")})
        ops.append({"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": _b64(merged)})
        names.append(str(webhook.get("name")))
    return ops, names


# --- the API edge ---------------------------------------------------------------------------


def _json(resp: Any) -> dict[str, Any]:
    return json.loads(resp.data)


def _status_message(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "{}")
        return str(body.get("message") or exc.reason)
    except (ValueError, AttributeError):
        return str(exc.reason)


def api_failure(action: str, exc: ApiException) -> KubeError:
    hint = " (the Job's ServiceAccount lacks RBAC for it)" if exc.status == 403 else ""
    return KubeError(f"{action}: HTTP {exc.status}: {_status_message(exc)}{hint}")


#: Attempts when another bootstrap changes the Secret at the same moment (HTTP 409).
CONFLICT_ATTEMPTS = 3


def ensure_secret(
    api: k8s.ApiClient,
    settings: BootstrapSettings,
    *,
    now: dt.datetime | None = None,
    make: Callable[[], gen.CertBundle] | None = None,
) -> tuple[gen.CertBundle, str, str]:
    """Create the serving Secret, reuse a valid one, or rotate one due for renewal.

    Returns ``(bundle, action, reason)``. When a concurrent bootstrap wins a race (409 on
    create or on the versioned replace), the Secret is read again and judged afresh, so two
    Jobs never end up with different certificates in the Secret and the caBundle.
    """
    for attempt in range(1, CONFLICT_ATTEMPTS + 1):
        try:
            return _ensure_secret_once(api, settings, now=now, make=make)
        except ApiException as exc:
            if exc.status != 409 or attempt == CONFLICT_ATTEMPTS:
                raise api_failure(f"writing secret {settings.namespace}/{settings.secret}", exc) from exc
            log.info("secret changed concurrently; reading it again",
                     extra={"event": "certs.conflict", "attempt": attempt})
    raise AssertionError("unreachable")  # pragma: no cover


def _ensure_secret_once(
    api: k8s.ApiClient,
    settings: BootstrapSettings,
    *,
    now: dt.datetime | None,
    make: Callable[[], gen.CertBundle] | None,
) -> tuple[gen.CertBundle, str, str]:
    """One read-decide-write round; a 409 from the write propagates as ApiException."""
    core = k8s.CoreV1Api(api)
    make = make or (lambda: gen.generate(settings.service, settings.namespace, settings.days, now=now))
    timeout = settings.request_timeout
    where = f"secret {settings.namespace}/{settings.secret}"
    try:
        existing = _json(core.read_namespaced_secret(
            settings.secret, settings.namespace, _preload_content=False, _request_timeout=timeout))
    except ApiException as exc:
        if exc.status != 404:
            raise api_failure(f"reading {where}", exc) from exc
        existing = None

    if existing is None:
        bundle = make()
        try:
            core.create_namespaced_secret(
                settings.namespace, k8s.V1Secret.model_validate(secret_body(settings, bundle)),
                _preload_content=False, _request_timeout=timeout)
        except ApiException as exc:
            if exc.status == 409:
                raise
            raise api_failure(f"creating {where}", exc) from exc
        return bundle, "created", "no Secret yet"

    current = bundle_from_secret(existing)
    renewal = gen.renewal_due(
        current,
        renew_before=dt.timedelta(days=settings.renew_before_days),
        service=settings.service,
        namespace=settings.namespace,
        now=now,
    )
    if not renewal.due:
        return current, "reused", renewal.reason
    bundle = make()
    version = (existing.get("metadata") or {}).get("resourceVersion")
    try:
        core.replace_namespaced_secret(
            settings.secret, settings.namespace, k8s.V1Secret.model_validate(secret_body(settings, bundle, version)),
            _preload_content=False, _request_timeout=timeout)
    except ApiException as exc:
        if exc.status == 409:
            raise
        raise api_failure(f"replacing {where} ({renewal.reason})", exc) from exc
    return bundle, "rotated", renewal.reason


#: kind -> (read method, patch method, resource name for messages) of the admissionregistration API.
_CONFIG_KINDS = {
    "mutating": ("read_mutating_webhook_configuration", "patch_mutating_webhook_configuration",
                 "mutatingwebhookconfiguration"),
    "validating": ("read_validating_webhook_configuration", "patch_validating_webhook_configuration",
                   "validatingwebhookconfiguration"),
}


def patch_ca_bundle(
    api: k8s.ApiClient,
    settings: BootstrapSettings,
    ca_crt: bytes,
    *,
    kind: str = "mutating",
    name: str | None = None,
    now: dt.datetime | None = None,
) -> list[str]:
    """Make every webhook of a Mutating (or Validating) WebhookConfiguration trust ``ca_crt``.

    Returns the names of the webhooks patched (none when all already trust it).
    """
    read, patch, resource = _CONFIG_KINDS[kind]
    name = name or settings.webhook_config
    adm = k8s.AdmissionregistrationV1Api(api)
    where = f"{resource} {name}"
    try:
        config = _json(getattr(adm, read)(name, _preload_content=False, _request_timeout=settings.request_timeout))
    except ApiException as exc:
        raise api_failure(f"reading {where}", exc) from exc
    ops, names = ca_bundle_patch(config, ca_crt, now=now)
    if not ops:
        return []
    try:
        getattr(adm, patch)(name, ops, _content_type="application/json-patch+json",
                            _preload_content=False, _request_timeout=settings.request_timeout)
    except ApiException as exc:
        raise api_failure(f"patching the caBundle of {where}", exc) from exc
    return names


def bootstrap(api: k8s.ApiClient, settings: BootstrapSettings, *, now: dt.datetime | None = None,
              secret_only: bool = False) -> BootstrapResult:
    """Secret first, then caBundle: the CA the apiserver trusts is always one a pod can serve.

    ``secret_only`` stops after the Secret (a pre-install hook runs before the webhook
    configurations exist; a later run patches them).
    """
    bundle, action, reason = ensure_secret(api, settings, now=now)
    if secret_only:
        return BootstrapResult(action, reason, gen.not_after(bundle.tls_crt).isoformat(), [])
    patched = patch_ca_bundle(api, settings, bundle.ca_crt, now=now)
    if settings.validating_webhook_config:
        patched += patch_ca_bundle(api, settings, bundle.ca_crt, kind="validating",
                                   name=settings.validating_webhook_config, now=now)
    return BootstrapResult(action, reason, gen.not_after(bundle.tls_crt).isoformat(), patched)

