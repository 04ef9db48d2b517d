"""The page, served by a real local server, rendered by headless Chromium; downloads give exact bytes."""

from __future__ import annotations

import hashlib
import json

import pytest
import requests
import xxhash

from tests.inspect_data import write_core
from tests.page_support import Served, auth_proxy, chromium_dom
from webhook.inspect.page import create_page_app

SIG_A = hashlib.sha256(b"f\nh\nmain").hexdigest()
SIG_B = hashlib.sha256(b"g\nmain").hexdigest()
#: token -> namespaces it may read (the RBAC rule of this test's cluster).
GRANTS = {"alice-token": {"shop"}, "admin-token": {"shop", "payments"}}


def authorize(token: str, namespace: str) -> bool:
    return namespace in GRANTS.get(token, set())


@pytest.fixture
def cores(tmp_path):
    root = tmp_path / "cores"
    made = {
        "a1": write_core(root, "shop/web-1/app/core-web-7-1700000000", namespace="shop", pod="web-1", container="app",
                         t=1700000000, signature=SIG_A, frames=["f", "h", "main"]),
        "a2": write_core(root, "shop/web-2/app/core-web-7-1700000600", namespace="shop", pod="web-2", container="app",
                         t=1700000600, signature=SIG_A, frames=["f", "h", "main"]),
        "b": write_core(root, "payments/pay-0/api/core-api-1-1700000300", namespace="payments", pod="pay-0",
                        container="api", t=1700000300, signal=6, signature=SIG_B, frames=["g", "main"]),
    }
    return root, made


def test_page_in_headless_chromium_shows_only_allowed_namespaces(cores, tmp_path):
    root, made = cores
    with Served(create_page_app(str(root), authorize=authorize)) as page, Served(auth_proxy(page.url, "alice-token")) as proxy:
        dom = chromium_dom(proxy.url, tmp_path)
    assert "Namespace shop" in dom and "web-1" in dom and "web-2" in dom
    assert SIG_A[:12] in dom and "f &lt; h &lt; main" in dom
    assert "#0 f at web.c:10" in dom  # backtrace rendered
    # alice may not read "payments": neither its pod nor its signature appears
    assert "payments" not in dom and "pay-0" not in dom and SIG_B[:12] not in dom
    # the signature table counts the two crashes of the same bug once
    assert '<td class="count">2</td>' in dom


def test_download_gives_exact_bytes_and_respects_rbac(cores):
    root, made = cores
    with Served(create_page_app(str(root), authorize=authorize)) as page:
        html = requests.get(page.url, headers={"Authorization": "Bearer admin-token"}, timeout=10).text
        assert "pay-0" in html and "web-1" in html
        for core in made.values():
            rel = core.relative_to(root)
            assert f'href="download/{rel}"' in html
            r = requests.get(page.url + f"download/{rel}", headers={"Authorization": "Bearer admin-token"}, timeout=10)
            assert r.status_code == 200
            assert hashlib.sha256(r.content).hexdigest() == hashlib.sha256(core.read_bytes()).hexdigest()
            assert r.headers["X-Core-Digest"] == "xxh128:" + xxhash.xxh3_128(core.read_bytes()).hexdigest()
            assert "X-Core-SHA256" not in r.headers  # only for a sha256 digest
        pay = made["b"].relative_to(root)
        assert requests.get(page.url + f"download/{pay}", headers={"Authorization": "Bearer alice-token"}, timeout=10).status_code == 404
        assert requests.get(page.url + f"download/{pay}", timeout=10).status_code == 401
        assert requests.get(page.url + "download/../../etc/passwd", headers={"Authorization": "Bearer admin-token"}, timeout=10).status_code == 404
        # metadata file itself is not a downloadable core
        r = requests.get(page.url + f"download/{pay}.json", headers={"Authorization": "Bearer admin-token"}, timeout=10)
        assert r.status_code == 404


def test_login_form_sets_a_cookie_and_unknown_token_sees_nothing(cores):
    root, _ = cores
    with Served(create_page_app(str(root), authorize=authorize)) as page:
        first = requests.get(page.url, timeout=10)
        assert first.status_code == 401 and 'name="token"' in first.text
        s = requests.Session()
        r = s.post(page.url + "login", data={"token": "alice-token"}, timeout=10)
        assert r.status_code == 200 and "web-1" in r.text and "pay-0" not in r.text
        cookie = next(c for c in s.cookies if c.name == "coredump_token")
        assert cookie.has_nonstandard_attr("HttpOnly")
        nobody = requests.get(page.url, headers={"Authorization": "Bearer stranger"}, timeout=10).text
        assert 'id="empty"' in nobody and "web-1" not in nobody


def test_only_verified_names_filed_under_them_authorize(tmp_path):
    """Issue 8: the page authorizes by the namespace the agent verified and filed the core
    under; an unverified core (names unknown) or names that disagree with where it is filed are
    shown to cluster-wide readers only, under the "(unverified)" heading, by pod UID."""
    from webhook.inspect.page import UNVERIFIED_HEADING

    root = tmp_path / "cores"
    write_core(root, "_unverified/pod-6f1c/8e2a4c6b1d3f/core-1", namespace="payments", pod="pay-0",
               container="api", t=1700000001, identity="unverified")
    write_core(root, "shop/web-1/app/core-2", namespace="payments", pod="pay-0", container="api", t=1700000002)
    old = write_core(root, "payments/pay-0/api/core-3", namespace="payments", pod="pay-0", container="api",
                     t=1700000003)
    doc = json.loads(old.with_name("core-3.json").read_text())
    del doc["identity"]  # written before the agent verified names: not trusted either
    old.with_name("core-3.json").write_text(json.dumps(doc))
    grants = {"pay": {"payments"}, "shop": {"shop"}, "admin": {"", "shop", "payments"}}
    client = create_page_app(str(root), authorize=lambda t, ns: ns in grants.get(t, set())).test_client()

    def page(token):
        return client.get("/", headers={"Authorization": f"Bearer {token}"}).get_data(as_text=True)

    for token in ("pay", "shop"):
        assert 'id="empty"' in page(token), token
        for rel in ("_unverified/pod-6f1c/8e2a4c6b1d3f/core-1", "shop/web-1/app/core-2", "payments/pay-0/api/core-3"):
            assert client.get(f"/download/{rel}", headers={"Authorization": f"Bearer {token}"}).status_code == 404
    admin = page("admin")
    assert UNVERIFIED_HEADING in admin and "core-1" in admin and "core-3" in admin
    assert "Namespace payments" not in admin and '<h3 class="pod">pay-0' not in admin
    assert client.get("/download/shop/web-1/app/core-2", headers={"Authorization": "Bearer admin"}).status_code == 200
