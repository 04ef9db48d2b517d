"""What the webhook reads from an image: the manifest media types and ENTRYPOINT/CMD of its config."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_V1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_MANIFEST_V1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
#: Sent on every manifest GET: without it registries answer 400/404 for newer formats.
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)


@dataclass(frozen=True)
class ImageConfig:
    """What the webhook needs from an image: its ENTRYPOINT and CMD (both [] when unset)."""

    entrypoint: list[str]
    cmd: list[str]
    #: Digest of the manifest the reference names (the index for a multi-platform image).
    digest: str


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
