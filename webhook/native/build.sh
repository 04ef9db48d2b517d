#!/bin/sh
# Build the static helpers (the ulimit wrapper and the kernel's pipe helper) into OUTDIR.
# One script for the tests, the quick start and the Dockerfile: `build.sh OUTDIR`.
# Every *.c beside this script becomes OUTDIR/<name> (no extension), static, stripped.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build.sh OUTDIR}
cc=${CC:-gcc}
mkdir -p "$out"
for src in "$here"/*.c; do
    [ -e "$src" ] || continue
    name=$(basename "$src" .c)
    tmp="$out/.$name.tmp.$$"
    $cc -static -Os -s -Wall -Wextra -Werror -std=gnu11 -D_GNU_SOURCE -o "$tmp" "$src"
    mv -f "$tmp" "$out/$name"
done
echo "built static helpers into $out"
