#!/usr/bin/env bash
# Run the whole test suite on a fresh Debian machine (as root): installs what it needs
# (apt-get, pip, npm), builds the static helpers outside the repo, then runs pytest.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k pattern`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_system_packages
ensure_venv test
ensure_tools            # helm + kubectl, cached outside the repo
ensure_native           # static wrapper + helper, built outside the repo

export COREDUMP_TEST_BIN_DIR="$NATIVE_DIR"
export COREDUMP_TEST_HELM="$TOOLS_DIR/helm/helm"
export COREDUMP_TEST_KUBECTL="$TOOLS_DIR/kubectl/kubectl"

exec .venv/bin/python -m pytest -ra "$@"
