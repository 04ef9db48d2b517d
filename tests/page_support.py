"""Helpers for the inspection page's tests: the page served on a real socket, an auth proxy in
front of it, the DOM headless Chromium renders, screenshots of the index page."""

from __future__ import annotations

import subprocess
import threading

import requests
from werkzeug.serving import make_server

from tests.suite_support import which_or_fail


class Served:
    def __init__(self, app):
        self.srv = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.srv.server_port}/"
        self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.srv.shutdown()
        self.srv.server_close()


def auth_proxy(upstream: str, token: str):
    """What an authenticating proxy in front of the page does: add the user's bearer token."""
    def app(environ, start_response):
        path = environ.get("PATH_INFO", "/")
        r = requests.get(upstream.rstrip("/") + path, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        start_response(f"{r.status_code} {r.reason}", [("Content-Type", r.headers.get("Content-Type", "text/html"))])
        return [r.content]
    return app


def chromium_dom(url: str, tmp_path) -> str:
    chromium = which_or_fail("chromium")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chromium-profile'}"]
    proc = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


INDEX = "/apis/coredump-webhook.io/v1alpha1"


def api_for(server):
    def make(token: str):
        api = server.api()
        api.configuration.api_key = {"authorization": f"Bearer {token}"}
        return api
    return make


def take_screenshot(url: str, path, tmp_path) -> None:
    import subprocess

    chromium = which_or_fail("chromium")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             f"--user-data-dir={tmp_path / 'chromium-shot'}", "--window-size=1400,900", f"--screenshot={path}"]
    subprocess.run([chromium, *flags, url], capture_output=True, timeout=120, check=True)
