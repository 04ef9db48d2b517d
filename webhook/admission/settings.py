"""Settings of the admission logic: what the mutation adds and how far it may go.

One frozen dataclass whose fields carry their flag, environment variable and help
(:func:`webhook.settings_fields.setting`); the ``serve`` and ``review`` commands fill it from
their options and pass it down; nothing below reads the environment.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from webhook import DEFAULT_IMAGE
from webhook.settings_fields import setting

#: Kubernetes resource quantity (the subset that makes sense for an emptyDir size limit).
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
#: RFC 1123 DNS subdomain: PVC names.
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
#: RFC 1123 DNS label: namespace names.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_PULL_POLICIES = ("Always", "IfNotPresent", "Never")
_LEVELS = ("privileged", "baseline", "restricted")


class VolumeSpecError(ValueError):
    """A volume choice ("emptyDir", "nfs:SERVER:/PATH", "pvc:CLAIM") that cannot be used."""


def parse_volume_spec(spec: str, *, empty_dir_size_limit: str | None = None) -> dict[str, Any]:
    """Turn a volume choice into the source part of a pod volume (without its name).

    ``emptyDir`` -> ``{"emptyDir": {...}}``; ``nfs:SERVER:/PATH`` -> ``{"nfs": {...}}`` (the
    path is what starts at the first ``:/``, so an IPv6 server in brackets still works);
    ``pvc:CLAIM`` -> ``{"persistentVolumeClaim": {"claimName": CLAIM}}`` (an existing claim,
    e.g. an OSS or NAS one). Raise :class:`VolumeSpecError` with the reason.
    """
    if not isinstance(spec, str):
        raise VolumeSpecError(f"must be a string, not {type(spec).__name__}")
    text = spec.strip()
    if text.lower() in ("emptydir", "empty-dir"):
        source: dict[str, Any] = {}
        if empty_dir_size_limit:
            source["sizeLimit"] = empty_dir_size_limit
        return {"emptyDir": source}
    kind, sep, rest = text.partition(":")
    kind = kind.lower()
    if sep and kind == "nfs":
        idx = rest.find(":/")
        if idx <= 0:
            raise VolumeSpecError(f"{spec!r}: expected nfs:SERVER:/PATH")
        server, path = rest[:idx], rest[idx + 1 :]
        if any(c.isspace() for c in server) or ".." in path.split("/"):
            raise VolumeSpecError(f"{spec!r}: bad NFS server or path")
        return {"nfs": {"server": server, "path": path}}
    if sep and kind == "pvc":
        if len(rest) > 253 or not _DNS_SUBDOMAIN.match(rest):
            raise VolumeSpecError(f"{spec!r}: {rest!r} is not a valid claim name")
        return {"persistentVolumeClaim": {"claimName": rest}}
    raise VolumeSpecError(f"{spec!r}: expected emptyDir, nfs:SERVER:/PATH or pvc:CLAIM")


def _env(name: str) -> str:
    return "COREDUMP_WEBHOOK_" + name.upper()


@dataclass(frozen=True)
class AdmissionSettings:
    """What the mutation injects and the limits it works within (see the README's mutation part)."""

    #: The project's image: the installer init container copies the static wrapper out of it.
    image: str = setting(
        DEFAULT_IMAGE, env=_env("image"),
        help="The project's image; its init container installs the core-limit wrapper.")
    #: imagePullPolicy of the installer init container.
    image_pull_policy: str = setting(
        "IfNotPresent", env=_env("image_pull_policy"), choices=_PULL_POLICIES,
        help="imagePullPolicy of the installer init container.")
    #: Volume created at the pattern's directory when no user volume covers it:
    #: "emptyDir", "nfs:SERVER:/PATH" or "pvc:CLAIM". A pod may pick its own with the
    #: coredump-webhook.io/volume annotation (see allow_pod_volume_override).
    default_volume: str = setting(
        "emptyDir", env=_env("default_volume"),
        help="Core volume added when none covers the pattern's directory: emptyDir, nfs:SERVER:/PATH or pvc:CLAIM.")
    #: sizeLimit of an injected emptyDir core volume (a quantity such as "4Gi"); None: no limit.
    empty_dir_size_limit: str | None = setting(
        None, env=_env("empty_dir_size_limit"), show_default=False,
        help="sizeLimit of an injected emptyDir core volume (e.g. 4Gi); none by default.")
    #: Add SYS_RESOURCE to target containers so the wrapper can raise the hard RLIMIT_CORE.
    #: Only where it can help and Pod Security allows it: never to non-root containers, with
    #: hostUsers: false, or in namespaces enforcing baseline/restricted (learned from the
    #: namespace watch). Without it the wrapper still raises the soft limit up to the hard one,
    #: and the node agent keeps a registered pod's core whatever the limit.
    add_capability: bool = setting(
        True, env=_env("add_capability"),
        help="Add SYS_RESOURCE so the wrapper can raise the hard core limit (only to root "
        "containers in namespaces whose Pod Security level allows it).")
    #: Namespaces where SYS_RESOURCE is never added (e.g. those labelled with a PSA level).
    no_capability_namespaces: tuple[str, ...] = setting(
        (), env=_env("no_capability_namespaces"), separator=",", show_default=False,
        help="Comma-separated namespaces where SYS_RESOURCE is never added.")
    #: Look up ENTRYPOINT/CMD in the registry for containers without a command; without it such
    #: containers keep their command (not wrapped, with a warning). How the registry is reached
    #: (platform, timeouts, pull secrets) is RegistrySettings' (webhook/registry/settings.py).
    resolve_entrypoints: bool = setting(
        True, env=_env("resolve_entrypoints"),
        help="Read ENTRYPOINT/CMD from the registry for containers without a command.")
    #: Wall-clock budget of one admission in seconds (registry look-ups stop when it is spent);
    #: keep it well below the webhook's timeoutSeconds.
    admission_budget_seconds: float = setting(
        3.0, env=_env("admission_budget_seconds"),
        help="Time budget of one admission (registry look-ups stop when spent); below timeoutSeconds.")
    #: Let a pod choose its core volume with the coredump-webhook.io/volume annotation.
    allow_pod_volume_override: bool = setting(
        True, env=_env("allow_pod_volume_override"),
        help="Let pods choose their core volume with the coredump-webhook.io/volume annotation.")
    #: The Pod Security level of a namespace without the enforce label: "privileged" is
    #: Kubernetes' default; clusters whose AdmissionConfiguration sets another default say so.
    pod_security_default_level: str = setting(
        "privileged", env=_env("pod_security_default_level"), choices=_LEVELS,
        help="Pod Security level of namespaces without the enforce label (the cluster's default).")
    #: Watch namespaces (RBAC list/watch) to learn their enforced Pod Security level.
    watch_namespaces: bool = setting(
        True, env=_env("watch_namespaces"),
        help="Watch namespaces for their Pod Security level (off: every namespace counts as restricted).")

    def __post_init__(self) -> None:
        # Validate at start-up so a bad flag stops the server instead of every admission.
        if not self.image or any(c.isspace() for c in self.image):
            raise ValueError(f"image {self.image!r} is not an image reference")
        if self.image_pull_policy not in _PULL_POLICIES:
            raise ValueError(f"image_pull_policy must be one of {', '.join(_PULL_POLICIES)}")
        if self.empty_dir_size_limit is not None and not _QUANTITY.match(self.empty_dir_size_limit):
            raise ValueError(f"empty_dir_size_limit {self.empty_dir_size_limit!r} is not a quantity (e.g. 4Gi)")
        try:
            parse_volume_spec(self.default_volume)
        except VolumeSpecError as exc:
            raise ValueError(f"default_volume: {exc}") from None
        for ns in self.no_capability_namespaces:
            if not _DNS_LABEL.match(ns):
                raise ValueError(f"no_capability_namespaces: {ns!r} is not a namespace name")
        if self.pod_security_default_level not in _LEVELS:
            raise ValueError(f"pod_security_default_level must be one of {', '.join(_LEVELS)}")
        if not 0 < self.admission_budget_seconds <= 30:
            raise ValueError("admission_budget_seconds must be in (0, 30]")

    def describe(self) -> dict[str, Any]:
        """The effective settings as plain JSON values, for the start-up log."""
        out = dataclasses.asdict(self)
        out["no_capability_namespaces"] = list(self.no_capability_namespaces)
        return out
