"""Pull credentials: decoding docker-config Secrets and choosing the one for an image (kubelet's rules)."""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from webhook.registry.references import DOCKER_HUB, DOCKER_HUB_ALIASES, ImageRef

SECRET_DOCKERCONFIGJSON = "kubernetes.io/dockerconfigjson"
SECRET_DOCKERCFG = "kubernetes.io/dockercfg"


@dataclass(frozen=True)
class Credential:
    """Basic credentials for one registry (from a docker config)."""

    username: str
    password: str = field(repr=False)

    @property
    def identity(self) -> str:
        """Cache key part that tells credentials apart without keeping the secret in clear."""
        return hashlib.sha256(f"{self.username}\0{self.password}".encode()).hexdigest()[:16]


def _b64json(value: str, what: str) -> Any:
    try:
        return json.loads(base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError, TypeError) as e:
        raise ValueError(f"{what} is not base64 JSON: {e}") from None


def _credential(entry: Any) -> Credential | None:
    if not isinstance(entry, dict):
        return None
    user, password = entry.get("username"), entry.get("password")
    if isinstance(user, str) and isinstance(password, str) and (user or password):
        return Credential(user, password)
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            raw = base64.b64decode(auth, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, password = raw.partition(":")
        if sep:
            return Credential(user, password)
    return None


def decode_pull_secret(secret: Mapping[str, Any]) -> dict[str, Credential]:
    """Registry key -> credentials of one Secret as the API returns it (base64 ``data``).

    Understands ``kubernetes.io/dockerconfigjson`` ({"auths": {...}}) and the legacy
    ``kubernetes.io/dockercfg`` (the map itself). Raises ValueError for any other type or bad data.
    """
    stype = secret.get("type")
    data = secret.get("data") or {}
    name = (secret.get("metadata") or {}).get("name", "?")
    if stype == SECRET_DOCKERCONFIGJSON:
        cfg = _b64json(data.get(".dockerconfigjson", ""), f"secret {name} .dockerconfigjson")
        auths = cfg.get("auths") if isinstance(cfg, dict) else None
    elif stype == SECRET_DOCKERCFG:
        auths = _b64json(data.get(".dockercfg", ""), f"secret {name} .dockercfg")
    else:
        raise ValueError(f"secret {name} has type {stype!r}, not {SECRET_DOCKERCONFIGJSON} or {SECRET_DOCKERCFG}")
    if not isinstance(auths, dict):
        raise ValueError(f"secret {name} holds no registry map")
    out = {}
    for key, entry in auths.items():
        cred = _credential(entry)
        if cred is not None:
            out[str(key)] = cred
    return out


def _split_key(key: str) -> tuple[str, str | None, str]:
    """Docker config key -> (host glob, port or None, path prefix), like kubelet parses them."""
    if "://" not in key:
        key = "https://" + key
    parts = urlsplit(key)
    host = (parts.hostname or "").lower()
    try:
        port = str(parts.port) if parts.port else None
    except ValueError:
        port = None
    path = parts.path.strip("/")
    if path in ("v1", "v2"):
        path = ""
    return host, port, path


def credentials_for(ref: ImageRef, configs: Iterable[Mapping[str, Credential]]) -> Credential | None:
    """The most specific credential for ``ref`` (kubelet's matching: host glob per label, port,
    path prefix); among equally specific ones the first secret wins."""
    host, port, _ = _split_key(ref.registry)
    port = port or ""
    hosts = DOCKER_HUB_ALIASES if ref.registry == DOCKER_HUB else (host,)
    best: tuple[int, Credential] | None = None
    for config in configs:
        for key, cred in config.items():
            khost, kport, kpath = _split_key(key)
            if kport is not None and kport != port:
                continue
            if kport is None and port:
                continue
            klabels = khost.split(".")
            if not any(
                len(klabels) == len(h.split(".")) and all(fnmatch.fnmatchcase(label, k) for k, label in zip(klabels, h.split("."), strict=True))
                for h in hosts
            ):
                continue
            if kpath and not (ref.repository == kpath or ref.repository.startswith(kpath + "/")):
                continue
            score = len(khost) + len(kpath) * 2 + (1000 if "*" not in khost else 0)
            if best is None or score > best[0]:
                best = (score, cred)
    return best[1] if best else None
