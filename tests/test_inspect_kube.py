"""The Kubernetes edge against recorded API responses on a real socket, real ApiClient, real websocket exec."""

from __future__ import annotations

import hashlib
import json
import os
import random

import pytest
import xxhash

from tests.kube_apiserver import Exec, FakeApiServer, Recorded
from webhook.inspect import download as dl
from webhook.inspect import ephemeral as eph
from webhook.inspect import ephemeral_api, kube, pod_exec

POD = "web-7d9f8c6b5-x2kqp"
POD_PATH = f"/api/v1/namespaces/shop/pods/{POD}"
EPH_PATH = POD_PATH + "/ephemeralcontainers"
EXEC_PATH = POD_PATH + "/exec"


@pytest.fixture
def server():
    with FakeApiServer() as s:
        yield s


def test_read_pod_and_not_found(server):
    server.route("GET", POD_PATH, Recorded(200, "pod-web.json"))
    server.route("GET", "/api/v1/namespaces/shop/pods/web-0", Recorded(404, "status-404-pod.json"))
    api = server.api()
    assert kube.read_pod(api, "shop", POD)["metadata"]["uid"] == "6f1c2a7e-3b9d-4c51-9a0e-2d8f4b7c1e93"
    with pytest.raises(kube.NotFound, match="pod shop/web-0 not found"):
        kube.read_pod(api, "shop", "web-0")
    assert server.requests[0]["headers"]["authorization"] == "Bearer test-token"


def test_patch_sends_the_golden_body_as_strategic_merge_patch(server):
    server.route("PATCH", EPH_PATH, Recorded(200, "pod-web-patched.json"))
    pod = json.loads(open("tests/recorded/inspect/pod-web.json").read())
    name = eph.unique_name(pod, rng=random.Random(7))
    body = eph.ephemeral_patch(eph.debug_container(pod, image="ghcr.io/coredump-webhook/coredump-webhook:0.1.0", name=name))
    got = ephemeral_api.patch_ephemeral(server.api(), "shop", POD, body)
    assert got["spec"]["ephemeralContainers"][0]["targetContainerName"] == "app"
    req = server.requests[-1]
    assert req["method"] == "PATCH" and req["path"] == EPH_PATH
    assert req["headers"]["content-type"] == "application/strategic-merge-patch+json"
    golden = json.loads(open("tests/golden/inspect/debug-patch-web.json").read())
    assert json.loads(req["body"]) == golden


@pytest.mark.parametrize("status,file,error,match", [
    (403, "status-403-ephemeral.json", kube.Forbidden, "RBAC verb 'patch' on 'pods/ephemeralcontainers' in namespace 'shop'"),
    (404, "status-404-subresource.json", kube.Unsupported, "not supported by this cluster.*404"),
    (422, "status-422-old-cluster.json", kube.Unsupported, "predates Kubernetes 1.23"),
    (404, "status-404-pod.json", kube.NotFound, "not found"),
])
def test_patch_errors_are_explained(server, status, file, error, match):
    server.route("PATCH", EPH_PATH, Recorded(status, file))
    with pytest.raises(error, match=match):
        ephemeral_api.patch_ephemeral(server.api(), "shop", POD, {"spec": {"ephemeralContainers": []}})


def test_wait_until_running_polls_the_pod(server):
    server.route("GET", POD_PATH, Recorded(200, "pod-web-patched.json"), Recorded(200, "pod-web-debug-waiting.json"),
                 Recorded(200, "pod-web-debug-running.json"))
    sleeps = []
    obj = ephemeral_api.wait_ephemeral(server.api(), "shop", POD, "coredump-debug-x7k2q", timeout=60, sleep=sleeps.append)
    assert eph.ephemeral_state(obj, "coredump-debug-x7k2q")[0] == "running"
    assert len(sleeps) == 2 and len([r for r in server.requests if r["method"] == "GET"]) == 3


def test_wait_stops_on_image_pull_error_and_on_timeout(server):
    server.route("GET", POD_PATH, Recorded(200, "pod-web-debug-errimagepull.json"))
    with pytest.raises(kube.KubeError, match="cannot start: ErrImagePull"):
        ephemeral_api.wait_ephemeral(server.api(), "shop", POD, "coredump-debug-x7k2q", sleep=lambda s: None)
    server.route("GET", POD_PATH, Recorded(200, "pod-web-debug-waiting.json"))
    now = iter(range(0, 1000, 10))
    with pytest.raises(kube.KubeError, match="not running after 30s.*PodInitializing"):
        ephemeral_api.wait_ephemeral(server.api(), "shop", POD, "coredump-debug-x7k2q", timeout=30,
                            sleep=lambda s: None, clock=lambda: next(now))


def test_exec_streams_binary_and_reports_failures(server, tmp_path):
    data = os.urandom(300_000)
    (tmp_path / "blob").write_bytes(data)
    server.route("GET", EXEC_PATH, Exec(frame=32768, pace=0.02))
    api = server.api()
    chunks = list(pod_exec.exec_stream(api, "shop", POD, "app", ["cat", str(tmp_path / "blob")]))
    assert b"".join(chunks) == data and len(chunks) > 1
    q = server.requests[-1]["query"]
    assert q["command"] == ["cat", str(tmp_path / "blob")] and q["container"] == ["app"] and q["stdout"][0].lower() == "true"
    with pytest.raises(kube.KubeError, match="exit code 1.*No such file"):
        pod_exec.exec_output(api, "shop", POD, "app", ["cat", str(tmp_path / "missing")])


def test_exec_forbidden_names_the_verb(server):
    server.route("GET", EXEC_PATH, Recorded(403, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403,
                 "reason": "Forbidden", "message": f'pods "{POD}" is forbidden: User "bob" cannot create resource "pods/exec" in API group "" in the namespace "shop"'}))
    with pytest.raises(kube.Forbidden, match="verb 'create' on 'pods/exec'"):
        pod_exec.exec_output(server.api(), "shop", POD, "app", ["true"])


def test_resumable_download_over_exec(server, tmp_path):
    root = tmp_path / "container"
    (root / "data/dump-a").mkdir(parents=True)
    data = os.urandom(200_000) + bytes(100_000)
    (root / "data/dump-a/core.7").write_bytes(data)
    server.route("GET", EXEC_PATH, Exec(root=root))
    out = tmp_path / "core.7"
    (tmp_path / "core.7.part").write_bytes(data[:123_456])
    src = pod_exec.ExecSource(server.api(), "shop", POD, "app", "/data/dump-a/core.7")
    res = dl.download(src, str(out), digest="xxh128:" + xxhash.xxh3_128(data).hexdigest(), size=len(data))
    assert res.resumed_from == 123_456 and out.read_bytes() == data
    assert server.requests[-1]["query"]["command"] == ["tail", "-c", "+123457", "/data/dump-a/core.7"]


def test_resumable_download_through_the_wrapper_without_a_shell(server, tmp_path, bin_dir):
    from tests.kube_apiserver import DISTROLESS
    from webhook import constants

    root = tmp_path / "container"
    (root / "data/dump-a").mkdir(parents=True)
    data = os.urandom(200_000) + bytes(100_000)
    (root / "data/dump-a/core.7").write_bytes(data)
    server.route("GET", EXEC_PATH, Exec(root=root, wrapper=bin_dir / "coredump-wrapper", missing=DISTROLESS, frame=8192))
    src = pod_exec.ExecSource(server.api(), "shop", POD, "app", "/data/dump-a/core.7", wrapper=constants.WRAPPER_PATH)
    out = tmp_path / "core.7"
    (tmp_path / "core.7.part").write_bytes(data[:99_999])
    res = dl.download(src, str(out), digest="sha256:" + hashlib.sha256(data).hexdigest(), size=len(data))
    assert res.resumed_from == 99_999 and out.read_bytes() == data
    assert server.requests[-1]["query"]["command"] == [constants.WRAPPER_PATH, "--coredump-cat", "/data/dump-a/core.7", "99999"]
    # tail is not there: the same source without the wrapper fails with the runtime's message
    with pytest.raises(kube.KubeError, match='exec: "tail": executable file not found'):
        list(pod_exec.ExecSource(server.api(), "shop", POD, "app", "/data/dump-a/core.7").read_from(0))


def test_list_pods_forbidden(server):
    server.route("GET", "/api/v1/namespaces/payments/pods", Recorded(403, "status-403-list-pods.json"))
    with pytest.raises(kube.Forbidden, match="verb 'list' on 'pods' in namespace 'payments'"):
        kube.list_pods(server.api(), "payments")


def test_authorizer_token_review_then_subject_access_review(server):
    server.route("POST", "/apis/authentication.k8s.io/v1/tokenreviews", Recorded(201, "tokenreview-alice.json"))
    server.route("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", Recorded(201, "sar-allowed.json"),
                 Recorded(201, "sar-denied.json"))
    authorize = kube.make_authorizer(server.api())
    assert authorize("alice-token", "shop") is True
    assert authorize("alice-token", "payments") is False
    assert authorize("", "shop") is False
    tr = json.loads(server.requests[0]["body"])
    assert tr["kind"] == "TokenReview" and tr["spec"]["token"] == "alice-token"
    sar = json.loads(server.requests[1]["body"])
    assert sar["spec"]["resourceAttributes"] == {"namespace": "shop", "verb": "create", "resource": "pods", "subresource": "exec"}
    assert sar["spec"]["user"] == "alice@example.com" and "developers" in sar["spec"]["groups"]
    assert sar["spec"]["extra"] == {"authentication.kubernetes.io/credential-id": ["X509SHA256=3f2c"]}


def test_authorizer_denies_unauthenticated_and_api_errors(server):
    server.route("POST", "/apis/authentication.k8s.io/v1/tokenreviews", Recorded(201, "tokenreview-invalid.json"))
    authorize = kube.make_authorizer(server.api())
    assert authorize("bogus", "shop") is False
    assert not any(r["path"].endswith("subjectaccessreviews") for r in server.requests)
    server.route("POST", "/apis/authentication.k8s.io/v1/tokenreviews", Recorded(403, "status-403-list-pods.json"))
    assert authorize("alice-token", "shop") is False
