#!/bin/sh
# Build the static helpers (the ulimit wrapper and the kernel's pipe helper) into OUTDIR.
# One script for the tests, the quick start and the Dockerfile:
#
#     build.sh OUTDIR [--arch ARCH]
#
# Every *.c beside this script becomes OUTDIR/<name> (no extension), static, stripped.
# ARCH is amd64 (x86_64) or arm64 (aarch64), Docker's TARGETARCH names or uname's; the default
# is this machine's. Another architecture is cross-compiled with Debian's cross toolchain
# (gcc-aarch64-linux-gnu + libc6-dev-arm64-cross, gcc-x86-64-linux-gnu + libc6-dev-amd64-cross);
# CC overrides the compiler. The result's ELF machine is checked, so a wrong compiler fails here.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
usage() { echo "usage: build.sh OUTDIR [--arch amd64|arm64]" >&2; exit 2; }
out=${1:-}
[ -n "$out" ] || usage
shift
arch=
while [ $# -gt 0 ]; do
    case $1 in
        --arch) [ $# -ge 2 ] || usage; arch=$2; shift 2 ;;
        --arch=*) arch=${1#--arch=}; shift ;;
        *) usage ;;
    esac
done

# canonical name (Docker's) of an architecture
canon() {
    case $1 in
        amd64|x86_64|x86-64) echo amd64 ;;
        arm64|aarch64) echo arm64 ;;
        *) echo "build.sh: unsupported architecture '$1' (amd64 or arm64)" >&2; exit 2 ;;
    esac
}
host=$(canon "$(uname -m)")
target=$(canon "${arch:-$host}")
case $target in
    amd64) triplet=x86_64-linux-gnu; machine=3e00 ;;   # EM_X86_64 = 62, little-endian
    arm64) triplet=aarch64-linux-gnu; machine=b700 ;;  # EM_AARCH64 = 183
esac
if [ "$target" = "$host" ]; then
    cc=${CC:-gcc}
else
    cc=${CC:-$triplet-gcc}
fi
command -v "$cc" >/dev/null 2>&1 || {
    echo "build.sh: no compiler '$cc' for $target (install gcc-$triplet and its libc6-dev cross package)" >&2
    exit 1
}

mkdir -p "$out"
for src in "$here"/*.c; do
    [ -e "$src" ] || continue
    name=$(basename "$src" .c)
    tmp="$out/.$name.tmp.$$"
    $cc -static -Os -s -Wall -Wextra -Werror -std=gnu11 -D_GNU_SOURCE -o "$tmp" "$src"
    got=$(od -An -tx1 -j18 -N2 "$tmp" | tr -d ' \n')
    if [ "$got" != "$machine" ]; then
        rm -f "$tmp"
        echo "build.sh: $cc made a binary for ELF machine 0x$got, not $target" >&2
        exit 1
    fi
    mv -f "$tmp" "$out/$name"
done
echo "built static helpers for $target into $out"
