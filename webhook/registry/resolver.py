"""Resolve an image's ENTRYPOINT and CMD from its registry (OCI distribution v2 API).

The webhook wraps a container's command with the ulimit wrapper; when the container has no
``command`` the real one is only in the image config, so it must be fetched at admission.
:class:`RegistryResolver` does that within a strict time budget, with caches, and never raises
anything but :class:`ResolveError`: the caller then leaves the container alone and says why in
a warning. The pure parts it uses live beside it (references, platforms, credentials,
challenges, config); the connection rules in ``egress`` and the thread pool in ``pool``.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import logging
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from concurrent.futures import wait as futures_wait
from typing import Any
from urllib.parse import urlsplit

import requests

from webhook.registry.challenges import ChallengeAuth
from webhook.registry.config import (
    DOCKER_MANIFEST_V1,
    DOCKER_MANIFEST_V1_SIGNED,
    INDEX_TYPES,
    MANIFEST_ACCEPT,
    ImageConfig,
    entrypoint_and_cmd,
)
from webhook.registry.credentials import Credential, credentials_for, decode_pull_secret
from webhook.registry.egress import EgressRefused, follow, guard_session, guarded_session
from webhook.registry.platforms import choose_platform
from webhook.registry.pool import LookupPool, PoolBusy
from webhook.registry.references import DIGEST_RE, DOCKER_HUB, ImageRef, parse_image_ref
from webhook.registry.responses import (
    MAX_CONFIG_BYTES,
    MAX_MANIFEST_BYTES,
    Budget,
    BudgetSpent,
    ResolveError,
    json_object,
    read_body,
    registry_error,
    short_error,
)
from webhook.registry.secrets import SecretReader
from webhook.registry.settings import RegistrySettings

log = logging.getLogger(__name__)


class _LRU:
    """A small thread-safe LRU of (value, expiry) with per-entry expiry (None: never)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.data: collections.OrderedDict = collections.OrderedDict()
        self.lock = threading.Lock()

    def get(self, key, now: float):
        with self.lock:
            item = self.data.get(key)
            if item is None:
                return None
            value, expiry = item
            if expiry is not None and now >= expiry:
                del self.data[key]
                return None
            self.data.move_to_end(key)
            return value

    def put(self, key, value, expiry: float | None) -> None:
        with self.lock:
            self.data[key] = (value, expiry)
            self.data.move_to_end(key)
            while len(self.data) > self.size:
                self.data.popitem(last=False)


class RegistryResolver:
    """Callable the admission code uses: ``resolver(image, namespace=, pull_secrets=, deadline=)``.

    ``deadline`` is a ``time.monotonic()`` instant; the whole call (cache misses included) never
    takes longer than ``min(settings.timeout_seconds, deadline - now)``: the network work runs in
    a worker thread with per-request timeouts from the remaining budget, and the caller stops
    waiting at the budget even if a server trickles bytes.
    """

    def __init__(
        self,
        settings: RegistrySettings,
        secret_reader: SecretReader | None = None,
        session: requests.Session | None = None,
    ) -> None:
        self.settings = settings
        self.secret_reader = secret_reader
        self.policy = settings.egress_policy()
        if session is None:
            session = guarded_session(self.policy)
        else:  # a caller's session (tests count requests): the same rules apply to it
            guard_session(session, self.policy)
        self.session = session
        self.pool = LookupPool(per_registry=settings.per_registry_concurrency)
        self._results = _LRU(settings.cache_size)  # (ref, platform, identity) -> ImageConfig
        self._failures = _LRU(settings.cache_size)  # same key -> (message, reason)
        self._by_digest = _LRU(settings.cache_size)  # (registry, repo, digest, platform) -> ImageConfig
        self._tokens = _LRU(settings.cache_size)  # (registry, scope, identity) -> token

    # -- public --
    def __call__(self, image: str, *, namespace: str, pull_secrets: list[str], deadline: float | None) -> ImageConfig:
        outcome = self.resolve_many([image], namespace=namespace, pull_secrets=pull_secrets, deadline=deadline)[image]
        if isinstance(outcome, ResolveError):
            raise outcome
        return outcome

    def resolve_many(
        self, images: list[str], *, namespace: str, pull_secrets: list[str], deadline: float | None
    ) -> dict[str, ImageConfig | ResolveError]:
        """Every image's config (or why not), resolved concurrently in the look-up pool.

        Returns when all are done or at ``min(settings.timeout_seconds, deadline - now)``,
        whichever comes first, even if a server trickles bytes; the look-ups themselves never
        run in the calling thread (a web server's thread only waits here).
        """
        start = time.monotonic()
        budget = self.settings.timeout_seconds
        if deadline is not None:
            budget = min(budget, deadline - start)
        secrets = list(pull_secrets or [])
        out: dict[str, ImageConfig | ResolveError] = {}
        waiting: dict[str, tuple[Future, str, ImageRef]] = {}
        for image in images:
            try:
                ref = parse_image_ref(image)
            except ValueError as e:
                out[image] = ResolveError(f"image {image!r}: cannot parse the reference: {e}", "invalid image reference")
                continue
            shown = f"{image} ({ref})" if str(ref) != image else image
            if budget <= 0:
                out[image] = ResolveError(f"image {shown}: no time left in the admission budget to ask the registry",
                                          "time budget spent")
                continue
            key = (str(ref), namespace, tuple(secrets), self.settings.platform)
            work = functools.partial(self._resolve, shown, ref, namespace, secrets, Budget(budget))
            waiting[image] = (self.pool.submit(key, ref.registry, start + budget, work), shown, ref)
        if waiting:
            futures_wait([f for f, _, _ in waiting.values()], timeout=max(0.0, start + budget - time.monotonic()))
        for image, (future, shown, ref) in waiting.items():
            out[image] = self._outcome(future, shown, ref, budget)
        return out

    def cached(self, images: list[str], *, namespace: str, pull_secrets: list[str]) -> dict[str, ImageConfig | ResolveError]:
        """What the caches answer at once, without starting a look-up (None for a miss is left out).

        Only anonymous resolutions are looked up (credentials would need the API); for the
        caller that may not wait (see webhook/server/lookups.py)."""
        out: dict[str, ImageConfig | ResolveError] = {}
        if pull_secrets and self.settings.read_pull_secrets and self.secret_reader is not None:
            return out
        now = time.monotonic()
        for image in images:
            try:
                ref = parse_image_ref(image)
            except ValueError:
                continue
            key = (str(ref), self.settings.platform, "anonymous")
            hit = self._results.get(key, now)
            if hit is not None:
                out[image] = hit
                continue
            failed = self._failures.get(key, now)
            if failed is not None:
                out[image] = ResolveError(failed[0] + " (cached failure)", failed[1])
        return out

    def _outcome(self, future: Future, image: str, ref: ImageRef, budget: float) -> ImageConfig | ResolveError:
        if not future.done():
            return ResolveError(f"image {image}: registry {ref.registry} did not answer within {budget:.1f}s",
                                "registry timed out")
        err = future.exception()
        if err is None:
            return future.result()
        if isinstance(err, ResolveError):
            return err
        if isinstance(err, PoolBusy):
            return ResolveError(f"image {image}: {err}", err.reason)
        if isinstance(err, BudgetSpent):
            return ResolveError(f"image {image}: registry {ref.registry} did not answer within {budget:.1f}s",
                                "registry timed out")
        log.error("registry look-up failed unexpectedly", exc_info=err,
                  extra={"event": "registry.error", "image": image})
        return ResolveError(f"image {image}: unexpected {type(err).__name__}: {err}", "internal error")

    # -- the resolution proper (worker thread) --
    def _resolve(self, image: str, ref: ImageRef, namespace: str, secrets: list[str], budget: Budget) -> ImageConfig:
        cred, note = self._credential(ref, namespace, secrets)
        identity = cred.identity if cred else "anonymous"
        key = (str(ref), self.settings.platform, identity)
        now = time.monotonic()
        hit = self._results.get(key, now)
        if hit is not None:
            return hit
        failed = self._failures.get(key, now)
        if failed is not None:
            raise ResolveError(failed[0] + " (cached failure)", failed[1])
        try:
            result = self._fetch(image, ref, cred, identity, budget)
        except ResolveError as e:
            msg = f"{e}{note}"
            self._remember_failure(key, msg, e.reason)
            raise ResolveError(msg, e.reason) from None
        except BudgetSpent:
            msg = f"image {image}: registry {ref.registry} did not answer within {budget.seconds:.1f}s"
            self._remember_failure(key, msg, "registry timed out")
            raise ResolveError(msg, "registry timed out") from None
        expiry = None if ref.digest else time.monotonic() + self.settings.cache_ttl_seconds
        self._results.put(key, result, expiry)
        return result

    def _remember_failure(self, key, msg: str, reason: str) -> None:
        if self.settings.negative_ttl_seconds > 0:
            self._failures.put(key, (msg, reason), time.monotonic() + self.settings.negative_ttl_seconds)

    def _credential(self, ref: ImageRef, namespace: str, secrets: list[str]) -> tuple[Credential | None, str]:
        """Credentials from the pod's pull secrets, and a note for error messages."""
        if not secrets or not self.settings.read_pull_secrets or self.secret_reader is None:
            return None, ""
        try:
            objs = self.secret_reader(namespace, secrets)
        except Exception as e:  # RBAC, API down: try anonymously, say so if that fails too
            return None, f" (pull secrets not readable: {e})"
        configs, problems = [], []
        for obj in objs:
            try:
                configs.append(decode_pull_secret(obj))
            except ValueError as e:
                problems.append(str(e))
        cred = credentials_for(ref, configs)
        note = f" (ignored: {'; '.join(problems)})" if problems else ""
        if cred is None and configs:
            note += f" (no pull secret has credentials for {ref.registry})"
        return cred, note

    def _base_url(self, ref: ImageRef) -> str:
        host = self.settings.docker_hub_host if ref.registry == DOCKER_HUB else ref.registry
        bare = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        insecure = host in self.settings.insecure_registries or bare in self.settings.insecure_registries
        return f"{'http' if insecure else 'https'}://{host}"

    def _fetch(self, image: str, ref: ImageRef, cred: Credential | None, identity: str, budget: Budget) -> ImageConfig:
        base = f"{self._base_url(ref)}/v2/{ref.repository}"
        auth = ChallengeAuth(self, ref, cred, identity)
        body, media_type = self._get_manifest(image, base, ref.reference, auth, budget)
        top_digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if ref.digest and ref.digest.startswith("sha256:") and ref.digest != top_digest:
            raise ResolveError(f"image {image}: manifest content does not match digest {ref.digest}", "digest mismatch")
        manifest = json_object(body, f"image {image}: manifest")
        media_type = manifest.get("mediaType") or media_type
        digest = top_digest
        for _ in range(2):  # an index may point to another index; more is not seen in practice
            if media_type not in INDEX_TYPES and not (media_type is None and "manifests" in manifest):
                break
            try:
                entry = choose_platform(manifest, self.settings.platform)
            except ValueError as e:
                raise ResolveError(f"image {image}: {e}", "no manifest for the node platform") from None
            digest_ = entry.get("digest")
            if not isinstance(digest_, str) or not DIGEST_RE.match(digest_):
                raise ResolveError(f"image {image}: index entry without a valid digest")
            cached = self._by_digest.get((ref.registry, ref.repository, digest_, self.settings.platform), time.monotonic())
            if cached is not None:
                return dataclasses.replace(cached, digest=top_digest)
            body, media_type = self._get_manifest(image, base, digest_, auth, budget)
            manifest = json_object(body, f"image {image}: platform manifest")
            media_type = manifest.get("mediaType") or media_type
            digest = digest_
        cached = self._by_digest.get((ref.registry, ref.repository, digest, self.settings.platform), time.monotonic())
        if cached is not None:  # a moved-back or re-checked tag: the config is content-addressed
            return dataclasses.replace(cached, digest=top_digest)
        if media_type in (DOCKER_MANIFEST_V1, DOCKER_MANIFEST_V1_SIGNED) or manifest.get("schemaVersion") == 1:
            config_blob = _schema1_config(manifest, image)
        else:
            desc = manifest.get("config")
            if not isinstance(desc, dict) or not isinstance(desc.get("digest"), str):
                raise ResolveError(f"image {image}: manifest ({media_type}) has no config descriptor")
            blob = self._get(image, f"{base}/blobs/{desc['digest']}", {}, auth, budget, MAX_CONFIG_BYTES, "config blob")[0]
            if desc["digest"].startswith("sha256:") and "sha256:" + hashlib.sha256(blob).hexdigest() != desc["digest"]:
                raise ResolveError(f"image {image}: config blob does not match digest {desc['digest']}", "digest mismatch")
            config_blob = json_object(blob, f"image {image}: config blob")
        try:
            entrypoint, cmd = entrypoint_and_cmd(config_blob)
        except ValueError as e:
            raise ResolveError(f"image {image}: {e}") from None
        result = ImageConfig(entrypoint=entrypoint, cmd=cmd, digest=top_digest)
        self._by_digest.put((ref.registry, ref.repository, digest, self.settings.platform), result, None)
        return result

    def _get_manifest(self, image: str, base: str, reference: str, auth: ChallengeAuth, budget: Budget) -> tuple[bytes, str | None]:
        body, resp = self._get(image, f"{base}/manifests/{reference}", {"Accept": MANIFEST_ACCEPT}, auth, budget, MAX_MANIFEST_BYTES, f"manifest {reference}")
        return body, (resp.headers.get("Content-Type") or "").split(";")[0].strip() or None

    def _get(self, image: str, url: str, headers: dict, auth: ChallengeAuth, budget: Budget, limit: int, what: str) -> tuple[bytes, requests.Response]:
        for attempt in range(2):
            resp = self._request(image, url, {**headers, **auth.header()}, budget, None)
            if resp.status_code == 401 and attempt == 0 and auth.handle_challenge(resp, budget):
                resp.close()
                continue
            break
        if resp.status_code != 200:
            detail = registry_error(resp, budget)
            resp.close()
            hint, reason = "", f"HTTP {resp.status_code}"
            if resp.status_code in (401, 403):
                hint = " (needs pull credentials)" if auth.cred is None else " (the pull secret's credentials were refused)"
                reason = "needs pull credentials" if auth.cred is None else "credentials refused"
            elif resp.status_code == 404:
                reason = "image not found"
            raise ResolveError(f"image {image}: {what}: HTTP {resp.status_code}{detail}{hint}", reason)
        return read_body(resp, budget, limit, f"image {image}: {what}"), resp

    def _request(self, image: str, url: str, headers: dict, budget: Budget, auth: Any) -> requests.Response:
        left = budget.remaining()
        try:
            return follow(
                self.session, self.policy, url, headers=headers, auth=auth,
                timeout=(left, left), stream=True, verify=self.settings.ca_file or True,
            )
        except EgressRefused as e:
            raise ResolveError(f"image {image}: {e}", e.reason) from None
        except requests.Timeout:
            raise BudgetSpent() from None
        except requests.exceptions.SSLError as e:
            raise ResolveError(f"image {image}: TLS with {urlsplit(url).netloc} failed: {short_error(e)}", "TLS error") from None
        except requests.RequestException as e:
            raise ResolveError(f"image {image}: cannot reach {urlsplit(url).netloc}: {short_error(e)}", "registry unreachable") from None


def _schema1_config(manifest: Mapping[str, Any], image: str) -> dict:
    """Schema 1 manifests carry the config as a JSON string in history[0].v1Compatibility."""
    try:
        return json.loads(manifest["history"][0]["v1Compatibility"])
    except (KeyError, IndexError, TypeError, ValueError):
        raise ResolveError(f"image {image}: schema 1 manifest without a readable v1Compatibility") from None
