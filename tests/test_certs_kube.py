"""``coredump certs bootstrap`` against recorded API responses and a real kubernetes ApiClient.

A tiny HTTP server on 127.0.0.1 (tests/kube_apiserver.py) answers from tests/recorded/certs/ and
records every request (method, path, content type, body), so the tests assert what the client
really sent.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
from kubernetes import client as k8s

from tests.kube_apiserver import FakeApiServer, recorded
from tests.process_support import coredump_command
from webhook.certs import generate as gen
from webhook.certs import kube

REPO = Path(__file__).resolve().parent.parent

NS, SVC, SECRET, MWC = "coredump-webhook", "coredump-webhook", "coredump-webhook-tls", "coredump-webhook"
SECRET_PATH = f"/api/v1/namespaces/{NS}/secrets/{SECRET}"
SECRETS_PATH = f"/api/v1/namespaces/{NS}/secrets"
MWC_PATH = f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{MWC}"
VWC = "coredump-webhook-workloads"
VWC_PATH = f"/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/{VWC}"
SETTINGS = kube.BootstrapSettings(namespace=NS, service=SVC, secret=SECRET, webhook_config=MWC, days=90,
                                  renew_before_days=30, request_timeout=5)


@pytest.fixture()
def api() -> Iterator[FakeApiServer]:
    with FakeApiServer() as fake:
        yield fake


@pytest.fixture()
def client(api: FakeApiServer) -> Iterator[k8s.ApiClient]:
    configuration = k8s.Configuration()
    configuration.host = api.url
    with k8s.ApiClient(configuration) as c:
        yield c


def secret_with(bundle: gen.CertBundle) -> dict[str, Any]:
    secret = recorded("secret-get-200-expired.json", "certs")
    secret["data"] = {k: base64.b64encode(v).decode() for k, v in bundle.files().items()}
    return secret


def applied(api: FakeApiServer, config: dict[str, Any]) -> dict[str, Any]:
    """The configuration after the PATCH the client sent (as the apiserver would apply it)."""
    patches = api.seen("PATCH")
    assert len(patches) == 1
    assert patches[0].content_type == "application/json-patch+json"
    return jsonpatch.apply_patch(copy.deepcopy(config), patches[0].body)


def ca_bundle_of(config: dict[str, Any], i: int) -> bytes:
    return base64.b64decode(config["webhooks"][i]["clientConfig"]["caBundle"])


def test_first_run_creates_secret_and_patches_every_webhook(api: FakeApiServer, client: k8s.ApiClient) -> None:
    api.route("GET", SECRET_PATH, (404, recorded("secret-get-404.json", "certs")))
    api.route("POST", SECRETS_PATH, (201, recorded("secret-create-201.json", "certs")))
    config = recorded("mwc-get-200.json", "certs")
    api.route("GET", MWC_PATH, (200, config))
    api.route("PATCH", MWC_PATH, (200, recorded("mwc-patch-200.json", "certs")))

    result = kube.bootstrap(client, SETTINGS)

    assert result.secret_action == "created"
    assert result.webhooks_patched == ["pods.coredump-webhook.io", "workloads.coredump-webhook.io"]
    assert [(s.method, s.path) for s in api.seen()] == [
        ("GET", SECRET_PATH), ("POST", SECRETS_PATH), ("GET", MWC_PATH), ("PATCH", MWC_PATH)]
    created = api.seen("POST")[0].body
    assert created["type"] == "kubernetes.io/tls"
    assert created["metadata"]["name"] == SECRET and created["metadata"]["namespace"] == NS
    assert "resourceVersion" not in created["metadata"]
    bundle = kube.bundle_from_secret(created)
    assert not gen.renewal_due(bundle, renew_before=dt.timedelta(days=30), service=SVC, namespace=NS).due
    after = applied(api, config)
    # both webhooks trust the new CA first; the expired CA recorded in the second is dropped
    assert ca_bundle_of(after, 0) == bundle.ca_crt
    assert ca_bundle_of(after, 1) == bundle.ca_crt
    ops = api.seen("PATCH")[0].body
    assert {"op": "test", "path": "/webhooks/1/name", "value": "workloads.coredump-webhook.io"} in ops


def test_valid_secret_is_reused_and_nothing_is_patched(api: FakeApiServer, client: k8s.ApiClient) -> None:
    bundle = gen.generate(SVC, NS, 90)
    api.route("GET", SECRET_PATH, (200, secret_with(bundle)))
    config = recorded("mwc-get-200.json", "certs")
    for webhook in config["webhooks"]:
        webhook["clientConfig"]["caBundle"] = base64.b64encode(bundle.ca_crt).decode()
    api.route("GET", MWC_PATH, (200, config))

    result = kube.bootstrap(client, SETTINGS)

    assert result.secret_action == "reused" and result.webhooks_patched == []
    assert [(s.method, s.path) for s in api.seen()] == [("GET", SECRET_PATH), ("GET", MWC_PATH)]


def test_reused_secret_still_fixes_a_webhook_missing_the_ca(api: FakeApiServer, client: k8s.ApiClient) -> None:
    bundle = gen.generate(SVC, NS, 90)
    api.route("GET", SECRET_PATH, (200, secret_with(bundle)))
    config = recorded("mwc-get-200.json", "certs")  # webhook 0 has no caBundle, webhook 1 an expired one
    api.route("GET", MWC_PATH, (200, config))
    api.route("PATCH", MWC_PATH, (200, recorded("mwc-patch-200.json", "certs")))

    result = kube.bootstrap(client, SETTINGS)

    assert result.secret_action == "reused"
    after = applied(api, config)
    assert ca_bundle_of(after, 0) == bundle.ca_crt and ca_bundle_of(after, 1) == bundle.ca_crt
    assert not api.seen("PUT") and not api.seen("POST")


def test_expired_secret_is_rotated_keeping_the_previous_valid_ca(api: FakeApiServer, client: k8s.ApiClient) -> None:
    api.route("GET", SECRET_PATH, (200, recorded("secret-get-200-expired.json", "certs")))
    api.route("PUT", SECRET_PATH, (200, recorded("secret-replace-200.json", "certs")))
    previous = gen.generate(SVC, NS, 90)  # a CA still valid, from an earlier rotation
    config = recorded("mwc-get-200.json", "certs")
    config["webhooks"][1]["clientConfig"]["caBundle"] = base64.b64encode(previous.ca_crt).decode()
    api.route("GET", MWC_PATH, (200, config))
    api.route("PATCH", MWC_PATH, (200, recorded("mwc-patch-200.json", "certs")))

    result = kube.bootstrap(client, SETTINGS)

    assert result.secret_action == "rotated" and "expired" in result.reason
    put = api.seen("PUT")[0].body
    assert put["metadata"]["resourceVersion"] == "48213"  # optimistic concurrency on the recorded version
    new = kube.bundle_from_secret(put)
    assert gen.signed_by(new.tls_crt, new.ca_crt)
    after = applied(api, config)
    assert ca_bundle_of(after, 0) == new.ca_crt
    assert [c.fingerprint(gen.hashes.SHA256()) for c in gen.load_certs(ca_bundle_of(after, 1))] == [
        gen.load_cert(new.ca_crt).fingerprint(gen.hashes.SHA256()),
        gen.load_cert(previous.ca_crt).fingerprint(gen.hashes.SHA256()),
    ]


def test_secret_for_another_service_is_rotated(api: FakeApiServer, client: k8s.ApiClient) -> None:
    api.route("GET", SECRET_PATH, (200, secret_with(gen.generate("other", NS, 90))))
    api.route("PUT", SECRET_PATH, (200, recorded("secret-replace-200.json", "certs")))
    api.route("GET", MWC_PATH, (200, recorded("mwc-get-200.json", "certs")))
    api.route("PATCH", MWC_PATH, (200, recorded("mwc-patch-200.json", "certs")))
    result = kube.bootstrap(client, SETTINGS)
    assert result.secret_action == "rotated" and "subjectAltName" in result.reason


def test_lost_create_race_reuses_the_winners_secret(api: FakeApiServer, client: k8s.ApiClient) -> None:
    """Two Jobs at once: ours gets 409 AlreadyExists, reads again and adopts the other's CA."""
    winner = gen.generate(SVC, NS, 90)
    api.route("GET", SECRET_PATH, (404, recorded("secret-get-404.json", "certs")), (200, secret_with(winner)))
    api.route("POST", SECRETS_PATH, (409, recorded("secret-create-409.json", "certs")))
    config = recorded("mwc-get-200.json", "certs")
    api.route("GET", MWC_PATH, (200, config))
    api.route("PATCH", MWC_PATH, (200, recorded("mwc-patch-200.json", "certs")))

    result = kube.bootstrap(client, SETTINGS)

    assert result.secret_action == "reused"
    assert [(s.method, s.path) for s in api.seen()] == [
        ("GET", SECRET_PATH), ("POST", SECRETS_PATH), ("GET", SECRET_PATH), ("GET", MWC_PATH), ("PATCH", MWC_PATH)]
    assert ca_bundle_of(applied(api, config), 0) == winner.ca_crt


def test_validating_configuration_is_patched_too(api: FakeApiServer, client: k8s.ApiClient) -> None:
    bundle = gen.generate(SVC, NS, 90)
    api.route("GET", SECRET_PATH, (200, secret_with(bundle)))
    mutating = recorded("mwc-get-200.json", "certs")
    for webhook in mutating["webhooks"]:
        webhook["clientConfig"]["caBundle"] = base64.b64encode(bundle.ca_crt).decode()
    api.route("GET", MWC_PATH, (200, mutating))
    validating = recorded("vwc-get-200.json", "certs")
    api.route("GET", VWC_PATH, (200, validating))
    api.route("PATCH", VWC_PATH, (200, recorded("vwc-patch-200.json", "certs")))
    settings = kube.BootstrapSettings(**{**SETTINGS.__dict__, "validating_webhook_config": VWC})

    result = kube.bootstrap(client, settings)

    assert result.webhooks_patched == ["workloads.coredump-webhook.io"]
    assert ca_bundle_of(applied(api, validating), 0) == bundle.ca_crt
    assert api.seen("PATCH")[0].path == VWC_PATH


@pytest.mark.parametrize("state", ["missing", "valid", "expired", "lost-race"])
def test_secret_only_never_touches_a_webhook_configuration(api: FakeApiServer, client: k8s.ApiClient, state: str) -> None:
    """The pre-install hook's mode: whatever the Secret's state, only the Secret is read or
    written, even with both webhook configurations routed (and a validating one configured)."""
    winner = gen.generate(SVC, NS, 90)
    if state == "missing":
        api.route("GET", SECRET_PATH, (404, recorded("secret-get-404.json", "certs")))
        api.route("POST", SECRETS_PATH, (201, recorded("secret-create-201.json", "certs")))
    elif state == "valid":
        api.route("GET", SECRET_PATH, (200, secret_with(winner)))
    elif state == "expired":
        api.route("GET", SECRET_PATH, (200, recorded("secret-get-200-expired.json", "certs")))
        api.route("PUT", SECRET_PATH, (200, recorded("secret-replace-200.json", "certs")))
    else:
        api.route("GET", SECRET_PATH, (404, recorded("secret-get-404.json", "certs")), (200, secret_with(winner)))
        api.route("POST", SECRETS_PATH, (409, recorded("secret-create-409.json", "certs")))
    for path, answer in ((MWC_PATH, "mwc-get-200.json"), (VWC_PATH, "vwc-get-200.json")):
        api.route("GET", path, (200, recorded(answer, "certs")))
        api.route("PATCH", path, (200, recorded(answer.replace("get", "patch"), "certs")))
    settings = kube.BootstrapSettings(**{**SETTINGS.__dict__, "validating_webhook_config": VWC})

    result = kube.bootstrap(client, settings, secret_only=True)

    expected = {
        "missing": ("created", [("GET", SECRET_PATH), ("POST", SECRETS_PATH)]),
        "valid": ("reused", [("GET", SECRET_PATH)]),
        "expired": ("rotated", [("GET", SECRET_PATH), ("PUT", SECRET_PATH)]),
        "lost-race": ("reused", [("GET", SECRET_PATH), ("POST", SECRETS_PATH), ("GET", SECRET_PATH)]),
    }[state]
    assert (result.secret_action, [(s.method, s.path) for s in api.seen()]) == expected
    assert result.webhooks_patched == []
    assert not any(s.path.startswith("/apis/admissionregistration.k8s.io/") for s in api.seen())
    written = (api.seen("POST") + api.seen("PUT"))[-1:]
    if state in ("missing", "expired"):
        # The certificate in the result is the one written, valid for this Service.
        bundle = kube.bundle_from_secret(written[0].body)
        assert result.not_after == gen.not_after(bundle.tls_crt).isoformat()
        assert not gen.renewal_due(bundle, renew_before=dt.timedelta(days=30), service=SVC, namespace=NS).due
    elif state == "lost-race":
        assert result.not_after == gen.not_after(winner.tls_crt).isoformat()


def test_forbidden_is_a_clear_error_and_nothing_is_written(api: FakeApiServer, client: k8s.ApiClient) -> None:
    api.route("GET", SECRET_PATH, (403, recorded("secret-get-403.json", "certs")))
    with pytest.raises(kube.KubeError) as info:
        kube.bootstrap(client, SETTINGS)
    message = str(info.value)
    assert "HTTP 403" in message and "cannot get resource" in message and "RBAC" in message
    assert [s.method for s in api.seen()] == ["GET"]


def test_failed_patch_test_operation_is_reported(api: FakeApiServer, client: k8s.ApiClient) -> None:
    api.route("GET", SECRET_PATH, (200, secret_with(gen.generate(SVC, NS, 90))))
    api.route("GET", MWC_PATH, (200, recorded("mwc-get-200.json", "certs")))
    api.route("PATCH", MWC_PATH, (422, recorded("mwc-patch-422.json", "certs")))
    with pytest.raises(kube.KubeError, match="HTTP 422"):
        kube.bootstrap(client, SETTINGS)


def test_cli_bootstrap_with_kubeconfig(api: FakeApiServer, tmp_path: Path) -> None:
    api.route("GET", SECRET_PATH, (404, recorded("secret-get-404.json", "certs")))
    api.route("POST", SECRETS_PATH, (201, recorded("secret-create-201.json", "certs")))
    api.route("GET", MWC_PATH, (200, recorded("mwc-get-200.json", "certs")))
    api.route("PATCH", MWC_PATH, (200, recorded("mwc-patch-200.json", "certs")))
    kubeconfig = api.kubeconfig(tmp_path / "kubeconfig", namespace=None, token="t0ken")
    args = [*coredump_command(), "certs", "bootstrap", "--namespace", NS, "--service", SVC, "--secret", SECRET,
            "--webhook-config", MWC, "--days", "90", "--renew-before", "30", "--kubeconfig", str(kubeconfig)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    line = json.loads(proc.stderr.strip().splitlines()[-1])
    assert line["event"] == "certs.bootstrap" and line["secret"] == "created"
    assert len(line["webhooksPatched"]) == 2
    assert [s.method for s in api.seen()] == ["GET", "POST", "GET", "PATCH"]
    assert {s.authorization for s in api.seen()} == {"Bearer t0ken"}  # the kubeconfig's credentials

    api.requests.clear()
    api.route("GET", SECRET_PATH, (403, recorded("secret-get-403.json", "certs")))
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "HTTP 403" in proc.stderr

    api.requests.clear()
    api.route("GET", SECRET_PATH, (200, secret_with(gen.generate(SVC, NS, 90))))
    proc = subprocess.run(args + ["--secret-only"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stderr.strip().splitlines()[-1])["secret"] == "reused"
    assert [(s.method, s.path) for s in api.seen()] == [("GET", SECRET_PATH)]  # no webhook configuration touched

    bad = subprocess.run(args[:-4] + ["--days", "10", "--renew-before", "30"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--renew-before" in bad.stderr
