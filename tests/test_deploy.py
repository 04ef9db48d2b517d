"""deploy/: the raw manifests (the chart rendered with default values) and the examples.

The raw manifests are re-rendered with the real helm through scripts/render-deploy.sh and must
match the committed file byte for byte. Every object validates with kubernetes-validate (strict,
1.29-1.33). Each example is run through the webhook's real mutation: it is prepared (not refused),
keeps the user's NAS/OSS volume or gets the emptyDir, and the patched pod still validates. The
ephemeral-container body is applied with `kubectl patch --local` (one of the few kubectl verbs
that work without an API server) to the mutated pod and the result validated.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from webhook import constants as C
from webhook.admission.mutate import mutate_pod
from webhook.admission.patch import apply
from webhook.admission.settings import AdmissionSettings
from webhook.pattern import parse

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy" / "coredump-webhook.yaml"
EXAMPLES = REPO / "deploy" / "examples"
NAMESPACE = "coredump-webhook"
K8S_VERSIONS = ("1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0")
EXAMPLE_FILES = sorted(p.name for p in EXAMPLES.glob("*.yaml"))
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration", "PersistentVolume"}


def load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def validate_all(objs: list[dict[str, Any]], version: str) -> None:
    for obj in objs:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{obj['kind']}/{obj['metadata']['name']} invalid for {version}: {exc.message}") from None


# --- the raw manifests ----------------------------------------------------------------------


def test_raw_manifests_do_not_drift(helm: Path, tmp_path: Path) -> None:
    out = tmp_path / "coredump-webhook.yaml"
    env = dict(os.environ, COREDUMP_TEST_HELM=str(helm), HOME=str(tmp_path))
    proc = subprocess.run(["bash", str(REPO / "scripts" / "render-deploy.sh"), str(out)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == DEPLOY.read_text(), (
        "deploy/coredump-webhook.yaml is stale: run `bash scripts/render-deploy.sh` and commit the result")


def test_raw_manifests_shape() -> None:
    objs = load(DEPLOY)
    ns = objs[0]
    assert (ns["kind"], ns["metadata"]["name"]) == ("Namespace", NAMESPACE)
    # The agent is privileged: Pod Security must allow it in this namespace.
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    kinds = [o["kind"] for o in objs]
    for kind in ("Deployment", "DaemonSet", "Service", "PodDisruptionBudget", "MutatingWebhookConfiguration",
                 "Job", "CronJob", "ServiceAccount", "ClusterRole"):
        assert kind in kinds
    assert "Pod" not in kinds  # the helm test pod is not part of an installation
    # The CoreDump CRD (charts/coredump-webhook/crds/) is in the file, before anything else of ours.
    assert kinds[1] == "CustomResourceDefinition" and objs[1]["metadata"]["name"] == "coredumps.coredump-webhook.io"
    for obj in objs:
        if obj["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in obj["metadata"]
        else:
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]
    mwc = next(o for o in objs if o["kind"] == "MutatingWebhookConfiguration")
    for hook in mwc["webhooks"]:
        assert hook["failurePolicy"] == "Ignore"
        assert {"kube-system", NAMESPACE} <= set(hook["namespaceSelector"]["matchExpressions"][0]["values"])
    # Kubernetes applies the file in order: the Secret-making Job comes before the caBundle one.
    jobs = [o["metadata"]["name"].rsplit("-", 1)[0] for o in objs if o["kind"] == "Job"]
    assert jobs == [f"{NAMESPACE}-certs-pre", f"{NAMESPACE}-certs"]
    commands = [o["spec"]["template"]["spec"]["containers"][0]["command"] for o in objs if o["kind"] == "Job"]
    assert commands == [["coredump", "certs", "bootstrap", "--secret-only"], ["coredump", "certs", "bootstrap"]]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_raw_manifests_validate(version: str) -> None:
    validate_all(load(DEPLOY), version)


# --- the examples ---------------------------------------------------------------------------


def pods_of(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every pod an example makes, as the webhook will see it (Deployment pods from the template)."""
    pods = []
    for obj in objs:
        if obj["kind"] == "Pod":
            pods.append(obj)
        elif obj["kind"] == "Deployment":
            template = obj["spec"]["template"]
            pods.append({"apiVersion": "v1", "kind": "Pod",
                         "metadata": {**template["metadata"], "generateName": obj["metadata"]["name"] + "-",
                                      "namespace": obj["metadata"]["namespace"]},
                         "spec": template["spec"]})
    return pods


def test_every_seed_scenario_has_an_example() -> None:
    assert set(EXAMPLE_FILES) >= {"nas-nfs-deployment.yaml", "nas-csi-deployment.yaml", "oss-pvc-deployment.yaml",
                                  "emptydir-pod.yaml", "eci-pod.yaml", "crasher-deployment.yaml"}
    assert (EXAMPLES / "emptydir-inspect-ephemeral.json").is_file()
    drivers = {o["spec"]["csi"]["driver"] for f in EXAMPLE_FILES for o in load(EXAMPLES / f)
               if o["kind"] == "PersistentVolume"}
    assert drivers == {"nasplugin.csi.alibabacloud.com", "ossplugin.csi.alibabacloud.com"}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", EXAMPLE_FILES)
def test_example_validates(name: str, version: str) -> None:
    validate_all(load(EXAMPLES / name), version)


@pytest.mark.parametrize("name", EXAMPLE_FILES)
def test_example_pods_are_mutated(name: str) -> None:
    mwc = next(o for o in load(DEPLOY) if o["kind"] == "MutatingWebhookConfiguration")
    excluded = set(mwc["webhooks"][0]["namespaceSelector"]["matchExpressions"][0]["values"])
    pods = pods_of(load(EXAMPLES / name))
    assert pods, name
    for pod in pods:
        namespace = pod["metadata"]["namespace"]
        assert namespace not in excluded
        annotations = pod["metadata"]["annotations"]
        raw = annotations.get(C.ANN_PATTERN) or annotations.get(C.ANN_PATTERN_ECI)
        assert raw, f"{name}: no pattern annotation"
        pattern = parse(raw)
        assert not pattern.is_relative
        result = mutate_pod(pod, AdmissionSettings(), namespace=namespace)
        assert result.allowed, result.message
        assert result.patch, f"{name}: the webhook would leave the pod alone"
        after = apply(pod, result.patch)
        assert after["metadata"]["annotations"][C.ANN_STATUS] == C.STATUS_INJECTED
        for version in ("1.29.0", "1.33.0"):
            kubernetes_validate.validate(after, version, strict=True)
        volume_name, _, mount_path = after["metadata"]["annotations"][C.ANN_CORE_VOLUME].partition("@")
        volumes = {v["name"]: v for v in after["spec"]["volumes"]}
        user_volumes = {v["name"] for v in pod["spec"].get("volumes", [])}
        if user_volumes:
            # NAS / OSS / NFS: the user's volume at the pattern's directory is kept and used.
            assert volume_name in user_volumes
            assert len(volumes) == len(user_volumes) + 1  # + the wrapper's emptyDir only
        else:
            assert volume_name == C.CORE_VOLUME and "emptyDir" in volumes[volume_name]
            assert mount_path == pattern.directory.rstrip("/")
        # Idempotent: the mutated pod sent again (reinvocation) gets nothing more.
        assert mutate_pod(after, AdmissionSettings(), namespace=namespace).patch == []


def test_eci_example_relies_on_the_appended_pid() -> None:
    (pod,) = pods_of(load(EXAMPLES / "eci-pod.yaml"))
    pattern = parse(pod["metadata"]["annotations"][C.ANN_PATTERN_ECI])
    assert not pattern.has_pid  # the agent appends .PID, as in the ECI document (core-eci.12)
    assert C.ANN_PATTERN not in pod["metadata"]["annotations"]


def test_crasher_crashes_a_child_not_pid_1() -> None:
    (pod,) = pods_of(load(EXAMPLES / "crasher-deployment.yaml"))
    script = pod["spec"]["containers"][0]["command"][-1]
    # PID 1 of a pid namespace ignores signals it has no handler for: the SIGSEGV goes to a child.
    assert "sh -c 'kill -SEGV $$'" in script
    assert parse(pod["metadata"]["annotations"][C.ANN_PATTERN]).directory.rstrip("/") == "/cores"


def test_ephemeral_inspection_body_applies_to_the_mutated_pod(kubectl: Path, tmp_path: Path) -> None:
    (pod,) = pods_of(load(EXAMPLES / "emptydir-pod.yaml"))
    mutated = apply(pod, mutate_pod(pod, AdmissionSettings(), namespace="default").patch)
    pod_file = tmp_path / "pod.json"
    pod_file.write_text(json.dumps(mutated))
    body = EXAMPLES / "emptydir-inspect-ephemeral.json"
    proc = subprocess.run(
        [str(kubectl), "patch", "--local", "-f", str(pod_file), "--type", "strategic", "--patch-file", str(body),
         "-o", "json"],
        env=dict(os.environ, HOME=str(tmp_path), KUBECONFIG=str(tmp_path / "none")),
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    patched = json.loads(proc.stdout)
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(patched, version, strict=True)
    (debug,) = patched["spec"]["ephemeralContainers"]
    assert debug["targetContainerName"] in {c["name"] for c in patched["spec"]["containers"]}
    volume_name, _, mount_path = mutated["metadata"]["annotations"][C.ANN_CORE_VOLUME].partition("@")
    (mount,) = debug["volumeMounts"]
    # The body mounts the injected core volume at the same path as the crashed container sees it.
    assert mount["name"] == volume_name and mount["mountPath"].rstrip("/") == mount_path
    assert patched["spec"]["containers"] == mutated["spec"]["containers"]  # nothing else changed


# --- applied again with a new image ---------------------------------------------------------


def _render_raw(helm: Path, tmp_path: Path, *values: str) -> list[dict[str, Any]]:
    """scripts/render-deploy.sh's output for a chart whose values.yaml carries ``values``
    (how a new release of the raw manifests comes about: a new image tag)."""
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(REPO / "charts", repo / "charts")
    shutil.copytree(REPO / "scripts", repo / "scripts")
    values_file = repo / "charts" / "coredump-webhook" / "values.yaml"
    text = values_file.read_text()
    for old, new in (v.split("=>") for v in values):
        assert old in text
        text = text.replace(old, new)
    values_file.write_text(text)
    out = tmp_path / "out.yaml"
    env = dict(os.environ, COREDUMP_TEST_HELM=str(helm), HOME=str(tmp_path))
    proc = subprocess.run(["bash", str(repo / "scripts" / "render-deploy.sh"), str(out)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return load(out)


def test_raw_manifests_apply_again_with_a_new_image(helm: Path, tmp_path: Path) -> None:
    """`kubectl apply -f` twice: the same file changes nothing (same names, same specs); a new
    image gives the Jobs (pod template immutable) new names, so apply creates them instead of
    failing on an update, while every other object keeps its name and is updated in place."""
    first = load(DEPLOY)
    again = _render_raw(helm, tmp_path / "a", )
    assert again == first  # same values, same file: nothing to change on the second apply
    newer = _render_raw(helm, tmp_path / "b", 'tag: ""=>tag: "0.2.0"')
    key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
    old_jobs = {key(o): o for o in first if o["kind"] == "Job"}
    new_jobs = {key(o): o for o in newer if o["kind"] == "Job"}
    assert len(old_jobs) == len(new_jobs) == 2 and not set(old_jobs) & set(new_jobs)
    for job in new_jobs.values():
        assert job["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":0.2.0")
        assert job["spec"]["ttlSecondsAfterFinished"] > 0  # the old ones go away by themselves
        assert len(job["metadata"]["name"]) <= 63
    others_old = {key(o) for o in first if o["kind"] != "Job"}
    others_new = {key(o) for o in newer if o["kind"] != "Job"}
    assert others_old == others_new


def test_readme_install_steps_label_the_namespace_before_the_agent_exists() -> None:
    """On a cluster whose default Pod Security level is restricted, the privileged agent's pods
    are refused unless its namespace is labelled before the DaemonSet is created: the README's
    Helm steps create and label the namespace first, and the raw manifests start with it."""
    import re

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("**With Helm**"):readme.index("**Without Helm**")]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    lines = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    create = next(i for i, ln in enumerate(lines) if ln.startswith("kubectl create namespace coredump-webhook"))
    label = next(i for i, ln in enumerate(lines) if ln.startswith("kubectl label namespace coredump-webhook")
                 and "pod-security.kubernetes.io/enforce=privileged" in ln)
    install = next(i for i, ln in enumerate(lines) if ln.startswith("helm install"))
    assert create < label < install
    assert "--create-namespace" not in block
    assert "image.digest=" in lines[install]  # the production setting
    objs = load(DEPLOY)
    assert objs[0]["kind"] == "Namespace"
    assert objs[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    assert [o["kind"] for o in objs].index("DaemonSet") > 0
