"""Optional notification webhook: message shapes (pure) and a background sender.

Shapes: ``json`` (the crash summary as is), ``slack`` (incoming webhook), ``feishu`` (custom bot,
``msg_type: text``), ``dingtalk`` (custom robot, ``msgtype: text``).
"""

from __future__ import annotations

from typing import Any

from webhook.agent.background import BackgroundSender, SendsInBackground

FORMATS = ("json", "slack", "feishu", "dingtalk")


def summary_text(info: dict[str, Any]) -> str:
    """One human line: who crashed, with what, where the core is."""
    who = (f"{info.get('namespace')}/{info.get('pod')} container {info.get('container')}"
           if info.get("pod") else f"process {info.get('comm')} (host)")
    sig = info.get("signal_name") or f"signal {info.get('signal')}"
    where = info.get("path") or "not saved"
    state = info.get("outcome", "written")
    extra = f" ({info.get('truncated_reason')})" if info.get("truncated_reason") else ""
    text = (f"Core dump on node {info.get('node')}: {who}, pid {info.get('pid')} {info.get('comm')} "
            f"killed by {sig}; {state}{extra}: {where}, {info.get('size')} bytes")
    if info.get("signature_frames"):
        text += f"; top frames: {' < '.join(info['signature_frames'][:3])}"
    return text


def message(fmt: str, info: dict[str, Any]) -> dict[str, Any]:
    """The request body for ``fmt``; raises ValueError for an unknown format."""
    text = summary_text(info)
    if fmt == "json":
        return {"event": "CoreDumped", "text": text, **info}
    if fmt == "slack":
        return {"text": text}
    if fmt == "feishu":
        return {"msg_type": "text", "content": {"text": text}}
    if fmt == "dingtalk":
        return {"msgtype": "text", "text": {"content": text}}
    raise ValueError(f"unknown notification format {fmt!r} (known: {', '.join(FORMATS)})")


class Notifier(SendsInBackground):
    """Posts each crash summary to ``url`` from a background thread, with a timeout."""

    def __init__(self, url: str, fmt: str = "json", timeout: float = 5.0) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown notification format {fmt!r} (known: {', '.join(FORMATS)})")
        import requests

        self.url = url
        self.fmt = fmt
        self.timeout = timeout
        self._session = requests.Session()
        self._sender = BackgroundSender("notify", self._post)

    def _post(self, info: dict[str, Any]) -> None:
        response = self._session.post(self.url, json=message(self.fmt, info), timeout=self.timeout)
        response.raise_for_status()



def make_notifier(url: str, fmt: str = "json", timeout: float = 5.0) -> Notifier | None:
    """None when no URL is configured."""
    return Notifier(url, fmt, timeout) if url else None
