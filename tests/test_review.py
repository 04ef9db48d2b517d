"""AdmissionReview handling, the seed scenarios' golden patches, settings and ``coredump review``.

Golden files: tests/golden/admission/<scenario>.json hold the answer (allowed, message, warnings,
patch) for each demo scenario. Regenerate them with ``UPDATE_GOLDEN=1`` and read the diff.
"""

from __future__ import annotations

import base64
import copy
import json
import os
from pathlib import Path
from typing import Any

import click
import pytest
from admission_support import (
    REPO,
    SCENARIO_IMAGES,
    SCENARIOS,
    TableResolver,
    check_pod_invariants,
    container,
    load_scenarios,
    make_pod,
    validate,
)
from click.testing import CliRunner
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from webhook import constants as C
from webhook.admission import review as review_module
from webhook.admission.commands import review as review_command
from webhook.admission.patch import apply
from webhook.admission.review import REFUSAL_CODE, ReviewError, decoded_patch, handle_review
from webhook.admission.settings import AdmissionSettings
from webhook.admission.summary import summarize

GOLDEN = Path(__file__).resolve().parent / "golden" / "admission"
SETTINGS = AdmissionSettings()


def review_of(obj: Any, *, kind: str = "Pod", group: str = "", operation: str = "CREATE", namespace: str = "default", **extra: Any) -> dict[str, Any]:
    request = {
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": {"group": group, "version": "v1", "kind": kind},
        "resource": {"group": group, "version": "v1", "resource": kind.lower() + "s"},
        "namespace": namespace,
        "operation": operation,
        "userInfo": {"username": "admin"},
        "object": obj,
        "oldObject": None,
        "dryRun": False,
        **extra,
    }
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


# --- responses --------------------------------------------------------------------------------------


def test_pod_create_gets_base64_jsonpatch_and_echoes_uid() -> None:
    answer = handle_review(review_of(make_pod([container(command=["/a"])])), SETTINGS)
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == "705ab4f5-6393-11e8-b7cc-42010a800002"
    assert response["allowed"] is True and response["patchType"] == "JSONPatch"
    patch = json.loads(base64.b64decode(response["patch"]))
    assert patch == decoded_patch(answer) and patch
    json.dumps(answer)


def test_refusal_has_status_and_no_patch() -> None:
    response = handle_review(review_of(make_pod(pattern="|/bin/sh")), SETTINGS)["response"]
    assert response["allowed"] is False
    assert response["status"]["code"] == REFUSAL_CODE == 400
    assert response["status"]["message"].startswith(f"annotation {C.ANN_PATTERN}: ")
    assert "patch" not in response and "patchType" not in response


@pytest.mark.parametrize(
    "obj, kw",
    [
        (make_pod(pattern=None), {}),
        (make_pod(), {"operation": "UPDATE"}),
        (make_pod(), {"operation": "DELETE"}),
        (make_pod(), {"subResource": "ephemeralcontainers"}),
        (make_pod(), {"subResource": "status", "operation": "UPDATE"}),
        ({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "annotations": {C.ANN_PATTERN: "|x"}}}, {"kind": "ConfigMap"}),
        (make_pod(), {"kind": "Pod", "group": "example.com"}),
        (None, {"operation": "DELETE"}),
    ],
)
def test_objects_and_operations_left_alone(obj: Any, kw: dict[str, Any]) -> None:
    response = handle_review(review_of(obj, **kw), SETTINGS)["response"]
    assert response == {"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": True}


def test_dry_run_gets_the_same_answer() -> None:
    pod = make_pod([container(command=["/a"])])
    wet = handle_review(review_of(pod), SETTINGS)
    dry = handle_review(review_of(pod, dryRun=True), SETTINGS)
    assert wet == dry


def test_namespace_comes_from_request_then_object() -> None:
    settings = AdmissionSettings(no_capability_namespaces=("locked",))
    pod = make_pod([container(command=["/a"])], namespace="locked")
    in_request = decoded_patch(handle_review(review_of(pod, namespace="locked"), settings))
    from_object = decoded_patch(handle_review(review_of(pod, namespace=""), settings))
    for patch in (in_request, from_object):
        assert not any("securityContext" in op["path"] for op in patch)
    elsewhere = decoded_patch(handle_review(review_of(pod, namespace="open"), settings))
    assert any("securityContext" in op["path"] for op in elsewhere)


def test_resolver_is_passed_through() -> None:
    resolver = TableResolver({"registry.example.com/app:1": SCENARIO_IMAGES["registry.cn-hangzhou.aliyuncs.com/acs-sample/nginx:latest"]})
    answer = handle_review(review_of(make_pod([container()]), namespace="shop"), SETTINGS, resolve_image=resolver)
    assert resolver.calls and resolver.calls[0][1]["namespace"] == "shop" and resolver.calls[0][1]["deadline"] > 0
    assert any(op["path"] == "/spec/containers/0/command" for op in decoded_patch(answer))


def test_raw_json_bodies_are_accepted() -> None:
    body = review_of(make_pod([container(command=["/a"])]))
    assert handle_review(json.dumps(body).encode(), SETTINGS) == handle_review(body, SETTINGS)
    assert handle_review(json.dumps(body), SETTINGS) == handle_review(body, SETTINGS)


def _bad(mutator) -> dict[str, Any]:
    body = review_of(make_pod())
    mutator(body)
    return body


@pytest.mark.parametrize(
    "body, needle",
    [
        (None, "JSON object"),
        ([], "JSON object"),
        ("not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        ("[" * 100000, "not JSON"),
        (_bad(lambda b: b.update(apiVersion="admission.k8s.io/v1beta1")), "apiVersion"),
        (_bad(lambda b: b.update(kind="Pod")), "kind must be"),
        (_bad(lambda b: b.pop("request")), "request is missing"),
        (_bad(lambda b: b["request"].pop("uid")), "uid"),
        (_bad(lambda b: b["request"].update(uid=7)), "uid"),
        (_bad(lambda b: b["request"].update(uid="")), "uid"),
        (_bad(lambda b: b["request"].pop("kind")), "request.kind"),
        (_bad(lambda b: b["request"].update(kind={"kind": 5})), "request.kind"),
        (_bad(lambda b: b["request"]["kind"].update(group=None)), "group"),
        (_bad(lambda b: b["request"].update(operation="PATCH")), "operation"),
        (_bad(lambda b: b["request"].update(namespace=["x"])), "namespace"),
        (_bad(lambda b: b["request"].update(dryRun="yes")), "dryRun"),
        (_bad(lambda b: b["request"].update(object="pod")), "request.object"),
        (_bad(lambda b: b["request"].pop("object")), "missing for CREATE"),
    ],
)
def test_invalid_reviews_raise_review_error(body: Any, needle: str) -> None:
    with pytest.raises(ReviewError, match=None) as info:
        handle_review(body, SETTINGS)
    assert needle in str(info.value)


def test_internal_error_fails_open_with_warning(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """No real input makes the mutation raise (see the fuzz tests), so a fault is injected here."""

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(review_module, "mutate_pod", broken)
    response = handle_review(review_of(make_pod()), SETTINGS)["response"]
    assert response["allowed"] is True and "patch" not in response
    assert response["warnings"] == [review_module.INTERNAL_ERROR_WARNING]
    assert any(r.message == "admission failed open" and r.exc_info for r in caplog.records)


# --- fuzzing: nothing but ReviewError, ever ---------------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)
_KINDS = st.sampled_from(
    [("", "Pod"), ("apps", "Deployment"), ("batch", "CronJob"), ("batch", "Job"), ("apps", "DaemonSet"), ("", "ConfigMap")]
)


@st.composite
def near_reviews(draw: st.DrawFn) -> Any:
    """AdmissionReviews that are valid at the top and random below, to reach the mutation."""
    group, kind = draw(_KINDS)
    annotations = draw(st.dictionaries(st.sampled_from([C.ANN_PATTERN, C.ANN_PATTERN_ECI, C.ANN_CONTAINERS, C.ANN_VOLUME, C.ANN_STATUS]), st.one_of(st.sampled_from(["/data/core-%p", "core", "|x", "true"]), _JSON)))
    metadata = draw(st.one_of(_JSON, st.just({"annotations": annotations})))
    spec = draw(st.one_of(_JSON, st.fixed_dictionaries({"containers": st.one_of(_JSON, st.lists(st.dictionaries(st.sampled_from(["name", "image", "command", "args", "env", "volumeMounts", "securityContext"]), _JSON), max_size=3))})))
    if kind == "Pod":
        obj = {"metadata": metadata, "spec": spec}
    elif kind == "CronJob":
        obj = {"metadata": draw(_JSON), "spec": {"jobTemplate": {"spec": {"template": {"metadata": metadata, "spec": spec}}}}}
    else:
        obj = {"metadata": draw(_JSON), "spec": draw(st.one_of(_JSON, st.just({"template": {"metadata": metadata, "spec": spec}})))}
    body = review_of(draw(st.one_of(st.just(obj), _JSON)), kind=kind, group=group, operation=draw(st.sampled_from(["CREATE", "UPDATE", "DELETE", "CONNECT", "X"])))
    if draw(st.booleans()):
        key = draw(st.sampled_from(["uid", "kind", "namespace", "dryRun", "subResource", "object"]))
        body["request"][key] = draw(_JSON)
    return body


def _answer_or_review_error(body: Any) -> None:
    try:
        answer = handle_review(body, SETTINGS, resolve_image=TableResolver())
    except ReviewError:
        return
    json.dumps(answer)
    response = answer["response"]
    assert response["uid"] == body["request"]["uid"]
    assert isinstance(response["allowed"], bool)
    if "patch" in response:
        assert isinstance(decoded_patch(answer), list)


@given(_JSON)
@hsettings(max_examples=300, deadline=None)
def test_random_json_never_raises_anything_but_review_error(body: Any) -> None:
    _answer_or_review_error(body)


@given(near_reviews())
@hsettings(max_examples=400, deadline=None)
def test_random_reviews_never_raise_anything_but_review_error(body: Any) -> None:
    _answer_or_review_error(body)
    # and nothing of it fails open: every valid review reached a real answer
    try:
        answer = handle_review(body, SETTINGS)
    except ReviewError:
        return
    assert review_module.INTERNAL_ERROR_WARNING not in answer["response"].get("warnings", [])


# --- the seed scenarios: golden patches, valid pods, idempotence ------------------------------------

SCENARIO_LIST = load_scenarios()


def test_scenarios_are_realistic_and_complete() -> None:
    names = [s["name"] for s in SCENARIO_LIST]
    assert len(names) == len(set(names)) >= 8
    for s in SCENARIO_LIST:
        assert s["description"] and s["review"]["request"]["uid"]
        validate(s["review"]["request"]["object"])
    assert json.loads(SCENARIOS.read_text()) == SCENARIO_LIST


@pytest.mark.parametrize("scenario", SCENARIO_LIST, ids=lambda s: s["name"])
def test_scenario_matches_golden(scenario: dict[str, Any]) -> None:
    body = scenario["review"]
    original = copy.deepcopy(body)
    answer = handle_review(body, SETTINGS, resolve_image=TableResolver(SCENARIO_IMAGES))
    assert body == original, "handle_review changed its input"
    response = answer["response"]
    got = {
        "allowed": response["allowed"],
        "message": (response.get("status") or {}).get("message", ""),
        "warnings": response.get("warnings", []),
        "patch": decoded_patch(answer),
    }
    path = GOLDEN / f"{scenario['name']}.json"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(got, indent=2) + "\n")
    assert path.exists(), f"missing golden file {path}: run with UPDATE_GOLDEN=1 and review it"
    assert got == json.loads(path.read_text())
    obj = body["request"]["object"]
    if got["patch"]:
        after = apply(obj, got["patch"])
        validate(after)
        check_pod_invariants(after)
        again = handle_review({**body, "request": {**body["request"], "object": after}}, SETTINGS)
        assert "patch" not in again["response"]
    text = summarize(obj, got["patch"], got["warnings"], allowed=got["allowed"], message=got["message"])
    assert text.splitlines()[0].startswith(obj["kind"])
    if not got["allowed"]:
        assert "REFUSED" in text


def test_scenario_expectations() -> None:
    """What each seed scenario is there to show, independent of the golden files."""
    by_name = {s["name"]: s for s in SCENARIO_LIST}
    def answer(name: str) -> dict[str, Any]:
        return handle_review(by_name[name]["review"], SETTINGS, resolve_image=TableResolver(SCENARIO_IMAGES))["response"]
    def after(name: str) -> dict[str, Any]:
        a = handle_review(by_name[name]["review"], SETTINGS, resolve_image=TableResolver(SCENARIO_IMAGES))
        return apply(by_name[name]["review"]["request"]["object"], decoded_patch(a))

    assert after("acs-pod-emptydir")["metadata"]["annotations"][C.ANN_CORE_VOLUME] == f"{C.CORE_VOLUME}@/data/dump-a"
    nas = after("acs-deployment-nas")
    assert nas["metadata"]["annotations"][C.ANN_CORE_VOLUME] == "nas-volume@/data"
    assert all(any(m["name"] == "nas-volume" for m in c["volumeMounts"]) for c in nas["spec"]["containers"])
    assert after("oss-pvc-at-pattern-dir")["spec"]["containers"][0]["command"] == [C.WRAPPER_PATH, "/docker-entrypoint.sh"]
    assert after("eci-nfs")["metadata"]["annotations"][C.ANN_CORE_VOLUME] == "default-volume1@/pod/data/dump"
    ledger = after("distroless-no-command")["spec"]["containers"][0]
    assert ledger["command"] == [C.WRAPPER_PATH, "/usr/local/bin/ledger"] and ledger["args"] == ["--listen=:8080", "--shards=4"]
    assert answer("hostile-pipe-pattern")["allowed"] is False
    assert answer("no-annotation") == {"uid": by_name["no-annotation"]["review"]["request"]["uid"], "allowed": True}
    assert answer("deployment-bad-pattern")["allowed"] is False
    valid = answer("deployment-valid")
    assert valid["allowed"] is True and "patch" not in valid and valid["warnings"]


# --- settings and the review command ----------------------------------------------------------------


def test_settings_validation_and_describe() -> None:
    for bad in (
        {"default_volume": "hostPath:/x"},
        {"image_pull_policy": "Sometimes"},
        {"empty_dir_size_limit": "lots"},
        {"no_capability_namespaces": ("Bad_NS",)},
        {"admission_budget_seconds": 0},
        {"image": "has space"},
    ):
        with pytest.raises(ValueError):
            AdmissionSettings(**bad)
    described = AdmissionSettings(no_capability_namespaces=("a",)).describe()
    assert described["no_capability_namespaces"] == ["a"] and described["add_capability"] is True
    json.dumps(described)


def test_options_have_env_vars_and_build_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from webhook.cli_options import settings_from, settings_params

    options = settings_params(AdmissionSettings)
    names = {o.name for o in options}
    assert {f.name for f in AdmissionSettings.__dataclass_fields__.values()} == names
    for option in options:
        assert option.envvar == "COREDUMP_WEBHOOK_" + str(option.name).upper() and option.help

    seen: dict[str, AdmissionSettings] = {}

    @click.command(params=options)
    def cmd(**params: Any) -> None:
        seen["settings"] = settings_from(AdmissionSettings, params)

    env = {
        "COREDUMP_WEBHOOK_ADD_CAPABILITY": "false",
        "COREDUMP_WEBHOOK_NO_CAPABILITY_NAMESPACES": "team-a, team-b",
        "COREDUMP_WEBHOOK_DEFAULT_VOLUME": "pvc:cores",
        "COREDUMP_WEBHOOK_ADMISSION_BUDGET_SECONDS": "1.5",
    }
    result = CliRunner().invoke(cmd, ["--empty-dir-size-limit", "4Gi"], env=env)
    assert result.exit_code == 0, result.output
    s = seen["settings"]
    assert (s.add_capability, s.no_capability_namespaces, s.default_volume, s.admission_budget_seconds,
            s.empty_dir_size_limit) == (False, ("team-a", "team-b"), "pvc:cores", 1.5, "4Gi")
    assert CliRunner().invoke(cmd, [], env={}).exit_code == 0 and seen["settings"] == AdmissionSettings()
    bad = CliRunner().invoke(cmd, ["--default-volume", "nfs:x"])
    assert bad.exit_code == 2 and "default_volume" in bad.output


def test_review_command_prints_decoded_patch_and_summary(tmp_path: Path) -> None:
    scenario = next(s for s in SCENARIO_LIST if s["name"] == "acs-deployment-nas")
    file = tmp_path / "review.json"
    file.write_text(json.dumps(scenario["review"]))
    result = CliRunner().invoke(review_command, [str(file)])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert isinstance(printed["response"]["patch"], list) and printed["response"]["patchType"] == "JSONPatch"
    result = CliRunner().invoke(review_command, ["--summary", "-"], input=json.dumps(scenario["review"]))
    assert result.exit_code == 0 and "nas-volume" in result.output and "log-agent" in result.output
    result = CliRunner().invoke(review_command, ["-"], input=json.dumps(scenario["review"]), env={"COREDUMP_WEBHOOK_ADD_CAPABILITY": "false"})
    assert "SYS_RESOURCE not added" in result.output
    result = CliRunner().invoke(review_command, ["-"], input="{}")
    assert result.exit_code == 1 and "not a valid AdmissionReview" in result.output
    result = CliRunner().invoke(review_command, [str(tmp_path / "missing.json")])
    assert result.exit_code == 1 and "cannot read" in result.output


@pytest.mark.parametrize(
    ("volume", "described"),
    [
        ({"nfs": {"server": "nas.example", "path": "/cores"}}, "NFS nas.example:/cores"),
        ({"persistentVolumeClaim": {"claimName": "cores-claim"}}, "PVC cores-claim"),
        ({"csi": {"driver": "nasplugin.csi.alibabacloud.com"}}, "CSI nasplugin.csi.alibabacloud.com"),
        ({"hostPath": {"path": "/var/cores"}}, "hostPath"),
        ({"emptyDir": {"sizeLimit": "2Gi"}}, "emptyDir, at most 2Gi"),
    ],
)
def test_summary_names_the_pods_own_core_volume(volume: dict[str, Any], described: str) -> None:
    """The volume a pod already mounts over the pattern's directory, described by its kind."""
    mounts = [{"name": "cores", "mountPath": "/data"}]
    pod = make_pod([container(command=["/app"], volumeMounts=mounts)], volumes=[{"name": "cores", **volume}])
    got = handle_review(review_of(pod), SETTINGS)["response"]
    lines = summarize(pod, decoded_patch({"response": got}), got.get("warnings", [])).splitlines()
    assert f"  cores go to: /data/dump-a, inside volume cores at /data ({described}, the pod's own)" in lines
    assert not any(line.startswith("    mount:  cores") for line in lines)  # it was already mounted


def test_summary_of_a_relative_pattern() -> None:
    pod = make_pod([container(command=["/app"])], pattern="core.%p")
    got = handle_review(review_of(pod), SETTINGS)["response"]
    lines = summarize(pod, decoded_patch({"response": got}), got.get("warnings", [])).splitlines()
    assert lines[1:3] == ["  pattern: core.%p",
                          "  cores go to: the process's working directory (relative pattern, no volume)"]
    assert [line for line in lines if line.startswith("    mount:")] == [f"    mount:  {C.WRAPPER_VOLUME} at {C.WRAPPER_DIR} read-only"]


def test_platform_is_the_registry_setting_only() -> None:
    """One platform setting: the registry's (--registry-platform / COREDUMP_REGISTRY_PLATFORM),
    read by `coredump serve` and `coredump review` alike; the admission settings have none."""
    from webhook.server.commands import serve

    assert "platform" not in AdmissionSettings.__dataclass_fields__
    for command in (serve, review_command):
        flags = {opt for p in command.params for opt in getattr(p, "opts", [])}
        envvars = {getattr(p, "envvar", None) for p in command.params}
        assert "--registry-platform" in flags and "--platform" not in flags, command.name
        assert "COREDUMP_REGISTRY_PLATFORM" in envvars and "COREDUMP_WEBHOOK_PLATFORM" not in envvars
    result = CliRunner().invoke(review_command, ["--platform", "linux/arm64", "-"], input="{}")
    assert result.exit_code == 2 and "No such option" in result.output


class _MultiPlatformRegistry:
    """A registry (distribution API v2 subset, plain HTTP on 127.0.0.1) holding one image as an
    OCI index with a linux/amd64 and a linux/arm64 manifest, each with its own ENTRYPOINT; every
    document is served under its content digest, as a registry does, and each request is logged."""

    def __init__(self) -> None:
        import hashlib
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        def digest(data: bytes) -> str:
            return "sha256:" + hashlib.sha256(data).hexdigest()

        self.docs: dict[str, tuple[str, bytes]] = {}  # reference -> (media type, body)
        entries = []
        for arch in ("amd64", "arm64"):
            config = json.dumps({"architecture": arch, "os": "linux",
                                 "config": {"Entrypoint": [f"/bin/{arch}-entry"], "Cmd": ["serve"]}}).encode()
            self.docs[digest(config)] = ("application/vnd.oci.image.config.v1+json", config)
            manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                                   "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                              "digest": digest(config), "size": len(config)},
                                   "layers": []}).encode()
            self.docs[digest(manifest)] = ("application/vnd.oci.image.manifest.v1+json", manifest)
            entries.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest(manifest),
                            "size": len(manifest), "platform": {"os": "linux", "architecture": arch}})
        index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                            "manifests": entries}).encode()
        self.docs["1.0"] = ("application/vnd.oci.image.index.v1+json", index)
        self.paths: list[str] = []
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                registry.paths.append(self.path)
                prefix = "/v2/team/multi/"
                found = None
                if self.path.startswith(prefix + "manifests/") or self.path.startswith(prefix + "blobs/"):
                    found = registry.docs.get(self.path.rsplit("/", 1)[1])
                media_type, body = found or ("application/json", b'{"errors": [{"code": "MANIFEST_UNKNOWN"}]}')
                self.send_response(200 if found else 404)
                self.send_header("Content-Type", media_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.image = f"127.0.0.1:{self.httpd.server_address[1]}/team/multi:1.0"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_review_resolve_uses_the_registry_options(tmp_path: Path) -> None:
    """`coredump review --resolve` builds its resolver from --registry-* / COREDUMP_REGISTRY_*:
    the platform picks the manifest whose ENTRYPOINT gets wrapped."""
    registry = _MultiPlatformRegistry()
    try:
        pod = make_pod([container(image=registry.image)])
        file = tmp_path / "review.json"
        file.write_text(json.dumps(review_of(pod)))

        # A registry on loopback over plain HTTP must be configured: nothing allows it by default.
        local = ["--registry-insecure", "127.0.0.1", "--registry-allow-network", "127.0.0.1/32"]

        def wrapped(args: list[str], env: dict[str, str] | None = None) -> list[str]:
            result = CliRunner().invoke(review_command, [*args, *local, str(file)], env=env)
            assert result.exit_code == 0, result.output
            after = apply(pod, json.loads(result.output)["response"]["patch"])
            return after["spec"]["containers"][0]["command"]

        assert wrapped(["--resolve"]) == [C.WRAPPER_PATH, "/bin/amd64-entry"]  # the default platform
        assert wrapped(["--resolve", "--registry-platform", "linux/arm64"]) == [C.WRAPPER_PATH, "/bin/arm64-entry"]
        assert wrapped(["--resolve"], env={"COREDUMP_REGISTRY_PLATFORM": "linux/arm64"}) == [
            C.WRAPPER_PATH, "/bin/arm64-entry"]
        assert any("/manifests/1.0" in p for p in registry.paths)
        # Without --resolve no registry is contacted and the container keeps its (empty) command.
        registry.paths.clear()
        result = CliRunner().invoke(review_command, ["--registry-platform", "linux/arm64", str(file)])
        assert result.exit_code == 0 and registry.paths == []
        # A bad platform is a usage error, before any request.
        bad = CliRunner().invoke(review_command, ["--resolve", "--registry-platform", "arm64", str(file)])
        assert bad.exit_code == 2 and "platform" in bad.output and registry.paths == []
    finally:
        registry.close()


def test_review_command_is_registered_in_the_cli() -> None:
    from webhook.cli import main

    result = CliRunner().invoke(main, ["review", "--help"])
    assert result.exit_code == 0 and "COREDUMP_WEBHOOK_DEFAULT_VOLUME" in result.output
    assert REPO.joinpath("webhook/demo/scenarios.json").exists()
