"""Image references as the container runtime reads them: ``[registry[:port]/]name[:tag][@digest]``."""

from __future__ import annotations

import re
from dataclasses import dataclass

DOCKER_HUB = "docker.io"
#: Names under which Docker Hub appears in references and in docker config keys.
DOCKER_HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com")

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPO_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$")
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
        if not DIGEST_RE.match(digest):
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
