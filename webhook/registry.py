"""Resolve an image's ENTRYPOINT and CMD from its registry (OCI distribution v2 API).

The webhook wraps a container's command with the ulimit wrapper; when the container has no
``command`` the real one is only in the image config, so it must be fetched at admission. This
module does that within a strict time budget and never raises anything but ``ResolveError``:
the caller then leaves the container alone and says why in a warning.

Pure parts (reference parsing, challenge parsing, pull secret decoding, platform choice) are
plain functions; the HTTP and the Kubernetes API stay at the edges (``RegistryResolver`` and the
thin ``read_pull_secrets``).
"""

from __future__ import annotations

import base64
import binascii
import collections
import dataclasses
import fnmatch
import functools
import hashlib
import json
import logging
import platform as pyplatform
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests

from webhook.registry_egress import EgressPolicy, EgressRefused, follow, guard_session, guarded_session, parse_networks
from webhook.registry_pool import LookupPool, PoolBusy

log = logging.getLogger(__name__)

# --- Media types -------------------------------------------------------------------------------
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_V1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_MANIFEST_V1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
#: Sent on every manifest GET: without it registries answer 400/404 for newer formats.
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
IMAGE_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)

DOCKER_HUB = "docker.io"
#: Names under which Docker Hub appears in references and in docker config keys.
DOCKER_HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com")
#: Largest manifest / config blob accepted (a config with a long history is a few hundred KiB).
MAX_MANIFEST_BYTES = 4 << 20
MAX_CONFIG_BYTES = 16 << 20
SECRET_DOCKERCONFIGJSON = "kubernetes.io/dockerconfigjson"
SECRET_DOCKERCFG = "kubernetes.io/dockercfg"


@dataclass(frozen=True)
class RegistrySettings:
    """How the webhook talks to image registries (filled from ``coredump serve`` options)."""

    #: Whole-resolution budget in seconds (manifests, token, config blob together); the admission
    #: deadline passed per call can only shorten it.
    timeout_seconds: float = 2.0
    #: How long a tag's resolved entrypoint is reused (a tag can move); digest references are
    #: immutable and stay cached until evicted.
    cache_ttl_seconds: float = 300.0
    #: Entries kept in each LRU cache (resolutions, failures, tokens).
    cache_size: int = 512
    #: How long a failed resolution is remembered, so a stalled registry costs one timeout per
    #: image per interval rather than one per admitted pod. 0 disables it.
    negative_ttl_seconds: float = 10.0
    #: Node platform picked from an OCI index / Docker manifest list: "os/arch[/variant]".
    #: Empty: this machine's own (:func:`host_platform`), right on single-architecture clusters.
    platform: str = ""
    #: Registries reached over plain HTTP: "host" (any port) or "host:port". Everything else
    #: uses HTTPS with certificate verification. None by default (not even loopback).
    insecure_registries: tuple[str, ...] = ()
    #: Networks (CIDR) the look-ups may reach although they are loopback or link-local, which
    #: are refused after DNS resolution otherwise (private ranges are always allowed).
    allowed_networks: tuple[str, ...] = ()
    #: Registry hosts ("host", "host:port", "*.example.com") the webhook may contact, token
    #: servers and redirect targets included; empty: any host.
    allowed_registries: tuple[str, ...] = ()
    #: Look-ups talking to one registry at the same time (the others wait within their budget).
    per_registry_concurrency: int = 4
    #: Read the pod's imagePullSecrets through the API (needs RBAC `get secrets`; off by default
    #: because it gives the webhook read access to Secrets).
    read_pull_secrets: bool = False
    #: The API host used for docker.io references (Docker Hub serves v2 from registry-1).
    docker_hub_host: str = "registry-1.docker.io"
    #: CA bundle for HTTPS registries with a private CA (None: the system's).
    ca_file: str | None = None

    def __post_init__(self) -> None:
        if not self.timeout_seconds > 0:
            raise ValueError("registry timeout must be > 0 seconds")
        if self.cache_size < 1:
            raise ValueError("registry cache size must be >= 1")
        if self.per_registry_concurrency < 1:
            raise ValueError("per-registry concurrency must be >= 1")
        if not self.platform:
            object.__setattr__(self, "platform", host_platform())
        parse_platform(self.platform)
        parse_networks(self.allowed_networks)

    def egress_policy(self) -> EgressPolicy:
        """The connection rules of :mod:`webhook.registry_egress` these settings describe."""
        return EgressPolicy(parse_networks(self.allowed_networks), tuple(self.allowed_registries))


@dataclass(frozen=True)
class ImageConfig:
    """What the webhook needs from an image: its ENTRYPOINT and CMD (both [] when unset)."""

    entrypoint: list[str]
    cmd: list[str]
    #: Digest of the manifest the reference names (the index for a multi-platform image).
    digest: str


class ResolveError(Exception):
    """Resolution failed; the message names the image and what went wrong (for the log), and
    ``reason`` is the short class users see ("registry unreachable", "not found", ...): never
    the raw connection error, which would make the webhook a port scanner's oracle."""

    def __init__(self, message: str, reason: str = "invalid registry response") -> None:
        super().__init__(message)
        self.reason = reason


# --- Image references --------------------------------------------------------------------------
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPO_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$")
_HOST_RE = re.compile(r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$")


@dataclass(frozen=True)
class ImageRef:
    """A parsed, normalised image reference (as the container runtime reads it)."""

    registry: str  # "docker.io", "quay.io", "localhost:5000"
    repository: str  # "library/nginx"
    tag: str | None
    digest: str | None

    @property
    def reference(self) -> str:
        """What goes after /manifests/: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        out = f"{self.registry}/{self.repository}"
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def parse_image_ref(image: str) -> ImageRef:
    """Parse ``[registry[:port]/]name[:tag][@digest]`` with Docker's defaults.

    The first component is a registry only if it has a '.' or ':' or is 'localhost' (Docker's
    rule); otherwise the image is on docker.io, where one-component names live in ``library/``.
    No tag and no digest means ``latest``. Raises ValueError with the reason.
    """
    if not isinstance(image, str) or not image or image != image.strip():
        raise ValueError("empty image reference or surrounding whitespace")
    rest, digest = image, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST_RE.match(digest):
            raise ValueError(f"invalid digest {digest!r}")
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise ValueError(f"invalid tag {tag!r}")
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        registry, repository = first, remainder
        if not _HOST_RE.match(registry):
            raise ValueError(f"invalid registry host {registry!r}")
    else:
        registry, repository = DOCKER_HUB, rest
    if registry.lower() in ("index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"):
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in repository:
        repository = "library/" + repository
    if not _REPO_RE.match(repository) or len(repository) > 255:
        raise ValueError(f"invalid repository name {repository!r} (lowercase letters, digits, . _ - /)")
    if tag is None and digest is None:
        tag = "latest"
    return ImageRef(registry=registry, repository=repository, tag=tag, digest=digest)


# --- Platforms ---------------------------------------------------------------------------------
#: ``uname -m`` -> (architecture, variant) as images name them (Go's GOARCH).
_MACHINES = {
    "x86_64": ("amd64", None), "amd64": ("amd64", None),
    "aarch64": ("arm64", None), "arm64": ("arm64", None),
    "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"),
    "ppc64le": ("ppc64le", None), "s390x": ("s390x", None), "riscv64": ("riscv64", None),
}


def host_platform(machine: str | None = None) -> str:
    """This machine's platform as images name it: ``x86_64`` -> ``linux/amd64``,
    ``aarch64`` -> ``linux/arm64``; an unknown machine keeps its own name."""
    m = (machine or pyplatform.machine()).lower()
    arch, variant = _MACHINES.get(m, (m, None))
    return f"linux/{arch}/{variant}" if variant else f"linux/{arch}"


def parse_platform(platform: str) -> tuple[str, str, str | None]:
    """"linux/arm64/v8" -> ("linux", "arm64", "v8"); raises ValueError."""
    parts = platform.split("/") if isinstance(platform, str) else []
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"invalid platform {platform!r}: want os/arch[/variant]")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def _norm_variant(arch: str, variant: str | None) -> str | None:
    # arm64 images are published with and without "v8"; both mean the same thing.
    if arch == "arm64" and variant == "v8":
        return None
    return variant or None


def choose_platform(index: Mapping[str, Any], platform: str) -> dict:
    """The index entry for ``platform``; ValueError listing what the index offers."""
    want_os, want_arch, want_variant = parse_platform(platform)
    want_variant = _norm_variant(want_arch, want_variant)
    entries = index.get("manifests")
    if not isinstance(entries, list):
        raise ValueError("index without a manifests list")
    fallback = None
    offered = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        plat = entry.get("platform") or {}
        os_, arch = plat.get("os"), plat.get("architecture")
        variant = _norm_variant(str(arch), plat.get("variant"))
        offered.append("/".join(str(p) for p in (os_, arch, plat.get("variant")) if p))
        if os_ != want_os or arch != want_arch:
            continue
        if variant == want_variant:
            return entry
        if want_variant is None and fallback is None:
            fallback = entry  # e.g. linux/arm/v7 when asked for linux/arm
    if fallback is not None:
        return fallback
    raise ValueError(f"no manifest for platform {platform} (index offers: {', '.join(offered) or 'nothing'})")


# --- Credentials -------------------------------------------------------------------------------
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


# --- WWW-Authenticate --------------------------------------------------------------------------
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


# --- Config extraction -------------------------------------------------------------------------
def _string_list(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    if isinstance(value, str):  # never produced by docker build, but legal JSON in the wild
        return [value]
    raise ValueError(f"{what} is not a list of strings")


def entrypoint_and_cmd(config_blob: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(.config.Entrypoint, .config.Cmd) of an image config, null -> []."""
    cfg = config_blob.get("config") or {}
    if not isinstance(cfg, dict):
        raise ValueError("image config .config is not an object")
    return _string_list(cfg.get("Entrypoint"), "Entrypoint"), _string_list(cfg.get("Cmd"), "Cmd")


# --- The resolver ------------------------------------------------------------------------------
class _Budget:
    """Remaining time of one resolution; every request's timeout comes from it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise _Timeout()
        return left


class _Timeout(Exception):
    pass


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


SecretReader = Callable[[str, list[str]], list[dict]]


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
            work = functools.partial(self._resolve, shown, ref, namespace, secrets, _Budget(budget))
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
        if isinstance(err, _Timeout):
            return ResolveError(f"image {image}: registry {ref.registry} did not answer within {budget:.1f}s",
                                "registry timed out")
        log.error("registry look-up failed unexpectedly", exc_info=err,
                  extra={"event": "registry.error", "image": image})
        return ResolveError(f"image {image}: unexpected {type(err).__name__}: {err}", "internal error")

    # -- the resolution proper (worker thread) --
    def _resolve(self, image: str, ref: ImageRef, namespace: str, secrets: list[str], budget: _Budget) -> ImageConfig:
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
        except _Timeout:
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

    def _fetch(self, image: str, ref: ImageRef, cred: Credential | None, identity: str, budget: _Budget) -> ImageConfig:
        base = f"{self._base_url(ref)}/v2/{ref.repository}"
        auth = _Auth(self, ref, cred, identity)
        body, media_type = self._get_manifest(image, base, ref.reference, auth, budget)
        top_digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if ref.digest and ref.digest.startswith("sha256:") and ref.digest != top_digest:
            raise ResolveError(f"image {image}: manifest content does not match digest {ref.digest}", "digest mismatch")
        manifest = _json(body, f"image {image}: manifest")
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
            if not isinstance(digest_, str) or not _DIGEST_RE.match(digest_):
                raise ResolveError(f"image {image}: index entry without a valid digest")
            cached = self._by_digest.get((ref.registry, ref.repository, digest_, self.settings.platform), time.monotonic())
            if cached is not None:
                return dataclasses.replace(cached, digest=top_digest)
            body, media_type = self._get_manifest(image, base, digest_, auth, budget)
            manifest = _json(body, f"image {image}: platform manifest")
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
            config_blob = _json(blob, f"image {image}: config blob")
        try:
            entrypoint, cmd = entrypoint_and_cmd(config_blob)
        except ValueError as e:
            raise ResolveError(f"image {image}: {e}") from None
        result = ImageConfig(entrypoint=entrypoint, cmd=cmd, digest=top_digest)
        self._by_digest.put((ref.registry, ref.repository, digest, self.settings.platform), result, None)
        return result

    def _get_manifest(self, image: str, base: str, reference: str, auth: _Auth, budget: _Budget) -> tuple[bytes, str | None]:
        body, resp = self._get(image, f"{base}/manifests/{reference}", {"Accept": MANIFEST_ACCEPT}, auth, budget, MAX_MANIFEST_BYTES, f"manifest {reference}")
        return body, (resp.headers.get("Content-Type") or "").split(";")[0].strip() or None

    def _get(self, image: str, url: str, headers: dict, auth: _Auth, budget: _Budget, limit: int, what: str) -> tuple[bytes, requests.Response]:
        for attempt in range(2):
            resp = self._request(image, url, {**headers, **auth.header()}, budget, None)
            if resp.status_code == 401 and attempt == 0 and auth.handle_challenge(resp, budget):
                resp.close()
                continue
            break
        if resp.status_code != 200:
            detail = _registry_error(resp, budget)
            resp.close()
            hint, reason = "", f"HTTP {resp.status_code}"
            if resp.status_code in (401, 403):
                hint = " (needs pull credentials)" if auth.cred is None else " (the pull secret's credentials were refused)"
                reason = "needs pull credentials" if auth.cred is None else "credentials refused"
            elif resp.status_code == 404:
                reason = "image not found"
            raise ResolveError(f"image {image}: {what}: HTTP {resp.status_code}{detail}{hint}", reason)
        return _read_body(resp, budget, limit, f"image {image}: {what}"), resp

    def _request(self, image: str, url: str, headers: dict, budget: _Budget, auth: Any) -> requests.Response:
        left = budget.remaining()
        try:
            return follow(
                self.session, self.policy, url, headers=headers, auth=auth,
                timeout=(left, left), stream=True, verify=self.settings.ca_file or True,
            )
        except EgressRefused as e:
            raise ResolveError(f"image {image}: {e}", e.reason) from None
        except requests.Timeout:
            raise _Timeout() from None
        except requests.exceptions.SSLError as e:
            raise ResolveError(f"image {image}: TLS with {urlsplit(url).netloc} failed: {_short(e)}", "TLS error") from None
        except requests.RequestException as e:
            raise ResolveError(f"image {image}: cannot reach {urlsplit(url).netloc}: {_short(e)}", "registry unreachable") from None


class _Auth:
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

    def handle_challenge(self, resp: requests.Response, budget: _Budget) -> bool:
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
            detail = _registry_error(token_resp, budget)
            token_resp.close()
            raise ResolveError(f"image {image}: token server {urlsplit(realm).netloc}: HTTP {token_resp.status_code}{detail}", "token refused")
        data = _json(_read_body(token_resp, budget, 1 << 20, f"image {image}: token"), f"image {image}: token response")
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


def _read_body(resp: requests.Response, budget: _Budget, limit: int, what: str) -> bytes:
    """The body, checking the budget between chunks and refusing oversized documents."""
    chunks, size = [], 0
    try:
        for chunk in resp.iter_content(65536):
            size += len(chunk)
            if size > limit:
                raise ResolveError(f"{what}: larger than {limit} bytes", "response too large")
            chunks.append(chunk)
            budget.remaining()
    except requests.RequestException as e:
        if isinstance(e, requests.ConnectionError) and "timed out" in str(e).lower():
            raise _Timeout() from None
        raise ResolveError(f"{what}: reading the response failed: {_short(e)}", "registry unreachable") from None
    finally:
        resp.close()
    return b"".join(chunks)


def _registry_error(resp: requests.Response, budget: _Budget) -> str:
    """': CODE message' from a registry's JSON error body, best effort."""
    try:
        body = _read_body(resp, budget, 65536, "error")
        errors = json.loads(body).get("errors") or []
        text = "; ".join(f"{e.get('code', '')} {e.get('message', '')}".strip() for e in errors if isinstance(e, dict))
        return f": {text}" if text else ""
    except Exception:
        return ""


def _json(body: bytes, what: str) -> dict:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ResolveError(f"{what} is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ResolveError(f"{what} is not a JSON object")
    return doc


def _schema1_config(manifest: Mapping[str, Any], image: str) -> dict:
    """Schema 1 manifests carry the config as a JSON string in history[0].v1Compatibility."""
    try:
        return json.loads(manifest["history"][0]["v1Compatibility"])
    except (KeyError, IndexError, TypeError, ValueError):
        raise ResolveError(f"image {image}: schema 1 manifest without a readable v1Compatibility") from None


def _short(e: Exception) -> str:
    text = str(e)
    return text if len(text) <= 200 else text[:197] + "..."


# --- Kubernetes edge ---------------------------------------------------------------------------
def read_pull_secrets(api: Any, namespace: str, names: list[str]) -> list[dict]:
    """The named Secrets as the API returns them (a missing one is skipped, as kubelet does).

    ``api`` is a ``kubernetes.client.CoreV1Api``; other API errors propagate to the resolver,
    which then tries anonymously and mentions the error if that fails.
    """
    from kubernetes.client.rest import ApiException

    out = []
    for name in names:
        try:
            resp = api.read_namespaced_secret(name, namespace, _preload_content=False)
        except ApiException as e:
            if e.status == 404:
                log.info("pull secret missing", extra={"event": "pull_secret_missing", "namespace": namespace, "secret": name})
                continue
            raise
        out.append(json.loads(resp.data))
    return out


def secret_reader_for(api: Any) -> SecretReader:
    """Bind ``read_pull_secrets`` to an API object: the ``secret_reader`` the resolver takes."""
    return lambda namespace, names: read_pull_secrets(api, namespace, names)


# --- Command-line options (for `coredump serve`) -----------------------------------------------
def registry_options(func: Callable) -> Callable:
    """click options filling RegistrySettings; each has a COREDUMP_REGISTRY_* variable too."""
    import click

    d = RegistrySettings()
    options = [
        click.option("--registry-timeout", "registry_timeout", type=float, default=d.timeout_seconds, show_default=True,
                     show_envvar=True, envvar="COREDUMP_REGISTRY_TIMEOUT", help="Seconds one image resolution may take at most."),
        click.option("--registry-cache-ttl", "registry_cache_ttl", type=float, default=d.cache_ttl_seconds, show_default=True,
                     show_envvar=True, envvar="COREDUMP_REGISTRY_CACHE_TTL", help="Seconds a tag's entrypoint is reused."),
        click.option("--registry-cache-size", "registry_cache_size", type=int, default=d.cache_size, show_default=True,
                     show_envvar=True, envvar="COREDUMP_REGISTRY_CACHE_SIZE", help="Entries per registry cache."),
        click.option("--registry-negative-ttl", "registry_negative_ttl", type=float, default=d.negative_ttl_seconds,
                     show_default=True, show_envvar=True, envvar="COREDUMP_REGISTRY_NEGATIVE_TTL", help="Seconds a failure is remembered (0: never)."),
        click.option("--registry-platform", "registry_platform", default=d.platform, show_default=True,
                     show_envvar=True, envvar="COREDUMP_REGISTRY_PLATFORM", help="os/arch[/variant] picked from multi-platform images (default: this machine's)."),
        click.option("--registry-insecure", "registry_insecure", multiple=True, default=d.insecure_registries,
                     show_default=True, show_envvar=True, envvar="COREDUMP_REGISTRY_INSECURE",
                     help="Registry host or host:port reached over plain HTTP (repeatable; env: space-separated)."),
        click.option("--registry-allow-network", "registry_allow_network", multiple=True, default=d.allowed_networks,
                     show_envvar=True, envvar="COREDUMP_REGISTRY_ALLOW_NETWORK",
                     help="Loopback/link-local network (CIDR) look-ups may reach anyway (repeatable; env: space-separated)."),
        click.option("--registry-allow-host", "registry_allow_host", multiple=True, default=d.allowed_registries,
                     show_envvar=True, envvar="COREDUMP_REGISTRY_ALLOW_HOST",
                     help="Only contact these hosts (host, host:port, *.domain; token and redirect hosts too). Default: any."),
        click.option("--registry-concurrency", "registry_concurrency", type=click.IntRange(min=1),
                     default=d.per_registry_concurrency, show_default=True, show_envvar=True,
                     envvar="COREDUMP_REGISTRY_CONCURRENCY", help="Look-ups talking to one registry at the same time."),
        click.option("--registry-read-pull-secrets/--no-registry-read-pull-secrets", "registry_read_pull_secrets",
                     default=d.read_pull_secrets, show_default=True, show_envvar=True, envvar="COREDUMP_REGISTRY_READ_PULL_SECRETS",
                     help="Read pods' imagePullSecrets (needs RBAC get on secrets)."),
        click.option("--registry-docker-hub-host", "registry_docker_hub_host", default=d.docker_hub_host, show_default=True,
                     show_envvar=True, envvar="COREDUMP_REGISTRY_DOCKER_HUB_HOST", help="API host for docker.io images (a mirror, say)."),
        click.option("--registry-ca-file", "registry_ca_file", default=None, show_envvar=True, envvar="COREDUMP_REGISTRY_CA_FILE",
                     help="CA bundle for registries with a private CA."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def settings_from_options(options: Mapping[str, Any]) -> RegistrySettings:
    """RegistrySettings from the parsed ``registry_options`` (other keys are ignored)."""
    return RegistrySettings(
        timeout_seconds=options["registry_timeout"],
        cache_ttl_seconds=options["registry_cache_ttl"],
        cache_size=options["registry_cache_size"],
        negative_ttl_seconds=options["registry_negative_ttl"],
        platform=options["registry_platform"],
        insecure_registries=tuple(options["registry_insecure"]),
        allowed_networks=tuple(options.get("registry_allow_network") or ()),
        allowed_registries=tuple(options.get("registry_allow_host") or ()),
        per_registry_concurrency=options.get("registry_concurrency") or RegistrySettings.per_registry_concurrency,
        read_pull_secrets=options["registry_read_pull_secrets"],
        docker_hub_host=options["registry_docker_hub_host"],
        ca_file=options["registry_ca_file"],
    )
