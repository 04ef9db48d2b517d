"""`coredump certs remove`: the chart's pre-delete hook, against recorded API answers.

The real ``coredump`` process with a kubeconfig pointing at tests/kube_apiserver.py: the
webhook configuration is deleted before the Secret, an object already gone is fine, and a
refusal fails the hook (so `helm uninstall` says so) with the RBAC hint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.kube_apiserver import FakeApiServer, recorded

NS, SECRET, MWC = "coredump-webhook", "coredump-webhook-tls", "coredump-webhook"
SECRET_PATH = f"/api/v1/namespaces/{NS}/secrets/{SECRET}"
MWC_PATH = f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{MWC}"


def run_remove(api: FakeApiServer, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "COREDUMP_"))}
    env.update(COREDUMP_CERTS_NAMESPACE=NS, COREDUMP_CERTS_WEBHOOK_CONFIG=MWC,
               KUBECONFIG=str(api.kubeconfig(tmp_path / "kubeconfig", namespace=None, token="t0ken")))
    return subprocess.run([sys.executable, "-m", "webhook.cli", "certs", "remove", *extra], env=env,
                          capture_output=True, text=True, timeout=60)


def test_remove_deletes_the_configuration_then_the_secret(tmp_path: Path) -> None:
    with FakeApiServer() as api:
        api.route("DELETE", MWC_PATH, (200, recorded("mwc-delete-200.json", "certs")))
        api.route("DELETE", SECRET_PATH, (200, recorded("secret-delete-200.json", "certs")))
        proc = run_remove(api, tmp_path, "--secret", SECRET)
        assert proc.returncode == 0, proc.stderr
        assert [(s.method, s.path) for s in api.seen()] == [("DELETE", MWC_PATH), ("DELETE", SECRET_PATH)]
        assert {s.authorization for s in api.seen()} == {"Bearer t0ken"}
    event = json.loads(proc.stderr.strip().splitlines()[-1])
    # the one log schema (time, level, logger, message), then the result
    assert {k: event.pop(k) for k in ("level", "logger", "message")} == {
        "level": "info", "logger": "webhook.certs.commands", "message": "certs.remove"}
    assert event.pop("time")
    assert event == {"event": "certs.remove", "namespace": NS, "webhookConfig": "deleted", "secret": "deleted"}


def test_remove_is_idempotent_and_keeps_a_secret_it_was_not_given(tmp_path: Path) -> None:
    with FakeApiServer() as api:
        api.route("DELETE", MWC_PATH, (404, recorded("mwc-delete-404.json", "certs")))
        proc = run_remove(api, tmp_path)  # cert-manager owns its Secret: not named, not touched
        assert proc.returncode == 0, proc.stderr
        assert [(s.method, s.path) for s in api.seen()] == [("DELETE", MWC_PATH)]
    assert json.loads(proc.stderr.strip().splitlines()[-1])["webhookConfig"] == "absent"


def test_a_refusal_fails_the_hook_with_the_reason(tmp_path: Path) -> None:
    with FakeApiServer() as api:
        api.route("DELETE", MWC_PATH, (200, recorded("mwc-delete-200.json", "certs")))
        api.route("DELETE", SECRET_PATH, (403, recorded("secret-delete-403.json", "certs")))
        proc = run_remove(api, tmp_path, "--secret", SECRET)
    assert proc.returncode == 1
    assert "deleting secret coredump-webhook/coredump-webhook-tls: HTTP 403" in proc.stderr
    assert "lacks RBAC" in proc.stderr
