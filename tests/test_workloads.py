"""Workloads: the pod template is judged like the pod it makes; the workload is never patched."""

from __future__ import annotations

import pytest
from admission_support import PATTERN, Image, TableResolver, container, make_pod, mutate, validate

from tests.admission_support import review, template, workload
from webhook import constants as C
from webhook.admission.review import handle_review
from webhook.admission.settings import AdmissionSettings
from webhook.admission.workloads import WORKLOAD_KINDS, is_workload, misplaced_annotation, pod_template, synthetic_pod

SETTINGS = AdmissionSettings()


@pytest.mark.parametrize("operation", ["CREATE", "UPDATE"])
@pytest.mark.parametrize("kind", sorted(WORKLOAD_KINDS))
def test_bad_pattern_in_template_is_refused_with_the_pods_message(kind: str, operation: str) -> None:
    obj = workload(kind, template({C.ANN_PATTERN: "/data/../etc/core"}))
    validate(obj)
    response = handle_review(review(obj, kind, operation), SETTINGS)["response"]
    pod_message = mutate(make_pod(pattern="/data/../etc/core")).message
    assert response["allowed"] is False
    assert response["status"]["message"] == pod_message
    assert "patch" not in response


@pytest.mark.parametrize("kind", sorted(WORKLOAD_KINDS))
def test_valid_template_gets_the_pods_warnings_and_no_patch(kind: str) -> None:
    containers = [container("web"), container("priv", command=["/p"], securityContext={"privileged": True})]
    obj = workload(kind, template({C.ANN_PATTERN: "core.%p"}, containers))
    validate(obj)
    response = handle_review(review(obj, kind), SETTINGS)["response"]
    pod = make_pod(containers, pattern="core.%p", namespace="shop")
    expected = mutate(pod).warnings
    assert response["allowed"] is True and "patch" not in response and "patchType" not in response
    assert response["warnings"] == expected
    assert any("relative" in w for w in expected) and any("privileged" in w for w in expected)


def test_template_without_pattern_is_silent_and_delete_is_ignored() -> None:
    obj = workload("Deployment", template())
    assert handle_review(review(obj, "Deployment"), SETTINGS)["response"] == {
        "uid": "b1f0c3d2-0000-4000-8000-00000000beef", "allowed": True,
    }
    bad = workload("Deployment", template({C.ANN_PATTERN: "|x"}))
    assert handle_review(review(bad, "Deployment", "DELETE"), SETTINGS)["response"]["allowed"] is True


def test_other_groups_and_kinds_are_not_checked() -> None:
    bad = workload("Deployment", template({C.ANN_PATTERN: "|x"}))
    assert handle_review(review(bad, "Deployment", group="example.com"), SETTINGS)["response"]["allowed"] is True
    assert handle_review(review(bad, "PodTemplate", group=""), SETTINGS)["response"]["allowed"] is True
    assert is_workload("apps", "Deployment") and not is_workload("batch", "Deployment") and not is_workload("apps", "Job")


def test_per_pod_validation_applies_to_templates() -> None:
    for ann, needle in (
        ({C.ANN_PATTERN: PATTERN, C.ANN_CONTAINERS: "nope"}, "no container named 'nope'"),
        ({C.ANN_PATTERN: PATTERN, C.ANN_VOLUME: "hostPath:/"}, C.ANN_VOLUME),
        ({C.ANN_PATTERN: PATTERN, C.ANN_MAX_SIZE: "big"}, C.ANN_MAX_SIZE),
    ):
        response = handle_review(review(workload("StatefulSet", template(ann)), "StatefulSet"), SETTINGS)["response"]
        assert response["allowed"] is False and needle in response["status"]["message"]


def test_annotation_on_the_workload_itself_is_pointed_out() -> None:
    obj = workload("Deployment", template(), annotations={C.ANN_PATTERN: PATTERN})
    response = handle_review(review(obj, "Deployment"), SETTINGS)["response"]
    assert response["allowed"] is True
    assert response["warnings"] == [f"{C.ANN_PATTERN} on the Deployment itself has no effect: set it in spec.template.metadata.annotations"]
    cron = workload("CronJob", template(), annotations={C.ANN_PATTERN_ECI: PATTERN})
    assert "spec.jobTemplate.spec.template" in handle_review(review(cron, "CronJob"), SETTINGS)["response"]["warnings"][0]
    both = workload("Deployment", template({C.ANN_PATTERN: PATTERN}), annotations={C.ANN_PATTERN: PATTERN})
    assert misplaced_annotation(both, pod_template(both, "Deployment"), "Deployment") is None


def test_resolver_is_used_for_templates_in_the_request_namespace() -> None:
    """Resolving at apply time warns early and warms the resolver's cache for the pods."""
    resolver = TableResolver({"registry.example.com/app:1": Image(["/e"], [])})
    obj = workload("DaemonSet", template({C.ANN_PATTERN: PATTERN}, [container("web")]))
    response = handle_review(review(obj, "DaemonSet"), SETTINGS, resolve_image=resolver)["response"]
    assert resolver.calls[0][0] == "registry.example.com/app:1" and resolver.calls[0][1]["namespace"] == "shop"
    assert not any("ENTRYPOINT" in w for w in response.get("warnings", []))


def test_malformed_workloads_are_allowed() -> None:
    for obj in ({"spec": None}, {"spec": {"template": "x"}}, {"spec": {"jobTemplate": []}}, {}):
        for kind in ("Deployment", "CronJob"):
            assert handle_review(review(obj, kind), SETTINGS)["response"]["allowed"] is True


def test_synthetic_pod_shares_and_does_not_change_the_template() -> None:
    tmpl = template({C.ANN_PATTERN: PATTERN})
    pod = synthetic_pod(tmpl, "shop")
    assert pod["metadata"]["namespace"] == "shop" and "namespace" not in tmpl["metadata"]
    assert pod["spec"] is tmpl["spec"]
    validate(pod | {"metadata": {**pod["metadata"], "name": "x"}})
    assert pod_template(workload("CronJob", template()), "CronJob")["metadata"]["labels"] == {"app": "web"}
    assert pod_template({"spec": {"template": {}}}, "Unknown") is None
