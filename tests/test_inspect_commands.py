"""The commands end to end: click, a kubeconfig, the real client, recorded API responses, real exec."""

from __future__ import annotations

import hashlib
import json

import pytest
from click.testing import CliRunner

from tests.inspect_apiserver import Exec, FakeApiServer, Recorded
from tests.inspect_data import write_core
from webhook.cli import main
from webhook.inspect import ephemeral as eph

POD = "web-7d9f8c6b5-x2kqp"
POD_PATH = f"/api/v1/namespaces/shop/pods/{POD}"


@pytest.fixture
def server():
    with FakeApiServer() as s:
        yield s


@pytest.fixture
def container_fs(tmp_path):
    """The crashed container's filesystem as its kubelet would run commands in it."""
    root = tmp_path / "container"
    cores = {
        "old": write_core(root, "data/dump-a/core-!usr!local!bin!web-7-1700000000", namespace="shop", pod=POD,
                          container="app", t=1700000000, signature="a" * 64, frames=["f", "h", "main"]),
        "new": write_core(root, "data/dump-a/core-!usr!local!bin!web-7-1700000600", namespace="shop", pod=POD,
                          container="app", t=1700000600, signature="a" * 64, frames=["f", "h", "main"]),
    }
    return root, cores


def run(server, tmp_path, *args):
    kc = server.kubeconfig(tmp_path / "kubeconfig")
    return CliRunner().invoke(main, [*args, "--kubeconfig", str(kc)], catch_exceptions=False)


def test_debug_patches_waits_and_prints_the_attach_line(server, tmp_path, monkeypatch):
    monkeypatch.setattr(eph, "unique_name", lambda pod, **kw: "coredump-debug-x7k2q")
    server.route("GET", POD_PATH, Recorded(200, "pod-web.json"), Recorded(200, "pod-web-debug-waiting.json"),
                 Recorded(200, "pod-web-debug-running.json"))
    server.route("PATCH", POD_PATH + "/ephemeralcontainers", Recorded(200, "pod-web-patched.json"))
    monkeypatch.setattr("time.sleep", lambda s: None)
    res = run(server, tmp_path, "debug", POD, "-n", "shop")
    assert res.exit_code == 0, res.output
    assert f"kubectl --kubeconfig {tmp_path / 'kubeconfig'} attach -it -n shop {POD} -c coredump-debug-x7k2q" in res.output
    methods = [r["method"] for r in server.requests]
    assert methods == ["GET", "PATCH", "GET", "GET"]
    body = json.loads(server.requests[1]["body"])
    assert body["spec"]["ephemeralContainers"][0]["volumeMounts"] == [{"name": "coredump-webhook-cores", "mountPath": "/data/dump-a"}]
    assert server.requests[0]["headers"]["authorization"] == "Bearer alice-token"


def test_debug_dry_run_from_file_calls_nothing(server, tmp_path):
    res = run(server, tmp_path, "debug", "--dry-run", "-f", "tests/recorded/inspect/pod-eci-nas.json")
    assert res.exit_code == 0, res.output
    body = json.loads(res.output)
    assert body["spec"]["ephemeralContainers"][0]["targetContainerName"] == "worker"
    assert server.requests == []


@pytest.mark.parametrize("route,status,file,message", [
    ("PATCH", 403, "status-403-ephemeral.json", "needs RBAC verb 'patch' on 'pods/ephemeralcontainers'"),
    ("PATCH", 422, "status-422-old-cluster.json", "not supported"),
    ("GET", 404, "status-404-pod.json", f"pod shop/{POD} not found"),
])
def test_debug_errors(server, tmp_path, route, status, file, message):
    server.route("GET", POD_PATH, Recorded(200, "pod-web.json") if route != "GET" else Recorded(status, file))
    server.route("PATCH", POD_PATH + "/ephemeralcontainers", Recorded(status, file))
    res = run(server, tmp_path, "debug", POD, "-n", "shop")
    assert res.exit_code == 1 and message in res.output


def test_debug_not_annotated_pod(server, tmp_path):
    server.route("GET", "/api/v1/namespaces/shop/pods/batch-1", Recorded(200, "pod-not-annotated.json"))
    res = run(server, tmp_path, "debug", "batch-1")  # namespace from the kubeconfig context
    assert res.exit_code == 1 and "not prepared by coredump-webhook" in res.output


def test_list_reads_cores_through_exec(server, tmp_path, container_fs):
    root, cores = container_fs
    server.route("GET", "/api/v1/namespaces/shop/pods", Recorded(200, "podlist-shop.json"))
    server.route("GET", POD_PATH + "/exec", Exec(root=root))
    res = run(server, tmp_path, "list", "-n", "shop")
    assert res.exit_code == 0, res.output
    lines = [l for l in res.output.splitlines() if l.startswith("shop")]
    assert len(lines) == 2 and "1700000600" in lines[0] and "aaaaaaaaaaaa" in lines[0]
    execs = [r for r in server.requests if r["path"].endswith("/exec")]
    assert len(execs) == 1 and execs[0]["query"]["container"] == ["app"]  # batch-1 is not prepared: skipped
    grouped = run(server, tmp_path, "list", "-n", "shop", "--group")
    assert grouped.output.splitlines()[1].split()[:2] == ["aaaaaaaaaaaa", "2"]
    data = json.loads(run(server, tmp_path, "list", "-n", "shop", "-o", "json").output)
    assert [c["sha256"] for c in data["cores"]] == [hashlib.sha256(cores[k].read_bytes()).hexdigest() for k in ("new", "old")]


def test_list_all_namespaces_skips_forbidden_ones(server, tmp_path, container_fs):
    root, _ = container_fs
    server.route("GET", "/api/v1/pods", Recorded(403, "status-403-list-pods.json"))
    server.route("GET", "/api/v1/namespaces", Recorded(200, "namespacelist.json"))
    server.route("GET", "/api/v1/namespaces/payments/pods", Recorded(403, "status-403-list-pods.json"))
    server.route("GET", "/api/v1/namespaces/shop/pods", Recorded(200, "podlist-shop.json"))
    server.route("GET", POD_PATH + "/exec", Exec(root=root))
    res = run(server, tmp_path, "list", "-A")
    assert res.exit_code == 0, res.output
    assert "namespace payments: no access to its pods, skipped" in res.stderr
    assert sum(1 for l in res.stdout.splitlines() if l.startswith("shop")) == 2


def test_list_in_forbidden_namespace_is_an_error(server, tmp_path):
    server.route("GET", "/api/v1/namespaces/payments/pods", Recorded(403, "status-403-list-pods.json"))
    res = run(server, tmp_path, "list", "-n", "payments")
    assert res.exit_code == 1 and "verb 'list' on 'pods' in namespace 'payments'" in res.output


def test_get_downloads_and_verifies(server, tmp_path, container_fs):
    root, cores = container_fs
    server.route("GET", POD_PATH, Recorded(200, "pod-web.json"))
    server.route("GET", POD_PATH + "/exec", Exec(root=root))
    out = tmp_path / "got.core"
    res = run(server, tmp_path, "get", POD, cores["old"].name, "-n", "shop", "-o", str(out))
    assert res.exit_code == 0, res.output
    assert out.read_bytes() == cores["old"].read_bytes() and "verified" in res.output
    # corrupt the core in the pod: the metadata's sha256 no longer matches
    cores["new"].write_bytes(b"\0" * cores["new"].stat().st_size)
    bad = run(server, tmp_path, "get", POD, cores["new"].name, "-n", "shop", "-o", str(tmp_path / "bad"))
    assert bad.exit_code == 1 and "sha256 mismatch" in bad.output and (tmp_path / "bad.part").exists()
    missing = run(server, tmp_path, "get", POD, "core-nope", "-n", "shop")
    assert missing.exit_code == 1 and "no core 'core-nope'" in missing.output


def test_gcore_dry_run_builds_the_agent_request(server, tmp_path):
    res = run(server, tmp_path, "gcore", "--dry-run", "-f", "tests/recorded/inspect/pod-web.json")
    assert res.exit_code == 0, res.output
    req = json.loads(res.output)
    assert req["container"] == "app" and req["node"] == "node-3" and req["pid"] == 1
    assert req["container_id"].startswith("8e2a4c6b")
