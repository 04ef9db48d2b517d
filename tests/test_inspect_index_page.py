"""The cluster's crash page over the CoreDump index, with each user's own token: the fake API
server answers by token (alice may list CoreDumps in shop only; admin everywhere), headless
Chromium renders it (screenshots kept in the test's directory), downloads go over exec with the
user's rights, a refused token gets the sign-in form."""

from __future__ import annotations

import json
import logging

import requests

from tests.inspect_data import write_core
from tests.kube_apiserver import RECORDED, ByToken, Exec, FakeApiServer, Recorded
from tests.page_support import INDEX, Served, api_for, auth_proxy, chromium_dom, take_screenshot
from tests.suite_support import which_or_fail
from webhook.inspect.index_page import create_index_page_app
from webhook.inspect.page_auth import TOKEN_COOKIE

POD = "web-7d9f8c6b5-x2kqp"


def _listing() -> dict:
    shop = json.loads((RECORDED / "coredumplist-shop.json").read_text())
    pay = json.loads(json.dumps(shop["items"][2]))
    pay["metadata"]["namespace"] = "payments"
    pay["metadata"]["name"] = "pay-0-0123456789ab"
    pay["spec"].update({"pod": "pay-0", "signature": "c" * 64, "topFrames": ["charge_card", "main"],
                        "frames": "charge_card < main", "image": "registry.example.com/payments/api:2"})
    return {"shop": shop, "all": {**shop, "items": shop["items"] + [pay]}}


def _server(tmp_path) -> FakeApiServer:
    data = _listing()
    forbidden = Recorded(403, "status-403-list-coredumps.json")
    server = FakeApiServer()
    server.route("GET", f"{INDEX}/coredumps", ByToken({"admin-token": Recorded(200, data["all"]),
                                                      "alice-token": forbidden}))
    server.route("GET", "/api/v1/namespaces", ByToken({"alice-token": Recorded(200, "namespacelist.json")}))
    server.route("GET", f"{INDEX}/namespaces/shop/coredumps", ByToken({"alice-token": Recorded(200, data["shop"])}))
    server.route("GET", f"{INDEX}/namespaces/payments/coredumps", ByToken({"alice-token": forbidden}))
    return server


def test_index_page_shows_each_user_their_namespaces_in_chromium(tmp_path, caplog):
    which_or_fail("chromium")
    with _server(tmp_path) as api:
        app = create_index_page_app(api_for(api), whoami=lambda t: t.split("-")[0])
        with caplog.at_level(logging.INFO, logger="webhook.inspect.index_page"), Served(app) as page:
            with Served(auth_proxy(page.url, "alice-token")) as proxy:
                dom = chromium_dom(proxy.url, tmp_path)
                shot = tmp_path / "index-page-alice.png"
                take_screenshot(proxy.url, shot, tmp_path)
            with Served(auth_proxy(page.url, "admin-token")) as proxy:
                admin = chromium_dom(proxy.url, tmp_path)
                take_screenshot(proxy.url, tmp_path / "index-page-admin.png", tmp_path)
    # alice: shop's crashes, grouped (1 + 7 counted), with exe, image, node, frames; payments not at all
    assert "aaaaaaaaaaaa" in dom and '<td class="count">8</td>' in dom
    assert "/usr/local/bin/web" in dom and "registry.example.com/shop/web:1.4.2" in dom and "node-3" in dom
    assert "check_order &lt; process &lt; main" in dom and 'href="#g1"' in dom and 'id="g1"' in dom
    assert "pay-0" not in dom and "charge_card" not in dom and "cccccccccccc" not in dom
    assert "namespace payments: no access to its coredumps, skipped" in dom
    # admin: both namespaces, one call
    assert "charge_card" in admin and "pay-0" in admin and "aaaaaaaaaaaa" in admin
    assert shot.stat().st_size > 10_000
    print(f"screenshots: {tmp_path / 'index-page-alice.png'} {tmp_path / 'index-page-admin.png'}")
    # requests are logged, with the user
    lines = [r for r in caplog.records if r.getMessage() == "page request"]
    assert {getattr(r, "user", None) for r in lines} >= {"alice", "admin"}
    assert all(getattr(r, "status", None) == 200 for r in lines if getattr(r, "path", "") == "/")


def test_refused_token_gets_the_sign_in_form_not_an_empty_page(tmp_path):
    with _server(tmp_path) as api, Served(create_index_page_app(api_for(api))) as page:
        r = requests.get(page.url, timeout=10)
        assert r.status_code == 401 and 'id="login"' in r.text
        r = requests.get(page.url, headers={"Authorization": "Bearer expired-token"}, timeout=10)
        assert r.status_code == 401 and 'id="refused"' in r.text and "sign in again" in r.text
        s = requests.Session()
        r = s.post(page.url + "login", data={"token": "alice-token"}, timeout=10)
        assert r.status_code == 200 and "aaaaaaaaaaaa" in r.text  # the cookie works
        assert s.cookies.get(TOKEN_COOKIE) == "alice-token"


def test_download_streams_the_core_with_the_users_rights(tmp_path, bin_dir):
    root = tmp_path / "container"
    core = write_core(root, "data/dump-a/core-web-1700000600", namespace="shop", pod=POD, container="app",
                      t=1700000600, signature="a" * 64, frames=["check_order", "main"])
    listing = _listing()["shop"]
    cd = next(i for i in listing["items"] if i["spec"]["pod"] == POD and i["spec"]["kind"] == "crash")
    cd["spec"]["location"]["path"] = "/data/dump-a/core-web-1700000600"
    name = cd["metadata"]["name"]
    with FakeApiServer() as api:
        api.route("GET", f"{INDEX}/namespaces/shop/coredumps/{name}", ByToken({"alice-token": Recorded(200, cd)},
                                                                              Recorded(403, "status-403-list-coredumps.json")))
        api.route("GET", f"/api/v1/namespaces/shop/pods/{POD}", Recorded(200, "pod-web.json"))
        api.route("GET", f"/api/v1/namespaces/shop/pods/{POD}/exec", Exec(root=root, wrapper=bin_dir / "coredump-wrapper"))
        with Served(create_index_page_app(api_for(api))) as page:
            r = requests.get(f"{page.url}download/shop/{name}", headers={"Authorization": "Bearer alice-token"}, timeout=30)
            assert r.status_code == 200 and r.content == core.read_bytes()
            assert r.headers["X-Core-Digest"] == cd["spec"]["digest"] and "X-Core-SHA256" not in r.headers
            denied = requests.get(f"{page.url}download/shop/{name}", headers={"Authorization": "Bearer bob-token"},
                                  timeout=30)
            assert denied.status_code == 404 and not denied.content.startswith(b"\x7fELF")
        execs = [r for r in api.requests if r["path"].endswith("/exec")]
        assert len(execs) == 1 and execs[0]["headers"]["authorization"] == "Bearer alice-token"
