"""Platforms (``os/arch[/variant]``): this machine's, and the entry an image index has for one."""

from __future__ import annotations

import platform as pyplatform
from collections.abc import Mapping
from typing import Any

#: ``uname -m`` -> (architecture, variant) as images name them (Go's GOARCH).
_MACHINES = {
    "x86_64": ("amd64", None), "amd64": ("amd64", None),
    "aarch64": ("arm64", None), "arm64": ("arm64", None),
    "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"),
    "ppc64le": ("ppc64le", None), "s390x": ("s390x", None), "riscv64": ("riscv64", None),
}


def host_platform(machine: str | None = None) -> str:
    """This machine's platform as images name it: ``x86_64`` -> ``linux/amd64``,
    ``aarch64`` -> ``linux/arm64``; an unknown machine keeps its own name."""
    m = (machine or pyplatform.machine()).lower()
    arch, variant = _MACHINES.get(m, (m, None))
    return f"linux/{arch}/{variant}" if variant else f"linux/{arch}"


def parse_platform(platform: str) -> tuple[str, str, str | None]:
    """"linux/arm64/v8" -> ("linux", "arm64", "v8"); raises ValueError."""
    parts = platform.split("/") if isinstance(platform, str) else []
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"invalid platform {platform!r}: want os/arch[/variant]")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def _norm_variant(arch: str, variant: str | None) -> str | None:
    # arm64 images are published with and without "v8"; both mean the same thing.
    if arch == "arm64" and variant == "v8":
        return None
    return variant or None


def choose_platform(index: Mapping[str, Any], platform: str) -> dict:
    """The index entry for ``platform``; ValueError listing what the index offers."""
    want_os, want_arch, want_variant = parse_platform(platform)
    want_variant = _norm_variant(want_arch, want_variant)
    entries = index.get("manifests")
    if not isinstance(entries, list):
        raise ValueError("index without a manifests list")
    fallback = None
    offered = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        plat = entry.get("platform") or {}
        os_, arch = plat.get("os"), plat.get("architecture")
        variant = _norm_variant(str(arch), plat.get("variant"))
        offered.append("/".join(str(p) for p in (os_, arch, plat.get("variant")) if p))
        if os_ != want_os or arch != want_arch:
            continue
        if variant == want_variant:
            return entry
        if want_variant is None and fallback is None:
            fallback = entry  # e.g. linux/arm/v7 when asked for linux/arm
    if fallback is not None:
        return fallback
    raise ValueError(f"no manifest for platform {platform} (index offers: {', '.join(offered) or 'nothing'})")
