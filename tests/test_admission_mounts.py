"""A core must have somewhere to go: read-only mounts, non-normal patterns, reserved paths (issue 12, 3)."""

from __future__ import annotations

import json

import pytest
from admission_support import container, make_pod, mutate_apply, validate
from click.testing import CliRunner

from tests.admission_support import review, template, workload
from tests.kube_apiserver import RECORDED, FakeApiServer, Recorded
from webhook import constants as C
from webhook.admission.review import handle_review
from webhook.admission.settings import AdmissionSettings
from webhook.cli import main

PVC = {"name": "cores", "persistentVolumeClaim": {"claimName": "cores"}}


@pytest.mark.parametrize("mount_path", ["/data", "/data/dump-a", "/data/dump-a/"])
def test_read_only_mount_holding_the_directory_refuses_the_workload(mount_path: str) -> None:
    c = container("web", command=["/web"], volumeMounts=[{"name": "cores", "mountPath": mount_path, "readOnly": True}])
    tmpl = template({C.ANN_PATTERN: "/data/dump-a/core.%p"}, [c])
    tmpl["spec"]["volumes"] = [PVC]
    for kind in ("Deployment", "ReplicationController", "PodTemplate", "CronJob"):
        obj = workload(kind, json.loads(json.dumps(tmpl)))
        validate(obj)
        response = handle_review(review(obj, kind), AdmissionSettings())["response"]
        assert response["allowed"] is False, kind
        message = response["status"]["message"]
        assert "read-only" in message and "Drop readOnly" in message and "cores" in message


def test_read_only_mount_on_a_bare_pod_is_admitted_with_the_reason_recorded() -> None:
    c = container("web", command=["/web"], volumeMounts=[{"name": "cores", "mountPath": "/data", "readOnly": True}])
    after, result = mutate_apply(make_pod([c], pattern="/data/dump-a/core.%p", volumes=[PVC]))
    assert any("read-only at /data: no core can be written" in w for w in result.warnings)
    assert after["metadata"]["annotations"][C.ANN_UNWRITABLE] == "container web: volume cores is read-only at /data"
    # a writable mount elsewhere, or read-only below the directory, is no reason
    ok = container("web", command=["/web"], volumeMounts=[{"name": "cores", "mountPath": "/data"},
                                                           {"name": "cfg", "mountPath": "/data/dump-a/cfg", "readOnly": True}])
    after, result = mutate_apply(make_pod([ok], pattern="/data/dump-a/core.%p",
                                          volumes=[PVC, {"name": "cfg", "configMap": {"name": "c"}}]))
    assert C.ANN_UNWRITABLE not in after["metadata"]["annotations"]
    assert not any("read-only" in w for w in result.warnings)


def test_every_read_only_container_is_named_in_the_recorded_reason() -> None:
    """One reason per container: the agent reads the crashed container's (podvolumes.unwritable_for)."""
    a = container("web", command=["/web"], volumeMounts=[{"name": "cores", "mountPath": "/data", "readOnly": True}])
    b = container("side", command=["/side"], volumeMounts=[{"name": "cores", "mountPath": "/data/dump-a",
                                                             "readOnly": True}])
    after, _ = mutate_apply(make_pod([a, b], pattern="/data/dump-a/core.%p", volumes=[PVC]))
    assert after["metadata"]["annotations"][C.ANN_UNWRITABLE] == (
        "container web: volume cores is read-only at /data; container side: volume cores is read-only at /data/dump-a")


@pytest.mark.parametrize("pattern", ["/data/./dump-a/core-%p", "/data//dump-a/core-%p", "/data/dump-a/./core-%p"])
def test_non_normal_pattern_finds_the_users_volume(pattern: str) -> None:
    """/data/./dump-a is /data/dump-a: the PVC there gets the cores, no emptyDir shadows it."""
    c = container("web", command=["/web"], volumeMounts=[{"name": "cores", "mountPath": "/data/dump-a"}])
    after, _ = mutate_apply(make_pod([c], pattern=pattern, volumes=[PVC]))
    assert [v["name"] for v in after["spec"]["volumes"]] == ["cores", C.WRAPPER_VOLUME]
    assert after["metadata"]["annotations"][C.ANN_CORE_VOLUME] == "cores@/data/dump-a"
    # and without a user volume, the added one is mounted at the normal path
    after, _ = mutate_apply(make_pod([container("web", command=["/web"])], pattern=pattern))
    mounts = {m["name"]: m["mountPath"] for m in after["spec"]["containers"][0]["volumeMounts"]}
    assert mounts[C.CORE_VOLUME] == "/data/dump-a"


def test_reserved_path_in_a_workload_is_a_warning_not_a_refusal() -> None:
    c = container("web", command=["/web"], volumeMounts=[{"name": "x", "mountPath": C.WRAPPER_DIR}])
    tmpl = template({C.ANN_PATTERN: "/data/core.%p"}, [c])
    tmpl["spec"]["volumes"] = [{"name": "x", "emptyDir": {}}]
    response = handle_review(review(workload("Deployment", tmpl), "Deployment"), AdmissionSettings())["response"]
    assert response["allowed"] is True and any("not prepared" in w for w in response["warnings"])


def test_coredump_list_says_why_a_pod_keeps_no_core(tmp_path) -> None:
    pod = json.loads((RECORDED / "pod-web.json").read_text())
    pod["metadata"]["annotations"][C.ANN_UNWRITABLE] = "container app: volume data is read-only at /data"
    pod["status"]["phase"] = "Pending"  # nothing to exec into: only the listing's warnings matter here
    with FakeApiServer() as server:
        server.route("GET", "/api/v1/namespaces/shop/pods", Recorded(200, {"kind": "PodList", "apiVersion": "v1",
                                                                           "metadata": {}, "items": [pod]}))
        kc = server.kubeconfig(tmp_path / "kubeconfig")
        res = CliRunner().invoke(main, ["list", "-n", "shop", "--kubeconfig", str(kc)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "no core can be written in the pod (container app: volume data is read-only at /data)" in res.stderr
