"""Ephemeral debug container and reader pod: golden request bodies, validated as Kubernetes 1.31."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import kubernetes_validate
import pytest

from webhook.inspect import ephemeral as eph

HERE = Path(__file__).resolve().parent
RECORDED = HERE / "recorded" / "inspect"
GOLDEN = HERE / "golden" / "inspect"
IMAGE = "ghcr.io/coredump-webhook/coredump-webhook:0.1.0"
K8S = "1.31.0"


def pod(name: str) -> dict:
    return json.loads((RECORDED / f"{name}.json").read_text())


def golden(name: str, value: dict) -> None:
    path = GOLDEN / name
    text = json.dumps(value, indent=2, sort_keys=True) + "\n"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.exists(), f"{path} missing (UPDATE_GOLDEN=1 to write it)"
    assert json.loads(path.read_text()) == value, f"{path} differs (UPDATE_GOLDEN=1 to accept)"


def validate_pod(p: dict) -> None:
    kubernetes_validate.validate(p, K8S, strict=True)


@pytest.mark.parametrize(
    "fixture,container,golden_name",
    [
        ("pod-web", None, "debug-patch-web.json"),
        ("pod-eci-nas", None, "debug-patch-eci-worker.json"),
        ("pod-eci-nas", "helper", "debug-patch-eci-helper.json"),
    ],
)
def test_debug_patch_golden_and_valid(fixture, container, golden_name):
    p = pod(fixture)
    name = eph.unique_name(p, rng=random.Random(7))
    ec = eph.debug_container(p, image=IMAGE, name=name, container=container)
    body = eph.ephemeral_patch(ec)
    golden(golden_name, body)
    validate_pod(eph.with_ephemeral(p, ec))
    assert body["spec"]["ephemeralContainers"] == [ec]


def test_web_debug_container_mounts_the_core_volume_at_the_same_path_and_targets_the_crashed_one():
    p = pod("pod-web")
    ec = eph.debug_container(p, image=IMAGE, name="coredump-debug-abcde")
    assert ec["targetContainerName"] == "app"  # first target, not the proxy sidecar
    assert ec["volumeMounts"] == [{"name": "coredump-webhook-cores", "mountPath": "/data/dump-a"}]
    assert ec["stdin"] and ec["tty"]
    assert {"name": "COREDUMP_DIR", "value": "/data/dump-a"} in ec["env"]


def test_fallback_without_core_volume_annotation_keeps_subpaths():
    p = pod("pod-eci-nas")
    worker = eph.core_location(p)
    assert (worker.container, worker.volume, worker.mount_path, worker.directory) == ("worker", "nas", "/pod/data", "/pod/data/dump")
    ec = eph.debug_container(p, image=IMAGE, name="coredump-debug-abcde", container="helper")
    assert ec["volumeMounts"] == [{"name": "nas", "mountPath": "/pod/data/dump", "subPath": "helper-dumps"}]
    worker_ec = eph.debug_container(p, image=IMAGE, name="n")
    assert worker_ec["volumeMounts"][0]["subPathExpr"] == "$(POD_NAME)"
    # the variable the subPathExpr needs travels with it, or the whole share would be mounted
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}} in worker_ec["env"]


def test_unique_name_avoids_existing_ephemeral_containers():
    p = pod("pod-eci-nas")
    # A generator whose first pick collides with the existing "coredump-debug-aaaaa".
    class Rigged(random.Random):
        picks = iter("aaaaa" + "bcdef")

        def choice(self, seq):
            return next(self.picks)

    assert eph.unique_name(p, rng=Rigged()) == "coredump-debug-bcdef"
    names = {eph.unique_name(p) for _ in range(20)}
    assert all(n.startswith("coredump-debug-") and len(n) == 20 for n in names) and len(names) > 1


def test_not_annotated_pod_is_a_clear_error():
    with pytest.raises(eph.NoCoreVolume, match="not prepared by coredump-webhook.*alibabacloud.com/core-pattern"):
        eph.core_location(pod("pod-not-annotated"))


def test_wrong_container_and_missing_mount_are_clear_errors():
    with pytest.raises(eph.InspectError, match="no container 'nope'"):
        eph.pick_container(pod("pod-web"), "nope")
    with pytest.raises(eph.NoCoreVolume, match="does not mount the core volume"):
        eph.core_location(pod("pod-web"), "proxy")


def test_ephemeral_state_reads_statuses():
    assert eph.ephemeral_state(pod("pod-web-patched"), "coredump-debug-x7k2q") == ("absent", "")
    assert eph.ephemeral_state(pod("pod-web-debug-running"), "coredump-debug-x7k2q")[0] == "running"
    state, why = eph.ephemeral_state(pod("pod-web-debug-errimagepull"), "coredump-debug-x7k2q")
    assert state == "waiting" and why.startswith("ErrImagePull")


@pytest.mark.parametrize("uid,golden_name", [(None, "reader-pod.json"), (1000, "reader-pod-restricted.json")])
def test_reader_pod_golden_and_valid(uid, golden_name):
    p = eph.reader_pod("shop", "web-cores", image="busybox:1.36", name="coredump-reader-k3j9d", run_as_user=uid)
    golden(golden_name, p)
    validate_pod(p)
    c = p["spec"]["containers"][0]
    assert c["volumeMounts"][0]["readOnly"] and p["spec"]["volumes"][0]["persistentVolumeClaim"]["readOnly"]
    assert p["spec"]["automountServiceAccountToken"] is False


def test_validation_catches_a_broken_body():
    p = pod("pod-web")
    ec = eph.debug_container(p, image=IMAGE, name="coredump-debug-abcde")
    ec["volumeMount"] = ec.pop("volumeMounts")  # a typo a hand-written PATCH could have
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_pod(eph.with_ephemeral(p, ec))


def test_attach_command():
    assert eph.attach_command("shop", "web", "coredump-debug-abcde", context="prod") == [
        "kubectl", "--context", "prod", "attach", "-it", "-n", "shop", "web", "-c", "coredump-debug-abcde"]
