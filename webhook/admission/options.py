"""Per-pod options read from annotations (size limit, compression, coredump_filter), validated.

Each option the pod sets is checked and normalized here, before anything is added, and handed
to the node agent as an environment variable of every target (see ``registration_env``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from webhook import constants as C
from webhook.admission.patch import Refused

#: Bits of /proc/<pid>/coredump_filter the kernel defines (MMF_DUMP_FILTER_BITS = 9).
MAX_COREDUMP_FILTER = 0x1FF

_SIZE = re.compile(r"^([0-9]+)\s*([KMGTP]?)(I?B?)$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_HEX = re.compile(r"^(0[xX])?([0-9a-fA-F]{1,8})$")


def parse_size(text: str) -> int:
    """Bytes from "512M", "2G", "1Gi", "4096" (binary units). Raise ValueError."""
    m = _SIZE.match(text.strip()) if isinstance(text, str) else None
    if not m or (m.group(3) and not m.group(2)):
        raise ValueError(f"{text!r} is not a size (bytes, or a number with K, M, G or T)")
    value = int(m.group(1)) * _SIZE_UNITS[m.group(2).upper()]
    if value <= 0:
        raise ValueError(f"{text!r} must be more than zero")
    return value


def parse_coredump_filter(text: str) -> int:
    """The coredump_filter bit mask from hex ("0x33" or "33"). Raise ValueError."""
    m = _HEX.match(text.strip()) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"{text!r} is not a hexadecimal mask such as 0x33")
    value = int(m.group(2), 16)
    if value > MAX_COREDUMP_FILTER:
        raise ValueError(f"{text!r} sets bits the kernel does not define (at most 0x{MAX_COREDUMP_FILTER:x})")
    return value


def parse_compress(text: str) -> str:
    """"zstd" or "none". Raise ValueError."""
    value = text.strip().lower() if isinstance(text, str) else ""
    if value not in ("zstd", "none"):
        raise ValueError(f"{text!r} is not one of zstd, none")
    return value


#: annotation -> (environment variable, the normalized value for the agent or ValueError).
OPTIONS: tuple[tuple[str, str, Callable[[str], str]], ...] = (
    (C.ANN_MAX_SIZE, C.ENV_MAX_SIZE, lambda v: str(parse_size(v))),
    (C.ANN_COMPRESS, C.ENV_COMPRESS, parse_compress),
    (C.ANN_COREDUMP_FILTER, C.ENV_COREDUMP_FILTER, lambda v: f"0x{parse_coredump_filter(v):x}"),
)


def registration_options(annotations: dict[str, Any]) -> dict[str, str]:
    """Step 5 (validation first): the pod's options as environment values; Refused if invalid."""
    out: dict[str, str] = {}
    for ann, env, check in OPTIONS:
        if ann not in annotations:
            continue
        try:
            out[env] = check(annotations[ann])
        except ValueError as exc:
            raise Refused(f"annotation {ann}: {exc}") from None
    return out
