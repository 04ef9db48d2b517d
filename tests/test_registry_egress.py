"""The webhook's registry look-ups cannot be aimed at the cluster's insides (issue 8, section 3).

Each attack runs for real against servers of the tests on loopback: an image on an address
nobody configured, a registry answering with a foreign realm, a plain-HTTP realm, a redirect to
plain HTTP or to another host. The servers count what reaches them: a refused connection is
one that never arrives. Then the server side: look-ups never hold up pods that need none.
"""

from __future__ import annotations

import base64
import http.server
import json
import threading
import time
from typing import Any

import pytest
from admission_support import container, make_pod, mutate

from tests.process_support import free_port
from tests.registry_support import LoopbackCA, serve
from webhook import __version__
from webhook.admission.settings import AdmissionSettings
from webhook.registry.egress import USER_AGENT, host_allowed
from webhook.registry.resolver import RegistryResolver
from webhook.registry.responses import ResolveError
from webhook.registry.settings import RegistrySettings

MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                       "config": {"mediaType": "x", "digest": "sha256:" + "1" * 64, "size": 1}}).encode()


class Recorder:
    """An HTTP(S) server answering from ``answer(handler) -> (status, headers, body)`` and
    recording every request (path and headers)."""

    def __init__(self, answer, host: str = "127.0.0.1", tls: LoopbackCA | None = None) -> None:
        self.requests: list[dict[str, Any]] = []
        rec = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                rec.requests.append({"path": self.path, "headers": dict(self.headers)})
                status, headers, body = answer(self)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.srv, self.port = serve(Handler, tls=tls, host=host)
        self.host = f"{host}:{self.port}"

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def ca(tmp_path):
    return LoopbackCA(tmp_path)


def local(**kw) -> RegistrySettings:
    """What the tests configure (never the shipped default): the loopback registry over HTTP."""
    return RegistrySettings(**{"insecure_registries": ("127.0.0.1",), "allowed_networks": ("127.0.0.1/32",),
                               "negative_ttl_seconds": 0, "timeout_seconds": 2, **kw})


def lookup(settings: RegistrySettings, image: str, **kw) -> ResolveError:
    r = RegistryResolver(settings, **kw)
    with pytest.raises(ResolveError) as e:
        r(image, namespace="team-a", pull_secrets=kw.pop("pull_secrets", ["pull"]) if "secret_reader" in kw else [],
          deadline=None)
    return e.value


def challenge(realm: str):
    def answer(h):
        return 401, {"WWW-Authenticate": f'Bearer realm="{realm}",service="reg"', "Content-Type": "application/json"}, b"{}"
    return answer


def test_shipped_settings_trust_no_loopback_registry() -> None:
    d = RegistrySettings()
    assert d.insecure_registries == () and d.allowed_networks == () and d.allowed_registries == ()
    target = Recorder(lambda h: (200, {}, MANIFEST))
    try:
        err = lookup(d, f"{target.host}/team/app:1")
    finally:
        target.close()
    assert err.reason == "loopback address refused" and target.requests == []


@pytest.mark.parametrize("image,reason", [
    ("169.254.169.254/latest/meta-data:1", "link-local address refused"),
    ("[fe80::1]:5000/x:1", "link-local address refused"),
    ("127.0.0.2:5000/x:1", "loopback address refused"),
    ("[::ffff:127.0.0.1]:5000/x:1", "loopback address refused"),
    ("0.0.0.0:5000/x:1", "unspecified address refused"),
    ("localhost:5000/x:1", "loopback address refused"),
])
def test_loopback_and_link_local_are_refused_after_resolution(image: str, reason: str) -> None:
    start = time.monotonic()
    err = lookup(local(allowed_networks=()), image)
    assert err.reason == reason and time.monotonic() - start < 1.0


def test_the_warning_is_a_reason_class_never_the_connection_error() -> None:
    """A closed port and a silent one look alike to the pod's creator: no port-scan oracle."""
    settings = local(timeout_seconds=0.5)
    closed = f"127.0.0.1:{free_port()}/x:1"
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        quiet = f"127.0.0.1:{silent.getsockname()[1]}/x:1"
        r = RegistryResolver(settings)
        pod = make_pod([container("a", image=closed), container("b", image=quiet)])
        warnings = mutate(pod, resolve_image=r, deadline=time.monotonic() + 3).warnings
    said = [w for w in warnings if "could not resolve" in w]
    assert said == ["container a: not wrapped, could not resolve the image's entrypoint (registry unreachable)",
                    "container b: not wrapped, could not resolve the image's entrypoint (registry timed out)"]
    assert not any("refused" in w.lower() or "errno" in w.lower() or "127.0.0.1" in w for w in warnings)


def test_foreign_realm_on_a_loopback_address_is_never_contacted(ca) -> None:
    foreign = Recorder(lambda h: (200, {}, b'{"token": "t"}'), host="127.0.0.2", tls=ca)
    registry = Recorder(challenge(f"https://{foreign.host}/token"))
    try:
        err = lookup(local(ca_file=str(ca.bundle)), f"{registry.host}/team/app:1")
    finally:
        registry.close()
        foreign.close()
    assert err.reason == "loopback address refused"
    assert len(registry.requests) == 1 and foreign.requests == []


def test_realm_at_the_cloud_metadata_address_is_refused() -> None:
    registry = Recorder(challenge("https://169.254.169.254/latest/api/token"))
    try:
        err = lookup(local(), f"{registry.host}/team/app:1")
    finally:
        registry.close()
    assert err.reason == "link-local address refused"


def test_plain_http_realm_is_refused() -> None:
    realm = Recorder(lambda h: (200, {}, b'{"token": "t"}'))
    registry = Recorder(challenge(f"http://{realm.host}/token"))
    try:
        err = lookup(local(), f"{registry.host}/team/app:1")
    finally:
        registry.close()
        realm.close()
    assert err.reason == "token realm not HTTPS" and realm.requests == []


def test_redirect_to_plain_http_is_not_followed() -> None:
    target = Recorder(lambda h: (200, {}, MANIFEST))
    registry = Recorder(lambda h: (307, {"Location": f"http://{target.host}/v2/team/app/manifests/1"}, b""))
    try:
        err = lookup(local(), f"{registry.host}/team/app:1")
    finally:
        registry.close()
        target.close()
    assert err.reason == "redirect not HTTPS" and target.requests == []


def _secret_reader(registry: str):
    def read(namespace: str, names: list[str]) -> list[dict]:
        cfg = {"auths": {registry: {"username": "puller", "password": "s3cret"}}}
        data = base64.b64encode(json.dumps(cfg).encode()).decode()
        return [{"type": "kubernetes.io/dockerconfigjson", "metadata": {"name": "pull"}, "data": {".dockerconfigjson": data}}]
    return read


def test_redirect_to_another_host_drops_the_credentials(ca) -> None:
    target = Recorder(lambda h: (404, {"Content-Type": "application/json"}, b'{"errors": []}'), host="127.0.0.2", tls=ca)

    def registry_answer(h):
        if not h.headers.get("Authorization"):
            return 401, {"WWW-Authenticate": 'Basic realm="reg"'}, b""
        return 302, {"Location": f"https://{target.host}/blob"}, b""

    registry = Recorder(registry_answer)
    settings = local(allowed_networks=("127.0.0.0/8",), ca_file=str(ca.bundle), read_pull_secrets=True)
    try:
        err = lookup(settings, f"{registry.host}/team/app:1", secret_reader=_secret_reader(registry.host))
    finally:
        registry.close()
        target.close()
    assert err.reason == "image not found"
    assert registry.requests[1]["headers"]["Authorization"].startswith("Basic ")
    assert len(target.requests) == 1 and "Authorization" not in target.requests[0]["headers"]


def test_user_agent_names_the_project_and_version() -> None:
    registry = Recorder(lambda h: (404, {}, b""))
    try:
        lookup(local(), f"{registry.host}/team/app:1")
    finally:
        registry.close()
    assert registry.requests[0]["headers"]["User-Agent"] == USER_AGENT
    assert USER_AGENT.startswith(f"coredump-webhook/{__version__}")


def test_allow_list_pins_the_hosts() -> None:
    registry = Recorder(lambda h: (404, {}, b""))
    try:
        err = lookup(local(allowed_registries=("registry.example.com", "*.corp.example")), f"{registry.host}/team/app:1")
        assert err.reason == "registry not allowed" and registry.requests == []
        err = lookup(local(allowed_registries=(f"127.0.0.1:{registry.port}",)), f"{registry.host}/team/app:1")
        assert err.reason == "image not found" and len(registry.requests) == 1
    finally:
        registry.close()
    assert host_allowed("a.corp.example", 443, ("*.corp.example",))
    assert not host_allowed("corp.example.evil", 443, ("*.corp.example",))
    assert host_allowed("::1", 5000, ("[::1]:5000",)) and not host_allowed("::1", 5001, ("[::1]:5000",))


# --- look-ups never hold up pods that need none --------------------------------------------------------


def _review(pod: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "0d1e2f3a-0000-4000-8000-000000000001", "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"}, "namespace": "default",
        "operation": "CREATE", "userInfo": {"username": "u"}, "object": pod}}


def test_requests_past_the_lookup_threads_do_not_wait_for_a_stalled_registry(tmp_path) -> None:
    import socket

    from webhook.server.app import create_app
    from webhook.server.settings import ServerSettings

    with socket.socket() as stalled:  # accepts connections, never answers
        stalled.bind(("127.0.0.1", 0))
        stalled.listen(64)
        host = f"127.0.0.1:{stalled.getsockname()[1]}"
        settings = ServerSettings(cert_dir=tmp_path, admission=AdmissionSettings(admission_budget_seconds=1.5),
                                  registry=local(), lookup_threads=1)
        app = create_app(settings, namespace_levels=lambda ns: "privileged")
        first: dict[str, Any] = {}

        def slow() -> None:
            start = time.monotonic()
            first["answer"] = app.test_client().post("/mutate", json=_review(make_pod([container(image=f"{host}/a:1")])))
            first["took"] = time.monotonic() - start

        t = threading.Thread(target=slow)
        t.start()
        time.sleep(0.2)  # the first request now waits on the registry, holding the only look-up thread
        client = app.test_client()
        start = time.monotonic()
        busy = client.post("/mutate", json=_review(make_pod([container(image=f"{host}/b:1")])))
        busy_took = time.monotonic() - start
        start = time.monotonic()
        plain = client.post("/mutate", json=_review(make_pod([container(command=["/app"])])))
        plain_took = time.monotonic() - start
        t.join()
    assert busy_took < 0.5 and plain_took < 0.5
    assert "could not resolve the image's entrypoint (webhook busy)" in busy.get_json()["response"]["warnings"][-1]
    assert plain.get_json()["response"]["patch"]
    assert first["took"] >= 1.0 and "registry timed out" in " ".join(first["answer"].get_json()["response"]["warnings"])


def test_the_egress_networkpolicy_example_selects_the_webhook_and_keeps_metadata_out() -> None:
    from pathlib import Path

    import kubernetes_validate
    import yaml

    repo = Path(__file__).resolve().parent.parent
    policy = yaml.safe_load((repo / "deploy/examples/egress/webhook-networkpolicy.yaml").read_text())
    kubernetes_validate.validate(policy, "1.31.0", strict=True)
    deployment = next(d for d in yaml.safe_load_all((repo / "deploy/coredump-webhook.yaml").read_text())
                      if d and d["kind"] == "Deployment" and d["metadata"]["name"] == "coredump-webhook")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    registries = policy["spec"]["egress"][-1]
    assert "169.254.0.0/16" in registries["to"][0]["ipBlock"]["except"] and registries["ports"] == [{"protocol": "TCP", "port": 443}]


def test_private_ranges_stay_allowed() -> None:
    """In-cluster registries live on private addresses: only loopback, link-local, unspecified
    and multicast are the cluster's insides here."""
    import ipaddress

    from webhook.registry.egress import EgressPolicy, EgressRefused, forbidden_kind, parse_networks

    for allowed in ("10.0.0.7", "172.16.4.2", "192.168.1.10", "100.64.0.3", "fd00::1", "8.8.8.8"):
        assert forbidden_kind(ipaddress.ip_address(allowed)) is None, allowed
    policy = EgressPolicy(parse_networks(["127.0.0.1/32"]))
    policy.check_address("x", ipaddress.ip_address("127.0.0.1"))  # configured: fine
    with pytest.raises(EgressRefused):
        policy.check_address("x", ipaddress.ip_address("127.0.0.2"))
    with pytest.raises(ValueError, match="not an address or network"):
        RegistrySettings(allowed_networks=("localhost",))
