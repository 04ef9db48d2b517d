"""The bearer token of a page request, shared by the directory page and the CoreDump index page.

A token comes from the ``Authorization: Bearer`` header (kubectl-style clients) or from the
cookie the sign-in form set (browsers); the cookie is HttpOnly, SameSite=Strict, and Secure
whenever the page is served over TLS.
"""

from __future__ import annotations

from flask import redirect, request
from werkzeug.wrappers import Response

TOKEN_COOKIE = "coredump_token"


def request_token() -> str:
    """The request's bearer token, "" when it has none."""
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.cookies.get(TOKEN_COOKIE, "")


def sign_in_response() -> Response:
    """The sign-in form's POST: keep the pasted token in the cookie, back to the page."""
    token = (request.form.get("token") or "").strip()
    resp = redirect("./", code=303)
    resp.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict", secure=request.is_secure)
    return resp
