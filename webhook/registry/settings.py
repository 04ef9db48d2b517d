"""How the webhook talks to image registries: one frozen dataclass, filled from the
``--registry-*`` options (each also a ``COREDUMP_REGISTRY_*`` variable) of ``coredump serve``
and ``coredump review``."""

from __future__ import annotations

from dataclasses import dataclass

from webhook.registry.egress import EgressPolicy, parse_networks
from webhook.registry.platforms import host_platform, parse_platform
from webhook.settings_fields import setting


@dataclass(frozen=True)
class RegistrySettings:
    """How the webhook talks to image registries (filled from ``coredump serve`` options)."""

    #: Whole-resolution budget in seconds (manifests, token, config blob together); the admission
    #: deadline passed per call can only shorten it.
    timeout_seconds: float = setting(
        2.0, flag="--registry-timeout", env="COREDUMP_REGISTRY_TIMEOUT",
        help="Seconds one image resolution may take at most.")
    #: How long a tag's resolved entrypoint is reused (a tag can move); digest references are
    #: immutable and stay cached until evicted.
    cache_ttl_seconds: float = setting(
        300.0, flag="--registry-cache-ttl", env="COREDUMP_REGISTRY_CACHE_TTL",
        help="Seconds a tag's entrypoint is reused.")
    #: Entries kept in each LRU cache (resolutions, failures, tokens).
    cache_size: int = setting(
        512, flag="--registry-cache-size", env="COREDUMP_REGISTRY_CACHE_SIZE", help="Entries per registry cache.")
    #: How long a failed resolution is remembered, so a stalled registry costs one timeout per
    #: image per interval rather than one per admitted pod. 0 disables it.
    negative_ttl_seconds: float = setting(
        10.0, flag="--registry-negative-ttl", env="COREDUMP_REGISTRY_NEGATIVE_TTL",
        help="Seconds a failure is remembered (0: never).")
    #: Node platform picked from an OCI index / Docker manifest list: "os/arch[/variant]".
    #: Empty: this machine's own (:func:`host_platform`), right on single-architecture clusters.
    platform: str = setting(
        host_platform(), flag="--registry-platform", env="COREDUMP_REGISTRY_PLATFORM",
        help="os/arch[/variant] picked from multi-platform images (default: this machine's).")
    #: Registries reached over plain HTTP: "host" (any port) or "host:port". Everything else
    #: uses HTTPS with certificate verification. None by default (not even loopback).
    insecure_registries: tuple[str, ...] = setting(
        (), flag="--registry-insecure", env="COREDUMP_REGISTRY_INSECURE",
        help="Registry host or host:port reached over plain HTTP (repeatable; env: space-separated).")
    #: Networks (CIDR) the look-ups may reach although they are loopback or link-local, which
    #: are refused after DNS resolution otherwise (private ranges are always allowed).
    allowed_networks: tuple[str, ...] = setting(
        (), flag="--registry-allow-network", env="COREDUMP_REGISTRY_ALLOW_NETWORK", show_default=False,
        help="Loopback/link-local network (CIDR) look-ups may reach anyway (repeatable; env: space-separated).")
    #: Registry hosts ("host", "host:port", "*.example.com") the webhook may contact, token
    #: servers and redirect targets included; empty: any host.
    allowed_registries: tuple[str, ...] = setting(
        (), flag="--registry-allow-host", env="COREDUMP_REGISTRY_ALLOW_HOST", show_default=False,
        help="Only contact these hosts (host, host:port, *.domain; token and redirect hosts too). Default: any.")
    #: Look-ups talking to one registry at the same time (the others wait within their budget).
    per_registry_concurrency: int = setting(
        4, flag="--registry-concurrency", env="COREDUMP_REGISTRY_CONCURRENCY", min=1,
        help="Look-ups talking to one registry at the same time.")
    #: Read the pod's imagePullSecrets through the API (needs RBAC `get secrets`; off by default
    #: because it gives the webhook read access to Secrets).
    read_pull_secrets: bool = setting(
        False, flag="--registry-read-pull-secrets", env="COREDUMP_REGISTRY_READ_PULL_SECRETS",
        help="Read pods' imagePullSecrets (needs RBAC get on secrets).")
    #: The API host used for docker.io references (Docker Hub serves v2 from registry-1).
    docker_hub_host: str = setting(
        "registry-1.docker.io", flag="--registry-docker-hub-host", env="COREDUMP_REGISTRY_DOCKER_HUB_HOST",
        help="API host for docker.io images (a mirror, say).")
    #: CA bundle for HTTPS registries with a private CA (None: the system's).
    ca_file: str | None = setting(
        None, flag="--registry-ca-file", env="COREDUMP_REGISTRY_CA_FILE", show_default=False,
        help="CA bundle for registries with a private CA.")

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
        """The connection rules of :mod:`webhook.registry.egress` these settings describe."""
        return EgressPolicy(parse_networks(self.allowed_networks), tuple(self.allowed_registries))
