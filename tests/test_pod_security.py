"""Pod Security Admission runs after the mutation: a mutated pod never fails a level its original passed.

The checker (tests/pod_security.py) implements baseline and restricted (v1.31); it runs on every
mutated pod of the golden scenarios and on generated pods, in namespaces of every level and
while the namespace watch is not ready yet. The namespace watch itself runs against recorded
API responses over a real socket with a real kubernetes ApiClient.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from admission_support import SCENARIO_IMAGES, TableResolver, container, load_scenarios, make_pod, mutate, mutate_apply
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tests import pod_security as pss
from tests.kube_apiserver import FakeApiServer, Recorded
from tests.process_support import wait_for
from webhook import constants as C
from webhook.admission.mutate import mutate_pod
from webhook.admission.namespaces import NamespaceLevels, NamespaceWatcher
from webhook.admission.patch import apply
from webhook.admission.podsecurity import ANN_ADD_CAPABILITY, level_of
from webhook.admission.review import decoded_patch, handle_review
from webhook.admission.settings import AdmissionSettings
from webhook.admission.workloads import is_workload, pod_template, synthetic_pod

RECORDED = Path(__file__).resolve().parent / "recorded" / "admission"
LEVELS = ("privileged", "baseline", "restricted")
RESTRICTED_SC = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
                 "seccompProfile": {"type": "RuntimeDefault"}}


def _levels(level: str):
    return lambda namespace: level


# --- the checker itself ----------------------------------------------------------------------------


def test_checker_knows_the_levels() -> None:
    plain = make_pod([container(command=["/a"])])
    assert pss.baseline(plain) == [] and pss.restricted(plain) != []
    tight = make_pod([container(command=["/a"], securityContext=RESTRICTED_SC)])
    assert pss.restricted(tight) == []
    assert any("SYS_RESOURCE" in v for v in pss.baseline(make_pod([container(securityContext={"capabilities": {"add": ["SYS_RESOURCE"]}})])))
    assert pss.baseline(make_pod([container(securityContext={"capabilities": {"add": ["CAP_CHOWN"]}})])) == []
    assert any("restricted" in v for v in pss.restricted(make_pod([container(
        securityContext={**RESTRICTED_SC, "capabilities": {"drop": ["ALL"], "add": ["CHOWN"]}})])))
    assert pss.baseline(make_pod(hostPID=True)) == ["hostPID"]
    assert any("nfs" in v for v in pss.restricted(make_pod(
        [container(securityContext=RESTRICTED_SC)], volumes=[{"name": "n", "nfs": {"server": "s", "path": "/p"}}])))
    assert pss.baseline(make_pod([container(securityContext={"privileged": True})])) == ["containers[app] privileged"]


# --- the golden scenarios ----------------------------------------------------------------------------


def _scenario_pods() -> list[tuple[str, dict[str, Any], str]]:
    """(name, pod as admitted, namespace) of every scenario: pods, and workloads' templates."""
    out = []
    for s in load_scenarios():
        req = s["review"]["request"]
        obj, kind = req["object"], req["kind"]
        if kind["kind"] == "Pod":
            out.append((s["name"], obj, req["namespace"]))
        elif is_workload(kind.get("group", ""), kind["kind"]):
            out.append((s["name"], synthetic_pod(pod_template(obj, kind["kind"]), req["namespace"]), req["namespace"]))
    return out


def _tightened(pod: dict[str, Any]) -> dict[str, Any]:
    """The same pod written to pass restricted (what a team in a restricted namespace does)."""
    pod = copy.deepcopy(pod)
    for f in ("initContainers", "containers"):
        for c in pod["spec"].get(f) or []:
            c["securityContext"] = {**(c.get("securityContext") or {}), **RESTRICTED_SC}
            c["securityContext"].pop("runAsUser", None) if c["securityContext"].get("runAsUser") == 0 else None
    pod["spec"]["volumes"] = [v for v in pod["spec"].get("volumes") or [] if "nfs" not in v and "hostPath" not in v]
    kept = {v["name"] for v in pod["spec"]["volumes"]}
    for f in ("initContainers", "containers"):
        for c in pod["spec"].get(f) or []:
            if c.get("volumeMounts"):
                c["volumeMounts"] = [m for m in c["volumeMounts"] if m["name"] in kept]
    return pod


def _check(pod: dict[str, Any], namespace: str, settings: AdmissionSettings, level: str, *, seen: dict) -> None:
    result = mutate_pod(pod, settings, namespace=namespace, resolve_image=TableResolver(SCENARIO_IMAGES),
                        namespace_level=level)
    if not result.allowed:
        return
    after = apply(pod, result.patch)
    for check in _enforced(level):
        if not pss.violations(pod, check):
            seen[check] = seen.get(check, 0) + 1
            assert pss.violations(after, check) == [], f"mutation broke {check} in a {level} namespace"
        # even a pod that already fails gets nothing more that the level refuses
        added = [v for v in pss.violations(after, check) if v not in pss.violations(pod, check)]
        assert added == [], added


def _enforced(level: str) -> tuple[str, ...]:
    """The levels a namespace enforcing ``level`` holds pods to (restricted includes baseline)."""
    return {"privileged": (), "baseline": ("baseline",), "restricted": ("baseline", "restricted")}[level]


@pytest.mark.parametrize("level", ["baseline", "restricted"])
def test_scenarios_never_lose_their_pod_security_level(level: str) -> None:
    seen: dict[str, int] = {}
    for _name, pod, namespace in _scenario_pods():
        for candidate in (pod, _tightened(pod)):
            _check(candidate, namespace, AdmissionSettings(), level, seen=seen)
    # the property is not vacuous: pods passing the level were checked
    assert seen.get(level, 0) >= 6, seen


def test_scenarios_while_the_namespace_watch_is_not_ready() -> None:
    """Not ready counts as restricted: nothing either level refuses is added, wherever the pod is."""
    levels = NamespaceLevels()  # never listed
    for s in load_scenarios():
        req = s["review"]["request"]
        if req["kind"]["kind"] != "Pod":
            continue
        for obj in (req["object"], _tightened(req["object"])):
            answer = handle_review({**s["review"], "request": {**req, "object": obj}}, AdmissionSettings(),
                                   resolve_image=TableResolver(SCENARIO_IMAGES), namespace_levels=levels)
            after = apply(obj, decoded_patch(answer))
            for check in ("baseline", "restricted"):
                assert [v for v in pss.violations(after, check) if v not in pss.violations(obj, check)] == []


def test_scenario_reviews_through_the_namespace_levels() -> None:
    """The same, through handle_review with a namespace-level look-up (as the server runs it)."""
    for s in load_scenarios():
        req = s["review"]["request"]
        if req["kind"]["kind"] != "Pod":
            continue
        for level in ("baseline", "restricted"):
            answer = handle_review(s["review"], AdmissionSettings(), resolve_image=TableResolver(SCENARIO_IMAGES),
                                   namespace_levels=_levels(level))
            after = apply(req["object"], decoded_patch(answer))
            if not pss.baseline(req["object"]):
                assert pss.baseline(after) == [], s["name"]


# --- generated pods -----------------------------------------------------------------------------------

_user = st.sampled_from([None, 0, 1000])
_non_root = st.sampled_from([None, True, False])
_seccomp = st.sampled_from([None, {"type": "RuntimeDefault"}, {"type": "Unconfined"}])


@st.composite
def _security_context(draw) -> dict[str, Any] | None:
    if draw(st.booleans()):
        return None
    sc: dict[str, Any] = {}
    for key, strat in (("runAsUser", _user), ("runAsNonRoot", _non_root), ("seccompProfile", _seccomp),
                       ("allowPrivilegeEscalation", st.sampled_from([None, False, True])),
                       ("privileged", st.sampled_from([None, None, False, True]))):
        value = draw(strat)
        if value is not None:
            sc[key] = value
    caps: dict[str, Any] = {}
    drop = draw(st.sampled_from([None, ["ALL"], ["NET_RAW"]]))
    add = draw(st.sampled_from([None, ["NET_BIND_SERVICE"], ["CHOWN"], ["SYS_ADMIN"], ["SYS_RESOURCE"]]))
    if drop:
        caps["drop"] = drop
    if add:
        caps["add"] = add
    if caps:
        sc["capabilities"] = caps
    return sc


@st.composite
def _pods(draw) -> dict[str, Any]:
    containers = []
    for i in range(draw(st.integers(1, 3))):
        c = container(f"c{i}", command=draw(st.sampled_from([["/app"], None])))
        if c["command"] is None:
            del c["command"]
        sc = draw(_security_context())
        if sc is not None:
            c["securityContext"] = sc
        containers.append(c)
    spec: dict[str, Any] = {}
    psc: dict[str, Any] = {}
    for key, strat in (("runAsUser", _user), ("runAsNonRoot", _non_root), ("seccompProfile", _seccomp)):
        value = draw(strat)
        if value is not None:
            psc[key] = value
    if psc:
        spec["securityContext"] = psc
    if draw(st.booleans()):
        spec["hostUsers"] = draw(st.booleans())
    volume = draw(st.sampled_from([None, "emptyDir", "pvc"]))
    if volume:
        source = {"emptyDir": {}} if volume == "emptyDir" else {"persistentVolumeClaim": {"claimName": "cores"}}
        spec["volumes"] = [{"name": "data", **source}]
        for c in containers:
            c["volumeMounts"] = [{"name": "data", "mountPath": draw(st.sampled_from(["/data", "/data/dump-a", "/other"]))}]
    annotations = {}
    if draw(st.booleans()):  # an init container, prepared too
        init = container("init", command=["/init"])
        sc = draw(_security_context())
        if sc is not None:
            init["securityContext"] = sc
        spec["initContainers"] = [init]
        annotations[C.ANN_INIT_CONTAINERS] = "true"
    pattern = draw(st.sampled_from(["/data/dump-a/core-%e-%p", "/data/./dump-a/core", "core.%p"]))
    return make_pod(containers, annotations, pattern=pattern, **spec)


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pod=_pods(), level=st.sampled_from(LEVELS), default_volume=st.sampled_from(["emptyDir", "nfs:nas.local:/cores", "pvc:cores"]))
def test_generated_pods_never_lose_their_pod_security_level(pod: dict[str, Any], level: str, default_volume: str) -> None:
    settings = AdmissionSettings(default_volume=default_volume)
    result = mutate(pod, settings, namespace_level=level, resolve_image=TableResolver({"registry.example.com/app:1": _image()}))
    assert result.allowed, result.message
    after = apply(pod, result.patch)
    for check in _enforced(level):
        if not pss.violations(pod, check):
            assert pss.violations(after, check) == [], (check, level)
        assert [v for v in pss.violations(after, check) if v not in pss.violations(pod, check)] == []


def _image():
    from admission_support import Image

    return Image(["/entry"], ["--serve"])


# --- the capability decision ----------------------------------------------------------------------------


def _caps(pod: dict[str, Any], **kw: Any) -> tuple[list[list[str] | None], list[str]]:
    after, result = mutate_apply(pod, **kw)
    return ([((c.get("securityContext") or {}).get("capabilities") or {}).get("add") for c in after["spec"]["containers"]],
            result.warnings)


def test_capability_only_where_it_can_help() -> None:
    root = container("root", command=["/a"])
    assert _caps(make_pod([root]))[0] == [["SYS_RESOURCE"]]
    # non-root at container or pod level: an added capability is lost at execve; no warning either
    for pod in (make_pod([container(command=["/a"], securityContext={"runAsUser": 1000})]),
                make_pod([container(command=["/a"], securityContext={"runAsNonRoot": True})]),
                make_pod([container(command=["/a"])], securityContext={"runAsUser": 1000}),
                make_pod([container(command=["/a"])], securityContext={"runAsNonRoot": True}),
                make_pod([container(command=["/a"])], hostUsers=False)):
        caps, warnings = _caps(pod)
        assert caps == [None] and not any("SYS_RESOURCE" in w for w in warnings), pod
    # the container's runAsUser: 0 wins over the pod's non-root user
    assert _caps(make_pod([container(command=["/a"], securityContext={"runAsUser": 0})], securityContext={"runAsUser": 1000}))[0] == [["SYS_RESOURCE"]]


@pytest.mark.parametrize("level", ["baseline", "restricted"])
def test_enforcing_namespace_gets_no_capability_and_one_short_warning(level: str) -> None:
    pod = make_pod([container("a", command=["/a"]), container("b", command=["/b"])], namespace="shop")
    caps, warnings = _caps(pod, namespace_level=level)
    assert caps == [None, None]
    said = [w for w in warnings if "SYS_RESOURCE" in w]
    assert said == [f"SYS_RESOURCE not added (namespace shop enforces Pod Security {level}): cores are still kept in full"]


def test_the_annotation_asks_or_declines_explicitly() -> None:
    asked = make_pod([container(command=["/a"])], {ANN_ADD_CAPABILITY: "true"})
    assert _caps(asked, namespace_level="baseline")[0] == [["SYS_RESOURCE"]]
    declined = make_pod([container(command=["/a"])], {ANN_ADD_CAPABILITY: "false"})
    assert _caps(declined, namespace_level="privileged")[0] == [None]
    # asking cannot make it useful for a non-root container
    asked_nonroot = make_pod([container(command=["/a"], securityContext={"runAsNonRoot": True})], {ANN_ADD_CAPABILITY: "true"})
    assert _caps(asked_nonroot)[0] == [None]


def test_nfs_default_volume_becomes_an_emptydir_where_restricted() -> None:
    settings = AdmissionSettings(default_volume="nfs:nas.local:/cores")
    after, result = mutate_apply(make_pod([container(command=["/a"], securityContext=RESTRICTED_SC)]), settings,
                                 namespace_level="restricted")
    core = [v for v in after["spec"]["volumes"] if v["name"] == C.CORE_VOLUME][0]
    assert "emptyDir" in core and any("nfs volume not allowed" in w for w in result.warnings)
    assert pss.restricted(after) == []
    after, _ = mutate_apply(make_pod([container(command=["/a"])]), settings, namespace_level="baseline")
    assert "nfs" in [v for v in after["spec"]["volumes"] if v["name"] == C.CORE_VOLUME][0]


def test_workload_check_gives_the_same_warning() -> None:
    from tests.admission_support import review, template, workload

    obj = workload("Deployment", template({C.ANN_PATTERN: "/data/core.%p"}, [container("web", command=["/web"])]))
    answer = handle_review(review(obj, "Deployment"), AdmissionSettings(), namespace_levels=_levels("baseline"))
    assert answer["response"]["allowed"]
    assert "SYS_RESOURCE not added (namespace shop enforces Pod Security baseline): cores are still kept in full" in answer["response"]["warnings"]


# --- the namespace watch -------------------------------------------------------------------------------


def test_levels_from_labels() -> None:
    assert level_of({}) == "privileged" and level_of(None, "baseline") == "baseline"
    assert level_of({"pod-security.kubernetes.io/enforce": "baseline"}) == "baseline"
    assert level_of({"pod-security.kubernetes.io/enforce": "basline"}) == "restricted"  # unreadable: assume the worst


def test_levels_before_the_first_list_are_restricted() -> None:
    levels = NamespaceLevels()
    assert levels("default") == "restricted"
    levels.replace(json.loads((RECORDED / "namespacelist.json").read_text())["items"])
    assert [levels(n) for n in ("default", "shop", "payments", "legacy", "typo", "never-seen")] == [
        "privileged", "baseline", "restricted", "privileged", "restricted", "restricted"]


class _File(Recorded):
    def bytes(self) -> bytes:
        return (RECORDED / self.body).read_bytes()


def test_namespace_watch_against_a_real_socket() -> None:
    with FakeApiServer() as api:
        api.route("GET", "/api/v1/namespaces",
                  _File(200, "namespacelist.json"),
                  _File(200, "watch-namespaces.ndjson"),
                  Recorded(410, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                 "message": "too old resource version", "reason": "Expired", "code": 410}),
                  _File(200, "namespacelist.json"))
        levels = NamespaceLevels()
        watcher = NamespaceWatcher(api.api(), levels, backoff_start=0.05, backoff_max=0.1)
        assert levels("shop") == "restricted"  # not listed yet: restricted, without waiting
        watcher.start()
        try:
            wait_for(lambda: len(api.requests) >= 4, 15)
        finally:
            watcher.stop()
        reqs = [r for r in api.requests if r["path"] == "/api/v1/namespaces"]
    assert [("watch" in r["query"], r["query"].get("resourceVersion", [""])[0]) for r in reqs[:4]] == [
        (False, ""), (True, "481400"), (True, "481500"), (False, "")]
    assert reqs[1]["query"]["allowWatchBookmarks"] == ["true"]
    assert levels("shop") == "baseline" and levels("default") == "privileged"


def test_namespace_watch_events_apply() -> None:
    levels = NamespaceLevels()
    levels.replace(json.loads((RECORDED / "namespacelist.json").read_text())["items"])
    for line in (RECORDED / "watch-namespaces.ndjson").read_text().splitlines():
        event = json.loads(line)
        if event["type"] != "BOOKMARK":
            levels.apply(event["type"], event["object"])
    assert levels("batch") == "privileged" and levels("legacy") == "baseline" and levels("payments") == "restricted"


def test_server_without_api_access_treats_every_namespace_as_restricted(tmp_path, monkeypatch) -> None:
    from webhook.server.app import _namespace_levels
    from webhook.server.settings import ServerSettings

    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    lookup = _namespace_levels(ServerSettings(cert_dir=tmp_path, admission=AdmissionSettings()))
    assert lookup("default") == "restricted"
