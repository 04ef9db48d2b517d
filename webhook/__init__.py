"""coredump-webhook: keep every core dump of annotated pods on durable storage."""

# The one place the version is written: pyproject.toml reads it (setuptools dynamic version), the
# default image tags below derive from it, and tests/test_versions.py holds the copies that cannot
# be derived (Chart.yaml, the Dockerfile's ARG VERSION) equal to it.
__version__ = "0.1.0"

#: Where the project's image is published (the chart's image.repository default).
IMAGE_REPOSITORY = "ghcr.io/coredump-webhook/coredump-webhook"
#: The project's image at this version: the webhook's installer init container and `coredump debug`.
DEFAULT_IMAGE = f"{IMAGE_REPOSITORY}:{__version__}"
