#!/usr/bin/env bash
# Quick start: set up .venv, build the static helpers, then run `coredump demo`: certificates,
# the webhook over TLS, the seed scenarios as AdmissionReviews, and (as root) a real crash
# captured by the node agent. Needs no cluster. Extra arguments go to `coredump demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

NEED_NPM=0
SYSTEM_PACKAGES=(gcc libc6-dev python3 python3-venv ca-certificates util-linux procps busybox-static)
ensure_system_packages
ensure_venv
ensure_native

exec .venv/bin/coredump demo --bin-dir "$NATIVE_DIR" "$@"
