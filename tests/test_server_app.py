"""The webhook's HTTP surface through Flask's test client: robustness, metrics, logs.

The admission logic underneath is the real one; only the transport is in-process here
(tests/test_server_tls.py drives the same app through real gunicorn over TLS).
"""

from __future__ import annotations

import base64
import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from webhook import constants as C
from webhook.admission.settings import AdmissionSettings
from webhook.server.app import INTERNAL_ERROR_WARNING, create_app
from webhook.server.settings import ServerSettings
from webhook.serving.tls import StaticReadiness

LIMIT = 256 * 1024


def pod(annotated: bool = True, name: str = "web-1") -> dict[str, Any]:
    annotations = {C.ANN_PATTERN: "/data/dump/core-%E-%p-%t"} if annotated else {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "web-", "namespace": "team-a", "annotations": annotations,
                     "labels": {"app": "web"}},
        "spec": {
            "containers": [
                {"name": "app", "image": "registry.example/app:1", "command": ["/app"], "args": ["--serve"]},
                {"name": "side", "image": "registry.example/side:1", "command": ["/side"]},
            ]
        },
    }


def review(obj: Any = None, uid: str = "0df28fbd-5f5f-11e8-b0f0-080027d6a4f1", kind: str = "Pod") -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "team-a",
            "operation": "CREATE",
            "userInfo": {"username": "admin"},
            "object": pod() if obj is None else obj,
            "dryRun": False,
        },
    }


def make_app(tmp_path: Path, readiness: Any = None, admission: Any = None, limit: int = LIMIT):
    settings = ServerSettings(
        cert_dir=tmp_path,
        admission=AdmissionSettings(resolve_entrypoints=False) if admission is None else admission,
        max_body_bytes=limit,
    )
    return create_app(settings, readiness=readiness)


@pytest.fixture()
def client(tmp_path: Path):
    app = make_app(tmp_path, readiness=StaticReadiness(True, not_after=1893456000.0))
    return app.test_client()


def post(client, body: Any, content_type: str = "application/json", path: str = "/mutate"):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post(path, data=data, content_type=content_type)


def assert_valid_review_served(client) -> None:
    resp = post(client, review(uid="after-bad-input"))
    assert resp.status_code == 200
    out = resp.get_json()["response"]
    assert out["uid"] == "after-bad-input" and out["allowed"] is True
    assert out["patchType"] == "JSONPatch"


def test_annotated_pod_is_patched(client) -> None:
    resp = post(client, review())
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    body = resp.get_json()
    assert body["apiVersion"] == "admission.k8s.io/v1" and body["kind"] == "AdmissionReview"
    out = body["response"]
    assert out["uid"] == "0df28fbd-5f5f-11e8-b0f0-080027d6a4f1" and out["allowed"] is True
    ops = json.loads(base64.b64decode(out["patch"]))
    assert any(op["path"].startswith("/metadata/annotations") for op in ops)


def test_unannotated_pod_and_other_kinds_are_allowed_unchanged(client) -> None:
    for body in (review(pod(annotated=False)), review({"apiVersion": "v1", "kind": "ConfigMap"}, kind="ConfigMap")):
        out = post(client, body).get_json()["response"]
        assert out["allowed"] is True and "patch" not in out


def test_validate_endpoint_refuses_bad_pattern(client) -> None:
    bad = pod()
    bad["metadata"]["annotations"][C.ANN_PATTERN] = "|/bin/evil %p"
    out = post(client, review(bad), path="/validate").get_json()["response"]
    assert out["allowed"] is False and C.ANN_PATTERN in out["status"]["message"]


BAD_BODIES = [
    pytest.param(b"", "empty", id="empty"),
    pytest.param(b"{not json", "not valid JSON", id="invalid-json"),
    pytest.param(b"[1, 2, 3]", "", id="json-array"),
    pytest.param(b'"AdmissionReview"', "", id="json-string"),
    pytest.param(b"null", "", id="json-null"),
    pytest.param(json.dumps({**review(), "request": "x"}).encode(), "request", id="non-dict-request"),
    pytest.param(json.dumps({**review(), "request": {**review()["request"], "uid": None}}).encode(), "uid", id="missing-uid"),
    pytest.param(json.dumps({"apiVersion": "v1", "kind": "Pod"}).encode(), "", id="not-a-review"),
    pytest.param(b'{"apiVersion": NaN}', "NaN", id="nan"),
    pytest.param(b"\xff\xfe{}", "UTF-8", id="not-utf8"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, "", id="deeply-nested"),
]


@pytest.mark.parametrize(("raw", "fragment"), BAD_BODIES)
def test_bad_bodies_get_400_json_and_next_request_is_served(client, raw: bytes, fragment: str) -> None:
    resp = post(client, raw)
    assert resp.status_code == 400, resp.data[:200]
    assert resp.mimetype == "application/json"
    assert fragment in resp.get_json()["error"]
    assert_valid_review_served(client)


def test_wrong_content_type(client) -> None:
    resp = post(client, json.dumps(review()), content_type="text/plain")
    assert resp.status_code == 400 and "Content-Type" in resp.get_json()["error"]
    resp = client.post("/mutate", data=b"x=1", content_type="application/x-www-form-urlencoded")
    assert resp.status_code == 400
    assert_valid_review_served(client)


def test_huge_body_is_413(client) -> None:
    resp = post(client, b"{" + b" " * (LIMIT + 10) + b"}")
    assert resp.status_code == 413 and "limit" in resp.get_json()["error"]
    # also without a Content-Length (a chunked body): the stream is cut at the limit
    big = json.dumps(review()).encode() + b" " * (LIMIT + 1)
    resp = client.post("/mutate", input_stream=io.BytesIO(big), content_type="application/json",
                       headers={"Transfer-Encoding": "chunked"},
                       environ_overrides={"wsgi.input_terminated": True})  # as gunicorn sets it
    assert resp.status_code == 413
    assert_valid_review_served(client)


def test_methods_and_paths_answer_json(client) -> None:
    assert client.get("/mutate").status_code == 405
    assert client.get("/mutate").get_json()["error"]
    resp = client.get("/nope")
    assert resp.status_code == 404 and resp.get_json()["error"]


def test_health_and_readiness(tmp_path: Path) -> None:
    assert make_app(tmp_path, StaticReadiness(True)).test_client().get("/healthz").status_code == 200
    assert make_app(tmp_path, StaticReadiness(True)).test_client().get("/readyz").status_code == 200
    not_ready = make_app(tmp_path, StaticReadiness(False, reason="no certificate")).test_client().get("/readyz")
    assert not_ready.status_code == 503 and not_ready.get_json()["reason"] == "no certificate"
    assert make_app(tmp_path, None).test_client().get("/readyz").status_code == 503


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()) and (labels or head == name):
            return float(value)
    raise AssertionError(f"{name} {labels} not in metrics")


def test_metrics_count_outcomes_and_expose_cert_expiry(client) -> None:
    post(client, review())
    post(client, review(pod(annotated=False)))
    post(client, b"junk")
    bad = pod()
    bad["metadata"]["annotations"][C.ANN_PATTERN] = "/data/../etc/core"
    post(client, review(bad))
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.content_type.startswith("text/plain")
    text = resp.get_data(as_text=True)
    counts = {o: _metric(text, "coredump_webhook_requests_total", endpoint="mutate", outcome=o)
              for o in ("patched", "allowed", "bad_request", "denied", "error")}
    assert counts == {"patched": 1, "allowed": 1, "bad_request": 1, "denied": 1, "error": 0}
    assert _metric(text, "coredump_webhook_request_duration_seconds_count", endpoint="mutate") == 4
    assert _metric(text, "coredump_webhook_certificate_expiry_timestamp_seconds") == 1893456000.0


def test_two_apps_have_separate_metrics(tmp_path: Path) -> None:
    a = make_app(tmp_path, StaticReadiness(True)).test_client()
    b = make_app(tmp_path, StaticReadiness(True)).test_client()
    post(a, review())
    text_b = b.get("/metrics").get_data(as_text=True)
    assert _metric(text_b, "coredump_webhook_requests_total", endpoint="mutate", outcome="patched") == 0


def test_one_structured_log_line_per_review(client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="webhook.server")
    out = post(client, review()).get_json()["response"]
    records = [r for r in caplog.records if getattr(r, "event", None) == "admission"]
    assert len(records) == 1
    r = records[0]
    assert (r.uid, r.kind, r.namespace, r.generateName, r.allowed, r.outcome) == (
        "0df28fbd-5f5f-11e8-b0f0-080027d6a4f1", "Pod", "team-a", "web-", True, "patched")
    assert r.objectName is None  # a Deployment's pod has only generateName
    assert r.patchOps == len(json.loads(base64.b64decode(out["patch"]))) > 0
    assert r.warnings == len(out.get("warnings", [])) and r.durationMs > 0
    from webhook.logs import JsonFormatter

    line = json.loads(JsonFormatter().format(r))
    assert line["uid"] == r.uid and line["message"] == "admission"


def test_internal_error_fails_open_without_500(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A broken admission configuration raises inside handle_review: logged, pod admitted."""
    client = make_app(tmp_path, StaticReadiness(True), admission=object()).test_client()
    resp = post(client, review())
    assert resp.status_code == 200
    out = resp.get_json()["response"]
    assert out["allowed"] is True and out["warnings"] == [INTERNAL_ERROR_WARNING]
    assert any(getattr(r, "event", None) == "admission.error" for r in caplog.records)
    # without a uid there is nothing to answer: 400, still JSON
    resp = post(client, {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": 5}})
    assert resp.status_code == 400 and resp.get_json()["error"]


def test_one_fail_open_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            caplog: pytest.LogCaptureFixture) -> None:
    """A fault before the mutation (broken settings) and one inside it (injected) fail open the
    same way: the same answer, one error record each, counted and logged as outcome "error"."""
    from webhook.admission import review as review_module

    caplog.set_level(logging.INFO)
    broken_settings = make_app(tmp_path, StaticReadiness(True), admission=object()).test_client()
    broken_mutation = make_app(tmp_path, StaticReadiness(True)).test_client()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("bug")

    answers = [post(broken_settings, review()).get_json()]
    monkeypatch.setattr(review_module, "mutate_pod", broken)
    answers.append(post(broken_mutation, review()).get_json())
    assert answers[0] == answers[1] == {
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "response": {"uid": review()["request"]["uid"], "allowed": True, "warnings": [INTERNAL_ERROR_WARNING]},
    }
    errors = [r for r in caplog.records if getattr(r, "event", None) == "admission.error"]
    assert len(errors) == 2 and all(r.exc_info and r.uid == review()["request"]["uid"] for r in errors)
    lines = [r for r in caplog.records if getattr(r, "event", None) == "admission"]
    assert [(r.outcome, r.allowed, r.patchOps, r.warnings) for r in lines] == [("error", True, 0, 1)] * 2
    for client in (broken_settings, broken_mutation):
        text = client.get("/metrics").get_data(as_text=True)
        assert _metric(text, "coredump_webhook_requests_total", endpoint="mutate", outcome="error") == 1
        assert _metric(text, "coredump_webhook_requests_total", endpoint="mutate", outcome="allowed") == 0


# --- hypothesis: no body gives a 500 ------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
annotation_values = st.one_of(st.text(max_size=140), st.sampled_from(
    ["/data/core-%e-%p", "core", "|/bin/sh", "/a/../b", "/d/%q", "/d/\x01", "/" + "x" * 130]))


@st.composite
def reviews(draw) -> dict[str, Any]:
    body = review(pod(), uid=draw(st.text(min_size=1, max_size=40)))
    req = body["request"]
    obj = req["object"]
    obj["metadata"]["annotations"] = draw(st.dictionaries(
        st.sampled_from([C.ANN_PATTERN, C.ANN_PATTERN_ECI, C.ANN_CONTAINERS, C.ANN_INIT_CONTAINERS,
                         C.ANN_VOLUME, C.ANN_COREDUMP_FILTER, C.ANN_MAX_SIZE, C.ANN_COMPRESS, C.ANN_STATUS]),
        annotation_values, max_size=5))
    if draw(st.booleans()):
        obj["spec"] = draw(json_values)
    if draw(st.booleans()):
        key = draw(st.sampled_from(["kind", "operation", "object", "namespace", "dryRun", "subResource"]))
        req[key] = draw(json_values)
    return body


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_random_bodies_never_500(client, raw: bytes) -> None:
    resp = post(client, raw)
    assert resp.status_code in (200, 400), resp.data[:300]
    assert isinstance(resp.get_json(), dict)


@hsettings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=reviews())
def test_random_reviews_never_500(client, body: dict[str, Any]) -> None:
    resp = post(client, body)
    assert resp.status_code in (200, 400), resp.data[:300]
    out = resp.get_json()
    if resp.status_code == 200:
        assert out["response"]["uid"] == body["request"]["uid"]
        assert isinstance(out["response"]["allowed"], bool)
    else:
        assert out["error"]

