"""The ``WWW-Authenticate`` challenge a registry answers 401 with (RFC 7235 parameters)."""

from __future__ import annotations

import base64
import re
import time
from typing import TYPE_CHECKING
from urllib.parse import urlencode, urlsplit

import requests

from webhook.registry.credentials import Credential
from webhook.registry.references import ImageRef
from webhook.registry.responses import Budget, ResolveError, json_object, read_body, registry_error

if TYPE_CHECKING:  # pragma: no cover
    from webhook.registry.resolver import RegistryResolver

_PARAM_RE = re.compile(r'\s*([a-zA-Z_][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*(?:,|$)')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """'Bearer realm="x",service="y"' -> ("bearer", {"realm": "x", "service": "y"})."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    pos = 0
    rest = rest.strip()
    while pos < len(rest):
        m = _PARAM_RE.match(rest, pos)
        if not m or m.end() == pos:
            break
        quoted, bare = m.group(2), m.group(3)
        params[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
        pos = m.end()
    return scheme.lower(), params


class ChallengeAuth:
    """The Authorization header of one resolution: anonymous, basic, or a bearer token."""

    def __init__(self, resolver: RegistryResolver, ref: ImageRef, cred: Credential | None, identity: str) -> None:
        self.resolver, self.ref, self.cred, self.identity = resolver, ref, cred, identity
        self.value: str | None = None
        self.scope = f"repository:{ref.repository}:pull"
        token = resolver._tokens.get((ref.registry, self.scope, identity), time.monotonic())
        if token is not None:
            self.value = f"Bearer {token}"

    def header(self) -> dict:
        return {"Authorization": self.value} if self.value else {}

    def handle_challenge(self, resp: requests.Response, budget: Budget) -> bool:
        """Act on a 401: True when a retry makes sense."""
        scheme, params = parse_challenge(resp.headers.get("WWW-Authenticate", ""))
        if scheme == "basic":
            if self.cred is None or (self.value or "").startswith("Basic "):
                return False
            raw = f"{self.cred.username}:{self.cred.password}".encode()
            self.value = "Basic " + base64.b64encode(raw).decode()
            return True
        if scheme != "bearer" or "realm" not in params:
            return False
        image = str(self.ref)
        query = {"service": params["service"]} if "service" in params else {}
        query["scope"] = params.get("scope") or self.scope
        realm = params["realm"]
        if urlsplit(realm).scheme != "https":
            # A plain-HTTP realm would send credentials in clear, and could aim the webhook anywhere.
            raise ResolveError(f"image {image}: token realm {realm!r} is not HTTPS", "token realm not HTTPS")
        basic = (self.cred.username, self.cred.password) if self.cred else None
        token_resp = self.resolver._request(image, realm + ("&" if "?" in realm else "?") + urlencode(query), {}, budget, basic)
        if token_resp.status_code != 200:
            detail = registry_error(token_resp, budget)
            token_resp.close()
            raise ResolveError(f"image {image}: token server {urlsplit(realm).netloc}: HTTP {token_resp.status_code}{detail}", "token refused")
        data = json_object(read_body(token_resp, budget, 1 << 20, f"image {image}: token"), f"image {image}: token response")
        token = data.get("token") or data.get("access_token")
        if not isinstance(token, str) or not token:
            raise ResolveError(f"image {image}: token server {urlsplit(realm).netloc} returned no token", "token refused")
        try:
            lifetime = float(data.get("expires_in") or 60)
        except (TypeError, ValueError):
            lifetime = 60.0
        # Reuse it for later resolutions of the same repository, a little before it expires.
        self.resolver._tokens.put((self.ref.registry, query["scope"], self.identity), token, time.monotonic() + max(0.0, lifetime - 10))
        self.value = f"Bearer {token}"
        return True


