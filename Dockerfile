# syntax=docker/dockerfile:1
# One image for every part of coredump-webhook:
#   coredump serve            the admission webhook (Deployment, runs as the numeric user 65532)
#   coredump agent run        the node agent (DaemonSet, root + privileged through its securityContext)
#   coredump certs bootstrap  the certificate Job
#   /usr/local/libexec/coredump-webhook/coredump-wrapper --coredump-install DEST
#                             the init container the webhook injects into annotated pods
#
# The steps below are the same ones the test suite runs outside Docker (tests/test_dockerfile.py):
# the static helpers come from webhook/native/build.sh, the Python part from `pip install -c constraints.txt .`.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Multi-platform: `docker buildx build --platform linux/amd64,linux/arm64 .` makes one image index
# with an amd64 and an arm64 image. The static helpers are cross-compiled on the build machine
# (BUILDPLATFORM, no emulation) for each TARGETARCH; the Python stages run on the target platform
# so pip picks that platform's wheels.

# --- 1. the static C helpers (the ulimit wrapper and the kernel's pipe helper) ---------------
FROM --platform=$BUILDPLATFORM debian:bookworm-slim AS native
ARG TARGETARCH
ARG BUILDARCH
RUN case "${TARGETARCH:-$BUILDARCH}" in \
      "$BUILDARCH") compiler="gcc libc6-dev" ;; \
      arm64) compiler="gcc-aarch64-linux-gnu libc6-dev-arm64-cross" ;; \
      amd64) compiler="gcc-x86-64-linux-gnu libc6-dev-amd64-cross" ;; \
      *) echo "unsupported TARGETARCH ${TARGETARCH}: amd64 or arm64" >&2; exit 1 ;; \
    esac \
 && apt-get update \
 && apt-get install -y --no-install-recommends $compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY webhook/native/ webhook/native/
RUN sh webhook/native/build.sh /out/bin --arch "${TARGETARCH:-$BUILDARCH}"

# --- 2. a virtualenv holding the package and its dependencies -------------------------------
FROM ${PYTHON_IMAGE} AS venv
ARG TARGETARCH
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# drgn (the crash-signature unwinder) publishes x86_64 wheels only: elsewhere pip builds it from
# its sdist against Debian's elfutils (the final image has libdw1 and libelf1 through elfutils).
RUN case "${TARGETARCH:-amd64}" in \
      amd64) ;; \
      *) apt-get update \
         && apt-get install -y --no-install-recommends gcc make autoconf automake libtool pkg-config \
              libelf-dev libdw-dev \
         && rm -rf /var/lib/apt/lists/* ;; \
    esac
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY webhook/ webhook/
# certs/ is installed as the webhook.certs package (pyproject.toml package-dir).
COPY certs/ certs/
# constraints.txt (scripts/update-constraints.py) pins every runtime dependency: each build of
# this image resolves the same versions.
RUN /opt/venv/bin/pip install -c constraints.txt . \
 && /opt/venv/bin/coredump --help >/dev/null

# --- 3. the final image: the venv, the static binaries and gdb ------------------------------
FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="coredump-webhook" \
      org.opencontainers.image.description="Kubernetes admission webhook and node agent that keep every core dump of annotated pods on durable storage" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/coredump-webhook/coredump-webhook" \
      org.opencontainers.image.url="https://github.com/coredump-webhook/coredump-webhook" \
      org.opencontainers.image.vendor="coredump-webhook"
# gdb: the agent takes gcore snapshots with it, and `coredump debug` uses this image for its
# ephemeral debug container (gdb with debuginfod support, elfutils, zstd for compressed cores, and
# a shell next to the core). Crash signatures come from drgn in the venv (libdw from elfutils).
RUN apt-get update \
 && apt-get install -y --no-install-recommends gdb elfutils zstd \
 && rm -rf /var/lib/apt/lists/*
COPY --from=venv /opt/venv /opt/venv
# Paths fixed by webhook/constants.py (IMAGE_WRAPPER_PATH, IMAGE_HELPER_PATH).
COPY --from=native /out/bin/ /usr/local/libexec/coredump-webhook/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# The webhook's user: numeric so that runAsNonRoot can be verified by the kubelet.
# The agent overrides it (runAsUser: 0, privileged) in its DaemonSet.
USER 65532:65532
WORKDIR /tmp
EXPOSE 8443 9402
ENTRYPOINT ["coredump"]
CMD ["serve"]
