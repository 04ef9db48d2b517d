"""A small read-only page: cores per namespace and pod, signatures, backtraces, downloads.

Served by the agent (node cores) or next to a volume holding cores; reads the ``.json``
metadata under ``cores_root`` on every request (no state). RBAC rule: each request carries the
user's Kubernetes bearer token (``Authorization: Bearer``, as set by an authenticating proxy, or
the cookie set by the login form); a namespace is shown, and its cores downloadable, only when
``authorize(token, namespace)`` says so (in production: TokenReview + SubjectAccessReview,
``webhook.inspect.kube.make_authorizer``). The namespace is the one the agent verified through its
pod watch and filed the core under (metadata ``identity: verified``, ``<root>/<namespace>/...``),
never a name the crashing process chose; other cores are shown by pod UID only to users allowed
in every namespace (``authorize(token, "")``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable

from flask import Flask, Response, abort, render_template_string, send_file
from flask.typing import ResponseReturnValue

from webhook.constants import METADATA_SUFFIX
from webhook.inspect.download import digest_headers, human_size
from webhook.inspect.listing import read_metadata_file, scan_directory
from webhook.inspect.page_auth import request_token, sign_in_response
from webhook.inspect.records import CoreRecord, is_verified, newest_first
from webhook.inspect.rendering import group_by_signature

#: The heading of cores whose pod the agent could not verify (no namespace is named for them:
#: only users allowed in every namespace see them).
UNVERIFIED_HEADING = "(unverified)"

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin-bottom:1.5em}
td,th{border-bottom:1px solid #ddd;padding:.3em .7em;text-align:left;vertical-align:top}
code{font-size:90%} .sig{font-family:monospace} .muted{color:#888}
</style></head><body>
<h1>{{ title }}</h1>
{% if not namespaces %}<p id="empty">No cores you are allowed to see.</p>{% endif %}
{% for ns, pods in namespaces %}
<section class="namespace" id="ns-{{ ns }}"><h2>Namespace {{ ns }}</h2>
 <h3>Signatures</h3>
 <table class="groups"><tr><th>signature</th><th>count</th><th>last seen</th><th>top frames</th></tr>
 {% for g in groups[ns] %}<tr><td class="sig">{{ g.signature[:12] or "-" }}</td><td class="count">{{ g.count }}</td>
 <td>{{ when(g.last.time) }}</td><td>{{ " < ".join(g.top_frames()) or "-" }}</td></tr>{% endfor %}
 </table>
 {% for pod, cores in pods %}
 <h3 class="pod">{{ pod }}</h3>
 <table class="cores"><tr><th>time</th><th>container</th><th>signal</th><th>size</th><th>signature</th><th>core</th><th>backtrace</th></tr>
 {% for c in cores %}<tr class="core">
  <td>{{ when(c.time) }}</td><td>{{ c.container }}</td><td>{{ c.signal_name or "-" }}</td>
  <td>{{ size(c.size) }}{% if c.truncated %} (truncated: {{ c.truncated_reason }}){% endif %}</td>
  <td class="sig" title="{{ c.signature }}">{{ c.signature[:12] or "-" }}</td>
  <td>{% if c.present %}<a class="download" href="{{ link(c) }}">{{ c.name }}</a>{% else %}{{ c.name }} <span class="muted">(missing)</span>{% endif %}
   <div class="muted"><code>{{ c.path }}</code></div></td>
  <td>{% if c.backtrace %}<details><summary>{{ c.backtrace|length }} frames</summary><pre class="bt">{{ "\\n".join(c.backtrace) }}</pre></details>{% else %}-{% endif %}</td>
 </tr>{% endfor %}
 </table>
 {% endfor %}
</section>
{% endfor %}
</body></html>"""

_LOGIN = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{{ title }}: sign in</title></head>
<body><h1>{{ title }}</h1><p id="login">Paste a Kubernetes bearer token (e.g. <code>kubectl create token NAME</code>).
Only namespaces where it may <code>create pods/exec</code> are shown.</p>
<form method="post" action="login"><input type="password" name="token" autocomplete="off"><button>Sign in</button></form>
</body></html>"""


def create_page_app(cores_root: str, authorize: Callable[[str, str], bool], *, title: str = "Core dumps",
                    anonymous: bool = False) -> Flask:
    """The page as a Flask app; ``authorize(token, namespace) -> bool`` is the RBAC rule.

    ``anonymous`` (``coredump page --insecure-no-auth``, local use only) asks for no token:
    ``authorize`` then decides with an empty one.
    """
    app = Flask(__name__)
    root = os.path.realpath(cores_root)

    def allowed(token: str, namespace: str) -> bool:
        return (bool(token) or anonymous) and bool(authorize(token, namespace))

    def authorized_by(rec: CoreRecord) -> str:
        """The namespace a core is authorized by: the one the agent verified *and* filed it
        under (``<root>/<namespace>/...``); "" (cluster-wide readers only) for anything else."""
        if not is_verified(rec.metadata) or not rec.namespace:
            return ""
        rel = os.path.relpath(rec.location, root).split(os.sep)
        return rec.namespace if len(rel) > 1 and rel[0] == rec.namespace else ""

    def allowed_records(token: str) -> list[CoreRecord]:
        records, _ = scan_directory(root)
        verdicts: dict[str, bool] = {}
        out = []
        for r in records:
            ns = authorized_by(r)
            if ns not in verdicts:
                verdicts[ns] = allowed(token, ns)
            if verdicts[ns]:
                if not ns:  # shown by pod UID and container ID only, under its own heading
                    r = dataclasses.replace(r, namespace=UNVERIFIED_HEADING,
                                            pod=f"pod UID {r.metadata.get('pod_uid') or '?'}",
                                            container=str(r.metadata.get("container_id") or "")[:12])
                out.append(r)
        return out

    def link(rec: CoreRecord) -> str:
        return "download/" + os.path.relpath(rec.location, root)

    @app.get("/healthz")
    def healthz() -> str:
        return "ok\n"

    @app.get("/")
    def index() -> ResponseReturnValue:
        token = request_token()
        if not token and not anonymous:
            return render_template_string(_LOGIN, title=title), 401
        records = newest_first(allowed_records(token))
        by_ns: dict[str, dict[str, list[CoreRecord]]] = {}
        for r in records:
            by_ns.setdefault(r.namespace, {}).setdefault(r.pod, []).append(r)
        namespaces = [(ns, sorted(pods.items())) for ns, pods in sorted(by_ns.items())]
        groups = {ns: group_by_signature([r for r in records if r.namespace == ns]) for ns in by_ns}
        return render_template_string(
            _PAGE, title=title, namespaces=namespaces, groups=groups, link=link, size=human_size,
            when=lambda t: time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t)) if t else "?")

    @app.post("/login")
    def login() -> ResponseReturnValue:
        return sign_in_response()

    @app.get("/download/<path:rel>")
    def download(rel: str) -> ResponseReturnValue:
        token = request_token()
        if not token and not anonymous:
            abort(401)
        full = os.path.realpath(os.path.join(root, rel))
        if os.path.commonpath([root, full]) != root or not os.path.isfile(full + METADATA_SUFFIX):
            abort(404)
        try:  # this core's metadata only: one authorization, not a scan of every namespace
            rec = read_metadata_file(full + METADATA_SUFFIX)
        except (OSError, ValueError):
            rec = None
        if rec is None or not os.path.isfile(full) or not allowed(token, authorized_by(rec)):
            abort(404)  # not found and not allowed look the same: no namespace probing
        resp: Response = send_file(full, as_attachment=True, download_name=rec.name, conditional=True)
        resp.headers.update(digest_headers(rec.digest))
        return resp

    return app
