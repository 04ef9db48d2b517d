"""The cluster's crash page: the CoreDump index, listed with the *user's own* token.

Like the Kubernetes Dashboard, the page has no rights of its own to the index or the pods: every
request is made with the bearer token the user brought (``Authorization: Bearer`` from an
authenticating proxy, or the sign-in form's HttpOnly cookie), so RBAC shows each user exactly
the namespaces they may list CoreDumps in (``view``). Its own account only reviews tokens, to log
who asked. Grouped by signature across namespaces (count, first/last seen, pods, exe, image,
nodes, top frames), each signature links to its cores; a download is the core streamed over the
exec API with the user's rights, as ``coredump get`` does. A refused or expired token gets the
sign-in form again, never an empty page.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from flask import Flask, Response, g, render_template_string, request
from flask.typing import ResponseReturnValue

from webhook import constants
from webhook.inspect.download import digest_headers, human_size
from webhook.inspect.page_auth import request_token, sign_in_response
from webhook.inspect.rendering import group_by_signature

log = logging.getLogger(__name__)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin-bottom:1.5em}
td,th{border-bottom:1px solid #ddd;padding:.3em .7em;text-align:left;vertical-align:top}
.sig{font-family:monospace} .muted{color:#888} .warn{color:#a60}
</style></head><body>
<h1>{{ title }}</h1>
{% for w in warnings %}<p class="warn">{{ w }}</p>{% endfor %}
{% if not groups %}<p id="empty">No cores you are allowed to see.</p>{% else %}
<h2>Crash signatures</h2>
<table class="groups"><tr><th>signature</th><th>count</th><th>first seen</th><th>last seen</th><th>pods</th>
<th>exe</th><th>image</th><th>nodes</th><th>top frames</th></tr>
{% for grp in groups %}<tr class="group">
 <td class="sig"><a href="#g{{ loop.index }}">{{ grp.signature[:12] or "-" }}</a>{% if grp.kind == "snapshot" %} (snapshot){% endif %}</td>
 <td class="count">{{ grp.count }}</td><td>{{ when(grp.first_seen) }}</td><td>{{ when(grp.last.time) }}</td>
 <td>{{ grp.pods|length }}: {{ ", ".join(grp.pods[:3]) }}{% if grp.pods|length > 3 %} ...{% endif %}</td>
 <td><code>{{ grp.last.exe or "-" }}</code></td><td>{{ grp.last.image or "-" }}</td>
 <td>{{ ", ".join(nodes(grp)) or "-" }}</td><td>{{ " < ".join(grp.top_frames()) or "-" }}</td></tr>
{% endfor %}</table>
{% for grp in groups %}
<section class="cores" id="g{{ loop.index }}"><h3>{{ grp.signature[:12] or "no signature" }}: {{ grp.count }} crash(es)</h3>
<table><tr><th>namespace</th><th>pod</th><th>container</th><th>time</th><th>signal</th><th>size</th><th>node</th><th>core</th></tr>
{% for c in grp.records %}<tr class="core">
 <td>{{ c.namespace }}</td><td>{{ c.pod }}</td><td>{{ c.container }}</td><td>{{ when(c.time) }}</td>
 <td>{{ c.signal_name or "-" }}</td><td>{{ size(c.size) }}{% if c.count > 1 %} (+{{ c.count - 1 }} counted){% endif %}</td>
 <td>{{ c.node or "-" }}</td>
 <td>{% if c.present %}<a class="download" href="download/{{ c.namespace }}/{{ c.coredump }}">{{ c.name }}</a>{% else %}{{ c.name }} <span class="muted">({{ c.metadata.get("state", "gone") }})</span>{% endif %}
  <div class="muted"><code>{{ c.path }}</code></div></td></tr>
{% endfor %}</table></section>
{% endfor %}{% endif %}
</body></html>"""

_LOGIN = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{{ title }}: sign in</title></head>
<body><h1>{{ title }}</h1>{% if reason %}<p id="refused">{{ reason }}</p>{% endif %}
<p id="login">Paste a Kubernetes bearer token (e.g. <code>kubectl create token NAME</code>): you see the
CoreDumps your own RBAC lets you list.</p>
<form method="post" action="login"><input type="password" name="token" autocomplete="off"><button>Sign in</button></form>
</body></html>"""


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t)) if t else "?"


def _nodes(group: Any) -> list[str]:
    return sorted({r.node for r in group.records if r.node})[:5]


def create_index_page_app(api_for_token: Callable[[str], Any], *, title: str = "Core dumps",
                          whoami: Callable[[str], str | None] | None = None) -> Flask:
    """The page as a Flask app. ``api_for_token(token)``: an API client that authenticates with
    that token (the user's); ``whoami(token)``: the user's name for the request log (TokenReview)."""
    from webhook.inspect import index_view, kube

    app = Flask(__name__)

    def login(reason: str = "", status: int = 401) -> tuple[str, int]:
        return render_template_string(_LOGIN, title=title, reason=reason), status

    @app.before_request
    def started() -> None:
        g.started = time.monotonic()

    @app.after_request
    def logged(resp: Response) -> Response:
        token = request_token()
        user = None
        if token and whoami is not None:
            try:
                user = whoami(token)
            except Exception:  # noqa: BLE001 - the log line must not fail the request
                user = None
        log.info("page request", extra={"method": request.method, "path": request.path, "status": resp.status_code,
                                        "user": user, "seconds": round(time.monotonic() - g.get("started", 0.0), 4)})
        return resp

    @app.get("/healthz")
    def healthz() -> str:
        return "ok\n"

    @app.post("/login")
    def sign_in() -> ResponseReturnValue:
        return sign_in_response()

    @app.get("/")
    def index() -> ResponseReturnValue:
        token = request_token()
        if not token:
            return login()
        try:
            records, warnings = index_view.read_index(api_for_token(token), None)
        except kube.KubeError as exc:
            if exc.status == 401:
                return login("Your token was refused (expired?): sign in again.")
            if exc.status == 403:
                return render_template_string(_PAGE, title=title, groups=[], warnings=[str(exc)], when=_when,
                                              size=human_size, nodes=_nodes), 403
            return render_template_string(_PAGE, title=title, groups=[], warnings=[str(exc)], when=_when,
                                          size=human_size, nodes=_nodes), 502
        groups = group_by_signature(records)
        return render_template_string(_PAGE, title=title, groups=groups, warnings=warnings, when=_when,
                                      size=human_size, nodes=_nodes)

    @app.get("/download/<namespace>/<name>")
    def download(namespace: str, name: str) -> ResponseReturnValue:
        from webhook.inspect import ephemeral as eph
        from webhook.inspect import pod_exec

        token = request_token()
        if not token:
            return login()
        api = api_for_token(token)
        try:
            rec = index_view.record_from_coredump(kube.read_coredump(api, namespace, name))
            if rec is None or not rec.path:
                return "not found\n", 404
            pod = kube.read_pod(api, namespace, rec.pod)
            loc = eph.core_location(pod, rec.container or None)
            wrapper = constants.WRAPPER_PATH if eph.has_wrapper(pod, loc.container) else ""
            chunks = pod_exec.ExecSource(api, namespace, rec.pod, loc.container, rec.path, wrapper).read_from(0)
            first = next(chunks, b"")
        except kube.KubeError as exc:
            if exc.status == 401:
                return login("Your token was refused (expired?): sign in again.")
            return "not found or not allowed\n", 404  # the same answer: no namespace probing
        except eph.InspectError:
            return "not found or not allowed\n", 404

        def stream() -> Iterator[bytes]:
            yield first
            yield from chunks

        resp = Response(stream(), mimetype="application/octet-stream")
        resp.headers["Content-Disposition"] = f'attachment; filename="{rec.name}"'
        resp.headers.update(digest_headers(rec.digest))
        return resp

    return app




def in_cluster_api_for_token() -> Callable[[str], Any]:
    """API clients for users' tokens against this cluster's API server (the pod's CA)."""
    from kubernetes import client, config

    base = client.Configuration()
    config.load_incluster_config(client_configuration=base)

    def make(token: str) -> Any:
        cfg = client.Configuration()
        cfg.host, cfg.ssl_ca_cert, cfg.verify_ssl = base.host, base.ssl_ca_cert, base.verify_ssl
        cfg.api_key = {"authorization": f"Bearer {token}"}
        return client.ApiClient(cfg)

    return make
