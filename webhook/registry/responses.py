"""Talking to a registry within a budget: the time left, bounded reads, and the one error users see."""

from __future__ import annotations

import json
import time

import requests

#: Largest manifest / config blob accepted (a config with a long history is a few hundred KiB).
MAX_MANIFEST_BYTES = 4 << 20
MAX_CONFIG_BYTES = 16 << 20


class ResolveError(Exception):
    """Resolution failed; the message names the image and what went wrong (for the log), and
    ``reason`` is the short class users see ("registry unreachable", "not found", ...): never
    the raw connection error, which would make the webhook a port scanner's oracle."""

    def __init__(self, message: str, reason: str = "invalid registry response") -> None:
        super().__init__(message)
        self.reason = reason


class Budget:
    """Remaining time of one resolution; every request's timeout comes from it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise BudgetSpent()
        return left


class BudgetSpent(Exception):
    """The budget ran out (reported by the resolver as "registry timed out")."""


def read_body(resp: requests.Response, budget: Budget, limit: int, what: str) -> bytes:
    """The body, checking the budget between chunks and refusing oversized documents."""
    chunks, size = [], 0
    try:
        for chunk in resp.iter_content(65536):
            size += len(chunk)
            if size > limit:
                raise ResolveError(f"{what}: larger than {limit} bytes", "response too large")
            chunks.append(chunk)
            budget.remaining()
    except requests.RequestException as e:
        if isinstance(e, requests.ConnectionError) and "timed out" in str(e).lower():
            raise BudgetSpent() from None
        raise ResolveError(f"{what}: reading the response failed: {short_error(e)}", "registry unreachable") from None
    finally:
        resp.close()
    return b"".join(chunks)


def registry_error(resp: requests.Response, budget: Budget) -> str:
    """': CODE message' from a registry's JSON error body, best effort."""
    try:
        body = read_body(resp, budget, 65536, "error")
        errors = json.loads(body).get("errors") or []
        text = "; ".join(f"{e.get('code', '')} {e.get('message', '')}".strip() for e in errors if isinstance(e, dict))
        return f": {text}" if text else ""
    except Exception:
        return ""


def json_object(body: bytes, what: str) -> dict:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ResolveError(f"{what} is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ResolveError(f"{what} is not a JSON object")
    return doc


def short_error(e: Exception) -> str:
    text = str(e)
    return text if len(text) <= 200 else text[:197] + "..."
