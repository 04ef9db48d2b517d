"""The Helm chart, rendered by the real helm binary and checked object by object.

helm lint --strict and helm template run for the default values and every overlay; each
rendered object is validated with kubernetes-validate (strict) against Kubernetes 1.29-1.33;
the fields that make the install safe are asserted one by one; the environment variables and
flags the chart passes are checked against the real click commands, so a renamed option
breaks this test instead of silently doing nothing in a cluster.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "coredump-webhook"
RELEASE = "coredump-webhook"
NAMESPACE = "coredump-webhook"
OVERLAYS = ("values-gke-cos.yaml", "values-bottlerocket.yaml", "values-openshift.yaml")
K8S_VERSIONS = ("1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0")
#: Kinds kubernetes-validate has no schema for (CRDs): skipped by name, nothing else is.
NOT_IN_SCHEMAS = {
    ("cert-manager.io/v1", "Issuer"),
    ("cert-manager.io/v1", "Certificate"),
    ("security.openshift.io/v1", "SecurityContextConstraints"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
#: Every opt-in part of monitoring, and the NetworkPolicies.
MONITORING = ["--set", "monitoring.serviceMonitor.enabled=true", "--set", "monitoring.podMonitor.enabled=true",
              "--set", "monitoring.prometheusRule.enabled=true", "--set", "monitoring.dashboard.enabled=true",
              "--set", "networkPolicy.enabled=true", "--set-json", "networkPolicy.apiServerCIDRs=[\"10.0.0.0/24\"]",
              "--set-json", 'networkPolicy.metricsFrom=[{"namespaceSelector": {"matchLabels": '
              '{"kubernetes.io/metadata.name": "monitoring"}}}]']
#: Agent settings the chart sets itself (never through agent.settings).
CHART_MANAGED_AGENT_FIELDS = {"host_dir", "host_dir_on_host", "node_name", "metrics_bind", "helper_binary", "sysctl_root",
                              "restore_on_stop", "daemonset"}
#: Every variant the tests render: name -> extra helm arguments.
VARIANTS: dict[str, list[str]] = {
    "default": [],
    **{o: ["-f", str(CHART / o)] for o in OVERLAYS},
    "cert-manager": ["--set", "certManager.enabled=true"],
    "pull-secrets": ["--set", "registry.readPullSecrets=true"],
    "page": ["--set", "agent.page.enabled=true", "--set", "agent.page.service.enabled=true",
             "--set", "agent.page.tls.secretName=coredump-page-tls"],
    "monitoring": MONITORING,
    "index-page": ["--set", "indexPage.enabled=true", "--set", "indexPage.tls.secretName=coredump-index-tls"],
}


# --- rendering ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def helm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """helm with its HOME and caches in a temp dir (never the user's)."""
    home = tmp_path_factory.mktemp("helm-home")
    env = dict(os.environ)
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / "cache"), XDG_CONFIG_HOME=str(home / "config"),
               XDG_DATA_HOME=str(home / "data"))
    return env


def run_helm(helm: Path, env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(helm), *args], env=env, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def render(helm: Path, env: dict[str, str], *extra: str, namespace: str = NAMESPACE,
           chart: Path = CHART) -> list[dict[str, Any]]:
    out = run_helm(helm, env, "template", RELEASE, str(chart), "--namespace", namespace, *extra).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="session")
def rendered(helm: Path, helm_env: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    return {name: render(helm, helm_env, *args) for name, args in VARIANTS.items()}


def find(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def hooks(obj: dict[str, Any]) -> set[str]:
    raw = (obj["metadata"].get("annotations") or {}).get("helm.sh/hook", "")
    return {h.strip() for h in raw.split(",") if h.strip()}


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def webhook_deployment(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objs, "Deployment")


def agent_daemonset(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objs, "DaemonSet")


# --- lint and schema validation ---------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_helm_lint_strict(helm: Path, helm_env: dict[str, str], variant: str) -> None:
    proc = run_helm(helm, helm_env, "lint", "--strict", str(CHART), "--namespace", NAMESPACE, *VARIANTS[variant])
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_object_validates(rendered: dict[str, list[dict[str, Any]]], variant: str, version: str) -> None:
    objs = rendered[variant]
    assert len(objs) >= 12
    skipped = set()
    for obj in objs:
        key = (obj["apiVersion"], obj["kind"])
        if key in NOT_IN_SCHEMAS:
            skipped.add(key)
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(obj, version, strict=True)
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{obj['kind']}/{obj['metadata']['name']} invalid for {version}: {exc.message}") from None
    expected_skips = {
        "cert-manager": {("cert-manager.io/v1", "Issuer"), ("cert-manager.io/v1", "Certificate")},
        "values-openshift.yaml": {("security.openshift.io/v1", "SecurityContextConstraints")},
        "monitoring": {("monitoring.coreos.com/v1", k) for k in ("ServiceMonitor", "PodMonitor", "PrometheusRule")},
    }.get(variant, set())
    assert skipped == expected_skips


def test_kubernetes_validate_bundles_the_versions() -> None:
    base = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    for version in K8S_VERSIONS:
        assert (base / f"v{version}-local-strict").is_dir(), version


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "webhook.timeoutSeconds=11"], "webhook.timeoutSeconds"),
        (["--set", "webhook.failurePolicy=Sometimes"], "webhook.failurePolicy"),
        (["--set", "webhook.bogus=1"], "bogus"),
        (["--set", "agent.settings.not_a_field=1"], "not_a_field"),
        (["--set", "agent.settings.compression=gzip"], "agent.settings.compression"),
        (["--set", "agent.hostDir=relative/dir"], "agent.hostDir"),
        (["--set", "podSecurityContext.runAsUser=0"], "podSecurityContext.runAsUser"),
        (["--set", "containerSecurityContext.allowPrivilegeEscalation=true"], "allowPrivilegeEscalation"),
        (["--set", "webhook.defaultVolume=hostPath:/x"], "webhook.defaultVolume"),
        (["--set", "image.pullPolicy=Sometimes"], "image.pullPolicy"),
        (["--set", "registry.platform=amd64"], "registry.platform"),
        (["--set", "webhook.platform=linux/arm64"], "platform"),  # moved to registry.platform
        (["--set", "agent.page.bogus=1"], "bogus"),
        (["--set", "agent.page.logLevel=loud"], "agent.page.logLevel"),
        (["--set", "agent.page.port=0"], "agent.page.port"),
        (["--set", "agent.page.tls.secretName=Not_A_Name"], "agent.page.tls.secretName"),
        # below the agent's default stop timeout (40 s) + 20 s
        (["--set", "agent.terminationGracePeriodSeconds=30"], "agent.terminationGracePeriodSeconds"),
        (["--set", "agent.restoreOnStop=sometimes"], "agent.restoreOnStop"),
        (["--set", "agent.settings.digest=md5"], "agent.settings.digest"),
    ],
)
def test_schema_rejects_bad_values(helm: Path, helm_env: dict[str, str], args: list[str], message: str) -> None:
    proc = run_helm(helm, helm_env, "template", RELEASE, str(CHART), *args, check=False)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert message in proc.stderr


def test_schema_accepts_what_values_yaml_documents(helm: Path, helm_env: dict[str, str], tmp_path: Path) -> None:
    values = {
        "webhook": {"objectSelector": {"matchLabels": {"coredump-webhook.io/enabled": "true"}},
                    "defaultVolume": "nfs:nas.example.com:/dumps", "excludeNamespaces": ["monitoring"],
                    "extraEnv": [{"name": "COREDUMP_WEBHOOK_WORKERS", "value": "3"}]},
        "agent": {"settings": {"compression": "zstd", "rate_limit_seconds": 60, "max_core_bytes": 8589934592,
                               "events": False, "digest": "sha256"}},
        "image": {"digest": "sha256:" + "a" * 64},
        "registry": {"platform": "linux/arm64/v8"},
    }
    path = tmp_path / "v.yaml"
    path.write_text(yaml.safe_dump(values))
    objs = render(helm, helm_env, "-f", str(path))
    mwc = one(objs, "MutatingWebhookConfiguration")
    for hook in mwc["webhooks"]:
        assert hook["objectSelector"] == {"matchLabels": {"coredump-webhook.io/enabled": "true"}}
        assert "monitoring" in hook["namespaceSelector"]["matchExpressions"][0]["values"]
    deploy = webhook_deployment(objs)
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    env = env_of(container)
    assert env["COREDUMP_WEBHOOK_DEFAULT_VOLUME"] == "nfs:nas.example.com:/dumps"
    assert env["COREDUMP_WEBHOOK_WORKERS"] == "3"
    # One platform setting, the registry resolver's (`coredump serve --registry-platform`).
    assert env["COREDUMP_REGISTRY_PLATFORM"] == "linux/arm64/v8"
    assert not any("PLATFORM" in name for name in env if name != "COREDUMP_REGISTRY_PLATFORM")
    # The digest pins every image, including the one the webhook injects into application pods.
    assert container["image"].endswith("@sha256:" + "a" * 64)
    assert env["COREDUMP_WEBHOOK_IMAGE"] == container["image"]
    agent_env = env_of(agent_daemonset(objs)["spec"]["template"]["spec"]["containers"][0])
    # Whole numbers stay integers (YAML numbers reach helm templates as floats).
    assert agent_env["COREDUMP_AGENT_MAX_CORE_BYTES"] == "8589934592"
    assert agent_env["COREDUMP_AGENT_RATE_LIMIT_SECONDS"] == "60"
    assert agent_env["COREDUMP_AGENT_EVENTS"] == "false"
    assert agent_env["COREDUMP_AGENT_COMPRESSION"] == "zstd"


def test_schema_agent_settings_match_the_agent_dataclass() -> None:
    """agent.settings in the schema == the fields of AgentSettings (names and JSON types)."""
    from webhook.agent.settings import AgentSettings

    schema = json.loads((CHART / "values.schema.json").read_text())
    props = schema["properties"]["agent"]["properties"]["settings"]["properties"]
    hints = typing.get_type_hints(AgentSettings)
    json_type = {int: "integer", float: "number", bool: "boolean", str: "string"}
    expected = {f.name: json_type.get(hints[f.name], "string") for f in dataclasses.fields(AgentSettings)
                if f.name not in CHART_MANAGED_AGENT_FIELDS}
    assert {k: v["type"] for k, v in props.items()} == expected


def test_every_value_is_documented() -> None:
    """Each value of values.yaml has a `# --` comment right above its key (helm-docs style), or
    is a group of such values; a documented key documents its whole block (e.g. resources)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    keys = []  # (indent, key, has a "# --" comment block right above)
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "- ")) or ":" not in stripped:
            continue
        j = i - 1
        comment = []
        while j >= 0 and lines[j].strip().startswith("#"):
            comment.append(lines[j].strip())
            j -= 1
        keys.append((len(line) - len(line.lstrip()), stripped.split(":")[0], any(c.startswith("# --") for c in comment)))

    def check(start: int, end: int, path: str) -> list[str]:
        """Undocumented leaves among keys[start:end] (all at the same depth)."""
        missing = []
        i = start
        while i < end:
            indent, key, documented = keys[i]
            j = i + 1
            while j < end and keys[j][0] > indent:
                j += 1
            if not documented:
                if j == i + 1:
                    missing.append(path + key)
                else:
                    missing.extend(check(i + 1, j, f"{path}{key}."))
            i = j
        return missing

    assert len(keys) > 60
    assert check(0, len(keys), "") == []


def test_schema_covers_every_value() -> None:
    """values.schema.json names every key of values.yaml (strict: additionalProperties false)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(value: Any, node: dict[str, Any], path: str) -> None:
        if not isinstance(value, dict) or node.get("additionalProperties") is not False:
            return
        for key, sub in value.items():
            assert key in node.get("properties", {}), f"{path}{key} missing from values.schema.json"
            walk(sub, node["properties"][key], f"{path}{key}.")

    walk(values, schema, "")
    assert schema["additionalProperties"] is False


# --- the webhook ----------------------------------------------------------------------------


@pytest.mark.parametrize("namespace", [NAMESPACE, "tools"])
def test_webhook_configuration_is_safe(helm: Path, helm_env: dict[str, str], namespace: str) -> None:
    objs = render(helm, helm_env, namespace=namespace)
    mwc = one(objs, "MutatingWebhookConfiguration")
    service = one(objs, "Service")
    hooks_by_name = {h["name"]: h for h in mwc["webhooks"]}
    assert set(hooks_by_name) == {"pods.coredump-webhook.io", "workloads.coredump-webhook.io"}
    for hook in mwc["webhooks"]:
        assert hook["failurePolicy"] == "Ignore"
        assert hook["sideEffects"] == "None"
        assert 1 <= hook["timeoutSeconds"] <= 10 and hook["timeoutSeconds"] == 5
        assert hook["admissionReviewVersions"] == ["v1"]
        assert hook["reinvocationPolicy"] == "IfNeeded"
        assert hook["clientConfig"]["service"] == {
            "name": service["metadata"]["name"], "namespace": namespace, "path": "/mutate",
            "port": service["spec"]["ports"][0]["port"],
        }
        expr = hook["namespaceSelector"]["matchExpressions"][0]
        assert expr["key"] == "kubernetes.io/metadata.name" and expr["operator"] == "NotIn"
        assert {"kube-system", namespace} <= set(expr["values"])
        assert "objectSelector" not in hook
    pods = hooks_by_name["pods.coredump-webhook.io"]["rules"]
    assert pods == [{"apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "operations": ["CREATE"],
                     "scope": "Namespaced"}]
    workloads = hooks_by_name["workloads.coredump-webhook.io"]["rules"]
    resources = {(g, r) for rule in workloads for g in rule["apiGroups"] for r in rule["resources"]}
    assert resources == {("apps", r) for r in ("deployments", "statefulsets", "daemonsets", "replicasets")} | {
        ("batch", "jobs"), ("batch", "cronjobs"), ("", "replicationcontrollers"), ("", "podtemplates")}
    assert all(rule["operations"] == ["CREATE", "UPDATE"] for rule in workloads)
    # The objects the release runs in its own namespace are never sent to itself.
    for obj in objs:
        assert obj["metadata"].get("namespace") in (None, namespace)


def test_webhook_failure_policy_is_documented(rendered: dict[str, list[dict[str, Any]]]) -> None:
    text = (CHART / "values.yaml").read_text()
    assert "a broken webhook must never block" in text
    tmpl = (CHART / "templates" / "mutatingwebhookconfiguration.yaml").read_text()
    assert "must never block pod creation" in tmpl


def test_webhook_deployment_is_restricted_and_probed(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["default"]
    deploy = webhook_deployment(objs)
    spec = deploy["spec"]
    pod = spec["template"]["spec"]
    assert spec["replicas"] == 2
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    # Spread across nodes.
    (tsc,) = pod["topologySpreadConstraints"]
    assert tsc["topologyKey"] == "kubernetes.io/hostname" and tsc["maxSkew"] == 1
    assert tsc["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"]
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    # Restricted security context.
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert isinstance(psc["runAsUser"], int) and psc["runAsUser"] > 0
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod.get("hostPID") is not True and pod.get("hostNetwork") is not True
    (container,) = pod["containers"]
    csc = container["securityContext"]
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["capabilities"] == {"drop": ["ALL"]}
    assert "privileged" not in csc
    # Probes over HTTPS on the serving port.
    port = container["ports"][0]
    assert port["name"] == "https"
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert (get["scheme"], get["path"], get["port"]) == ("HTTPS", path, "https")
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    # The certificates: the TLS Secret mounted where --cert-dir points.
    args = container["args"]
    assert args[0] == "serve"
    cert_dir = args[args.index("--cert-dir") + 1]
    assert args[args.index("--bind") + 1] == f"0.0.0.0:{port['containerPort']}"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts[cert_dir]["name"]]["secret"]["secretName"] == f"{RELEASE}-tls"
    assert mounts["/tmp"]  # writable scratch on a read-only root
    # Service and PDB select exactly these pods.
    service = one(objs, "Service")
    assert service["spec"]["selector"] == spec["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "https"
    pdb = one(objs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]
    assert pdb["spec"]["maxUnavailable"] == 1
    # The injected init container runs this very image.
    env = env_of(container)
    assert env["COREDUMP_WEBHOOK_IMAGE"] == container["image"]
    assert env["COREDUMP_WEBHOOK_DEFAULT_VOLUME"] == "emptyDir"
    assert env["COREDUMP_WEBHOOK_ADD_CAPABILITY"] == "true"


def _click_envvars(command: Any) -> set[str]:
    names: set[str] = set()
    for param in command.params:
        envvar = getattr(param, "envvar", None)
        if isinstance(envvar, str):
            names.add(envvar)
        elif envvar:
            names.update(envvar)
    return names


def _click_flags(command: Any) -> set[str]:
    return {opt for param in command.params for opt in getattr(param, "opts", [])}


def test_webhook_env_and_flags_exist_in_coredump_serve(rendered: dict[str, list[dict[str, Any]]]) -> None:
    from webhook.server.commands import serve

    container = webhook_deployment(rendered["default"])["spec"]["template"]["spec"]["containers"][0]
    unknown = set(env_of(container)) - _click_envvars(serve)
    assert unknown == set(), f"the chart sets variables `coredump serve` does not read: {unknown}"
    flags = {a for a in container["args"] if a.startswith("--")}
    assert flags <= _click_flags(serve)


def test_agent_env_and_flags_exist_in_coredump_agent(rendered: dict[str, list[dict[str, Any]]], helm: Path,
                                                      helm_env: dict[str, str], tmp_path: Path) -> None:
    from webhook.agent.commands import agent

    run, uninstall = agent.commands["run"], agent.commands["uninstall"]
    path = tmp_path / "v.yaml"
    # Every settable key, with a value of the right type, to see its variable name.
    schema_props = json.loads((CHART / "values.schema.json").read_text())["properties"]["agent"]["properties"]
    sample = {"integer": 16, "number": 1.5, "boolean": True, "string": "auto"}
    settings = {k: sample[v["type"]] for k, v in schema_props["settings"]["properties"].items()}
    settings["compression"], settings["notify_format"], settings["unregistered"] = "zstd", "json", "auto"
    settings["digest"] = "sha256"
    path.write_text(yaml.safe_dump({"agent": {"settings": settings}}))
    container = agent_daemonset(render(helm, helm_env, "-f", str(path)))["spec"]["template"]["spec"]["containers"][0]
    unknown = set(env_of(container)) - _click_envvars(run)
    assert unknown == set(), f"the chart sets variables `coredump agent run` does not read: {unknown}"
    assert container["args"][:2] == ["agent", "run"]
    assert {a for a in container["args"] if a.startswith("--")} <= _click_flags(run)
    # No preStop: the agent itself decides at stop whether to restore (webhook/agent/lifecycle.py).
    assert "lifecycle" not in container
    assert uninstall is not None


# --- the node agent -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variant", "host_dir"),
    [("default", "/var/lib/coredump-webhook"), ("values-gke-cos.yaml", "/home/kubernetes/bin/coredump-webhook"),
     ("values-bottlerocket.yaml", "/opt/csi/coredump-webhook"), ("values-openshift.yaml", "/var/lib/coredump-webhook")],
)
def test_agent_daemonset(rendered: dict[str, list[dict[str, Any]]], variant: str, host_dir: str) -> None:
    from webhook import constants

    objs = rendered[variant]
    ds = agent_daemonset(objs)
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["terminationGracePeriodSeconds"] >= 30
    strategy = ds["spec"]["updateStrategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}
    (container,) = pod["containers"]
    assert container["securityContext"]["privileged"] is True
    assert container["securityContext"]["runAsUser"] == 0
    # The host dir: a hostPath mounted at the SAME path, passed to run.
    args = container["args"]
    assert args[args.index("--host-dir") + 1] == host_dir
    volumes = {v["name"]: v for v in pod["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if "hostPath" in volumes[m["name"]]]
    assert mount["mountPath"] == host_dir == volumes[mount["name"]]["hostPath"]["path"]
    assert volumes[mount["name"]]["hostPath"]["type"] == "DirectoryOrCreate"
    env = env_of(container)
    assert env["COREDUMP_AGENT_NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    # A restart keeps the helper as the kernel's target; only a removal of this DaemonSet restores.
    assert env["COREDUMP_AGENT_RESTORE_ON_STOP"] == "removed"
    assert env["COREDUMP_AGENT_DAEMONSET"] == f"{ds['metadata']['namespace']}/{ds['metadata']['name']}"
    metrics_port = container["ports"][0]["containerPort"]
    assert env["COREDUMP_AGENT_METRICS_BIND"] == f"0.0.0.0:{metrics_port}"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"  # a refused install is not restarted
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"  # ...but shows as not ready
    assert container["resources"]["limits"]["memory"]
    if variant == "default":
        assert host_dir == constants.DEFAULT_HOST_DIR
    if variant == "values-gke-cos.yaml":
        quota = one(objs, "ResourceQuota")
        expr = quota["spec"]["scopeSelector"]["matchExpressions"][0]
        assert (expr["scopeName"], expr["operator"], expr["values"]) == ("PriorityClass", "In", ["system-node-critical"])
    else:
        assert find(objs, "ResourceQuota") == []


def test_gke_overlay_says_why_that_path(rendered: dict[str, list[dict[str, Any]]]) -> None:
    text = (CHART / "values-gke-cos.yaml").read_text()
    assert "noexec" in text and "/home/kubernetes/bin" in text


def test_agent_can_be_disabled(helm: Path, helm_env: dict[str, str]) -> None:
    objs = render(helm, helm_env, "--set", "agent.enabled=false")
    assert find(objs, "DaemonSet") == [] and webhook_deployment(objs)


# --- RBAC -----------------------------------------------------------------------------------


def _rules(objs: list[dict[str, Any]], kind: str, name: str) -> set[tuple[str, str, tuple[str, ...], tuple[str, ...]]]:
    role = one(objs, kind, name)
    out = set()
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.add((group, resource, tuple(sorted(rule.get("resourceNames", []))), tuple(sorted(rule["verbs"]))))
    return out


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_no_wildcards_anywhere(rendered: dict[str, list[dict[str, Any]]], variant: str) -> None:
    for obj in rendered[variant]:
        for rule in obj.get("rules", []) if obj["kind"] in ("Role", "ClusterRole") else []:
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(field, []), (obj["metadata"]["name"], rule)
            assert "nonResourceURLs" not in rule


def test_rbac_is_exactly_minimal(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["default"]
    mwc = one(objs, "MutatingWebhookConfiguration")["metadata"]["name"]
    tls = f"{RELEASE}-tls"
    # Webhook: list/watch namespaces (their Pod Security level), nothing else by default.
    assert _rules(objs, "ClusterRole", f"{RELEASE}-webhook") == {("", "namespaces", (), ("list", "watch"))}
    assert webhook_deployment(objs)["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    # Agent: list/watch pods (its own node's, by field selector: RBAC cannot narrow it), post
    # CoreDumped Events; nothing else (see test_agent_rbac_is_what_the_agent_calls).
    assert _rules(objs, "ClusterRole", f"{RELEASE}-agent") == {
        ("", "pods", (), ("list", "watch")), ("", "events", (), ("create",)),
        ("coredump-webhook.io", "coredumps", (), ("create", "delete", "update"))}
    assert "spec.nodeName" in (CHART / "templates" / "agent-rbac.yaml").read_text()
    # Certificates: create the Secret (RBAC cannot name what does not exist yet), then only that
    # Secret and that webhook configuration by name.
    secret_rules = {("", "secrets", (), ("create",)), ("", "secrets", (tls,), ("get", "update"))}
    assert _rules(objs, "Role", f"{RELEASE}-certs") == secret_rules
    assert _rules(objs, "Role", f"{RELEASE}-certs-pre") == secret_rules
    assert _rules(objs, "ClusterRole", f"{RELEASE}-certs") == {
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", (mwc,), ("get", "patch"))}
    # The pre-delete hook: delete that webhook configuration and that Secret, nothing else.
    assert _rules(objs, "ClusterRole", f"{RELEASE}-uninstall") == {
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", (mwc,), ("delete",))}
    assert _rules(objs, "Role", f"{RELEASE}-uninstall") == {("", "secrets", (tls,), ("delete",))}
    # The crash index: `view` reads CoreDumps, `edit` (and `admin`) may also delete them.
    view, edit = one(objs, "ClusterRole", f"{RELEASE}-coredumps-view"), one(objs, "ClusterRole", f"{RELEASE}-coredumps-edit")
    assert _rules(objs, "ClusterRole", f"{RELEASE}-coredumps-view") == {
        ("coredump-webhook.io", "coredumps", (), ("get", "list", "watch"))}
    assert _rules(objs, "ClusterRole", f"{RELEASE}-coredumps-edit") == {
        ("coredump-webhook.io", "coredumps", (), ("delete", "deletecollection"))}
    aggregate = "rbac.authorization.k8s.io/aggregate-to-"
    assert {k for k, v in view["metadata"]["labels"].items() if k.startswith(aggregate) and v == "true"} == {
        aggregate + "view", aggregate + "edit", aggregate + "admin"}
    assert {k for k, v in edit["metadata"]["labels"].items() if k.startswith(aggregate) and v == "true"} == {
        aggregate + "edit", aggregate + "admin"}
    assert not find(objs, "ClusterRoleBinding", f"{RELEASE}-coredumps-view")  # aggregated, never bound
    assert {r["metadata"]["name"] for r in find(objs, "ClusterRole")} == {
        f"{RELEASE}-agent", f"{RELEASE}-certs", f"{RELEASE}-uninstall", f"{RELEASE}-webhook",
        f"{RELEASE}-coredumps-view", f"{RELEASE}-coredumps-edit"}


#: kubernetes client method prefix -> RBAC verb.
_CLIENT_VERBS = {"create": "create", "read": "get", "list": "list", "patch": "patch", "replace": "update",
                 "delete": "delete", "delete_collection": "deletecollection"}
_SUBRESOURCES = ("status", "log", "ephemeralcontainers", "eviction", "binding", "scale", "proxy", "exec", "attach")


def _agent_api_calls() -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) of every Kubernetes API call in webhook/agent/, read from its
    source: each call of a CoreV1Api method (a `watch=` argument or a `watch.Watch` makes a
    list a watch)."""
    import ast
    import re

    from kubernetes import client as k8s

    api_classes = {n for n in dir(k8s) if n.endswith("Api") and n[:1].isupper()}
    groups = {"CoreV1Api": "", "AppsV1Api": "apps"}
    methods = {m: groups[c] for c in groups for m in dir(getattr(k8s, c)) if not m.startswith("_")}
    pattern = re.compile(r"(delete_collection|create|read|list|patch|replace|delete)_(namespaced_)?([a-z_]+?)"
                         r"(_for_all_namespaces)?(_with_http_info)?")
    calls: set[tuple[str, str, str]] = set()
    for path in sorted((REPO / "webhook" / "agent").glob("*.py")):
        tree = ast.parse(path.read_text())
        names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)} | {
            n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        assert names & api_classes <= set(groups) | {"CustomObjectsApi"}, (
            f"{path.name} uses {names & api_classes}: teach this test its API group and update agent-rbac.yaml")
        if "CustomObjectsApi" in names:  # the crash index (webhook/agent/index.py): CoreDumps only
            assert "PLURAL = \"coredumps\"" in path.read_text() and "GROUP = \"coredump-webhook.io\"" in path.read_text()
            for method, verb in (("create_namespaced_custom_object", "create"), ("replace_namespaced_custom_object", "update"),
                                 ("patch_namespaced_custom_object", "patch"), ("get_namespaced_custom_object", "get"),
                                 ("list_namespaced_custom_object", "list"), ("delete_namespaced_custom_object", "delete")):
                if method in names:
                    calls.add(("coredump-webhook.io", "coredumps", verb))
        called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                method = node.func.attr
            elif isinstance(node, ast.Attribute) and id(node) not in called:
                method = node.attr  # also a method passed around uncalled (e.g. to watch.Watch().stream)
            else:
                continue
            match = pattern.fullmatch(method) if method in methods else None
            if not match:
                continue
            group = methods[method]
            verb, kind = _CLIENT_VERBS[match.group(1)], match.group(3)
            base, _, sub = kind.rpartition("_")
            is_sub = bool(base) and sub in _SUBRESOURCES
            resource = (base if is_sub else kind).replace("_", "") + "s" + (f"/{sub}" if is_sub else "")
            watching = isinstance(node, ast.Call) and any(k.arg == "watch" for k in node.keywords)
            if verb == "list" and (watching or "Watch" in names):
                calls.add((group, resource, "watch"))
            if not (verb == "list" and watching):
                calls.add((group, resource, verb))
    return calls


def test_agent_rbac_is_what_the_agent_calls(rendered: dict[str, list[dict[str, Any]]], helm: Path,
                                            helm_env: dict[str, str]) -> None:
    """The agent's ClusterRole grants exactly the (group, resource, verb) its code calls: a new
    API call in webhook/agent/ without its RBAC (or RBAC left over) fails here."""
    calls = _agent_api_calls()
    assert ("", "events", "create") in calls  # the CoreDumped Event (webhook/agent/events.py)
    # Its own DaemonSet, read at stop (webhook/agent/lifecycle.py): a Role naming that one object.
    own = ("apps", "daemonsets", "get")
    assert own in calls
    calls = calls - {own}
    for variant in ("default", "values-gke-cos.yaml", "values-bottlerocket.yaml", "values-openshift.yaml"):
        assert _rules(rendered[variant], "Role", f"{RELEASE}-agent") == {
            ("apps", "daemonsets", (f"{RELEASE}-agent",), ("get",))}
        binding = one(rendered[variant], "RoleBinding", f"{RELEASE}-agent")
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": f"{RELEASE}-agent", "namespace": NAMESPACE}]
        role = one(rendered[variant], "ClusterRole", f"{RELEASE}-agent")
        granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
                   for v in rule["verbs"]}
        assert granted == calls, variant
        assert all("resourceNames" not in rule for rule in role["rules"])
    if ("", "pods", "list") in calls or ("", "pods", "watch") in calls:
        # RBAC cannot narrow list/watch to one node: the agent must ask for its own node's pods.
        source = "".join(p.read_text() for p in (REPO / "webhook" / "agent").glob("*.py"))
        assert "spec.nodeName=" in source and "field_selector=" in source
        assert "spec.nodeName" in (REPO / "README.md").read_text()
    assert agent_daemonset(rendered["default"])["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    # Each API-using feature off drops its rule; all off: no ClusterRole, and with restoreOnStop
    # other than "removed" no Role and no token either.
    assert ("coredump-webhook.io", "coredumps", "create") in calls  # the crash index
    # records of pruned cores go with them; still never read back (issue 13 section 1)
    assert ("coredump-webhook.io", "coredumps", "delete") in calls
    assert not {("coredump-webhook.io", "coredumps", v) for v in ("get", "list", "watch", "patch")} & calls
    for settings, dropped in ((["events=false"], {"events"}), (["watch_pods=false"], {"pods"}),
                              (["index=false"], {"coredumps"}),
                              (["events=false", "watch_pods=false", "index=false"], {"events", "pods", "coredumps"})):
        args = [a for setting in settings for a in ("--set", f"agent.settings.{setting}")]
        if len(settings) == 3:
            assert agent_daemonset(render(helm, helm_env, *args))["spec"]["template"]["spec"][
                "automountServiceAccountToken"] is True  # still reads its DaemonSet at stop
            args += ["--set", "agent.restoreOnStop=always"]
            objs = render(helm, helm_env, *args)
            assert find(objs, "Role", f"{RELEASE}-agent") == [] == find(objs, "RoleBinding", f"{RELEASE}-agent")
            assert "COREDUMP_AGENT_DAEMONSET" not in env_of(agent_daemonset(objs)["spec"]["template"]["spec"][
                "containers"][0])
        objs = render(helm, helm_env, *args)
        left = {c for c in calls if c[1].split("/")[0] not in dropped}
        pod_spec = agent_daemonset(objs)["spec"]["template"]["spec"]
        if left:
            role = one(objs, "ClusterRole", f"{RELEASE}-agent")
            assert {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
                    for v in rule["verbs"]} == left, settings
            assert pod_spec["automountServiceAccountToken"] is True
        else:
            assert find(objs, "ClusterRole", f"{RELEASE}-agent") == []
            assert find(objs, "ClusterRoleBinding", f"{RELEASE}-agent") == []
            assert pod_spec["automountServiceAccountToken"] is False
        env = env_of(pod_spec["containers"][0])
        assert all(env[f"COREDUMP_AGENT_{s.split('=')[0].upper()}"] == "false" for s in settings)


def test_webhook_may_patch_only_its_own_configuration_when_asked(helm: Path, helm_env: dict[str, str]) -> None:
    objs = render(helm, helm_env, "--set", "webhook.rbac.patchWebhookConfiguration=true")
    mwc = one(objs, "MutatingWebhookConfiguration")["metadata"]["name"]
    assert _rules(objs, "ClusterRole", f"{RELEASE}-webhook") == {
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", (mwc,), ("get", "patch")),
        ("", "namespaces", (), ("list", "watch"))}
    assert webhook_deployment(objs)["spec"]["template"]["spec"]["automountServiceAccountToken"] is True


def test_webhook_without_the_capability_needs_no_api(helm: Path, helm_env: dict[str, str]) -> None:
    """No SYS_RESOURCE to decide: no namespace watch, no ClusterRole, no token."""
    objs = render(helm, helm_env, "--set", "webhook.addCapability=false")
    assert find(objs, "ClusterRole", f"{RELEASE}-webhook") == []
    assert webhook_deployment(objs)["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_registry_egress_values_reach_the_webhook(helm: Path, helm_env: dict[str, str]) -> None:
    objs = render(helm, helm_env, "--set", "registry.allowedHosts={registry.corp.example,*.corp.example:5000}",
                  "--set", "registry.insecure={registry.local:5000}", "--set", "registry.allowNetworks={127.0.0.1/32}",
                  "--set", "webhook.podSecurityDefaultLevel=baseline")
    env = env_of(webhook_deployment(objs)["spec"]["template"]["spec"]["containers"][0])
    assert env["COREDUMP_REGISTRY_ALLOW_HOST"] == "registry.corp.example *.corp.example:5000"
    assert env["COREDUMP_REGISTRY_INSECURE"] == "registry.local:5000"
    assert env["COREDUMP_REGISTRY_ALLOW_NETWORK"] == "127.0.0.1/32"
    assert env["COREDUMP_WEBHOOK_POD_SECURITY_DEFAULT_LEVEL"] == "baseline"
    default_env = env_of(webhook_deployment(render(helm, helm_env))["spec"]["template"]["spec"]["containers"][0])
    assert not {"COREDUMP_REGISTRY_ALLOW_HOST", "COREDUMP_REGISTRY_INSECURE", "COREDUMP_REGISTRY_ALLOW_NETWORK"} & set(default_env)


def test_pull_secrets_only_when_asked(rendered: dict[str, list[dict[str, Any]]]) -> None:
    def secret_rules(objs: list[dict[str, Any]]) -> set[Any]:
        return {r for r in _rules(objs, "ClusterRole", f"{RELEASE}-webhook") if r[1] == "secrets"}

    assert secret_rules(rendered["default"]) == set()
    assert secret_rules(rendered["pull-secrets"]) == {("", "secrets", (), ("get",))}
    assert webhook_deployment(rendered["pull-secrets"])["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    env = env_of(webhook_deployment(rendered["pull-secrets"])["spec"]["template"]["spec"]["containers"][0])
    assert env["COREDUMP_REGISTRY_READ_PULL_SECRETS"] == "true"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_bindings_and_service_accounts_line_up(rendered: dict[str, list[dict[str, Any]]], variant: str) -> None:
    objs = rendered[variant]
    accounts = {o["metadata"]["name"] for o in find(objs, "ServiceAccount")}
    roles = {(o["kind"], o["metadata"]["name"]) for o in objs if o["kind"] in ("Role", "ClusterRole")}
    for binding in find(objs, "RoleBinding") + find(objs, "ClusterRoleBinding"):
        assert (binding["roleRef"]["kind"], binding["roleRef"]["name"]) in roles
        for subject in binding["subjects"]:
            assert subject["kind"] == "ServiceAccount" and subject["name"] in accounts
            assert subject["namespace"] == NAMESPACE
        if binding["kind"] == "RoleBinding" and binding["roleRef"]["kind"] == "Role":
            role = one(objs, "Role", binding["roleRef"]["name"])
            assert hooks(role) == hooks(binding)  # hook RBAC lives exactly as long as its binding
    for obj in objs:
        spec = _pod_spec(obj)
        if spec is not None and obj["kind"] != "Pod":
            assert spec["serviceAccountName"] in accounts, obj["metadata"]["name"]


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    kind = obj["kind"]
    if kind == "Pod":
        return obj["spec"]
    if kind in ("Deployment", "DaemonSet", "Job", "StatefulSet"):
        return obj["spec"]["template"]["spec"]
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return None


# --- certificates ---------------------------------------------------------------------------


def test_certificate_bootstrap_hooks(rendered: dict[str, list[dict[str, Any]]]) -> None:
    from webhook.certs.commands import bootstrap

    objs = rendered["default"]
    jobs = {j["metadata"]["name"].rsplit("-", 1)[0]: j for j in find(objs, "Job")}
    pre, post = jobs[f"{RELEASE}-certs-pre"], jobs[f"{RELEASE}-certs"]
    assert hooks(pre) == {"pre-install", "pre-upgrade"}
    assert hooks(post) == {"post-install", "post-upgrade"}
    # The hook RBAC exists before the pre-install Job runs and goes away after it succeeded.
    for kind in ("ServiceAccount", "Role", "RoleBinding"):
        obj = one(objs, kind, f"{RELEASE}-certs-pre")
        assert hooks(obj) == {"pre-install", "pre-upgrade"}
        assert int(obj["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(pre["metadata"]["annotations"]["helm.sh/hook-weight"])
        assert "hook-succeeded" in obj["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
    container = post["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["coredump", "certs", "bootstrap"]
    pre_container = pre["spec"]["template"]["spec"]["containers"][0]
    # Before the webhook configuration exists: the same command, the Secret only.
    assert pre_container["command"] == ["coredump", "certs", "bootstrap", "--secret-only"]
    assert "--secret-only" in _click_flags(bootstrap)
    env = env_of(container)
    assert set(env) <= _click_envvars(bootstrap)
    deploy = webhook_deployment(objs)
    volumes = {v["name"]: v for v in deploy["spec"]["template"]["spec"]["volumes"]}
    assert env["COREDUMP_CERTS_SECRET"] == volumes["tls"]["secret"]["secretName"]
    assert env["COREDUMP_CERTS_WEBHOOK_CONFIG"] == one(objs, "MutatingWebhookConfiguration")["metadata"]["name"]
    assert env["COREDUMP_CERTS_SERVICE"] == one(objs, "Service")["metadata"]["name"]
    assert env["COREDUMP_CERTS_NAMESPACE"] == NAMESPACE
    assert env_of(pre_container) == env
    # The renewal makes a new CA: it must patch the caBundle too (the full bootstrap).
    cron = one(objs, "CronJob")
    cron_container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert cron_container["command"] == container["command"] and env_of(cron_container) == env
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert _pod_spec(cron)["serviceAccountName"] == _pod_spec(post)["serviceAccountName"]
    for job in (pre, post):
        psc = job["spec"]["template"]["spec"]["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not (CHART / "files").exists()  # no script beside the CLI


def test_renewal_runs_well_within_the_renewal_window() -> None:
    """The weekly CronJob must get several chances inside renewBeforeDays (and renewBeforeDays
    below days, or `coredump certs bootstrap` refuses to run)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())["certs"]
    minute, hour, dom, month, dow = values["renewal"]["schedule"].split()
    assert (dom, month) == ("*", "*") and dow != "*"  # weekly
    assert values["renewBeforeDays"] >= 3 * 7
    assert values["renewBeforeDays"] < values["days"]


def _request_attributes(method: str, path: str) -> tuple[str, str, str | None, str | None, str]:
    """RBAC attributes of an API request: (apiGroup, resource, namespace, name, verb)."""
    parts = path.strip("/").split("/")
    if parts[0] == "api":
        group, rest = "", parts[2:]
    else:
        group, rest = parts[1], parts[3:]
    namespace = None
    if rest[0] == "namespaces" and len(rest) > 2:
        namespace, rest = rest[1], rest[2:]
    resource, name = rest[0], (rest[1] if len(rest) > 1 else None)
    verb = {"GET": "get" if name else "list", "POST": "create", "PUT": "update", "PATCH": "patch",
            "DELETE": "delete"}[method]
    return group, resource, namespace, name, verb


def _granted(objs: list[dict[str, Any]], account: str) -> list[tuple[str, int, dict[str, Any], str | None]]:
    """Every rule bound to a ServiceAccount: (role, rule index, rule, namespace it applies in or None)."""
    out = []
    for binding in find(objs, "RoleBinding") + find(objs, "ClusterRoleBinding"):
        if not any(s["kind"] == "ServiceAccount" and s["name"] == account and s["namespace"] == NAMESPACE
                   for s in binding["subjects"]):
            continue
        role = one(objs, binding["roleRef"]["kind"], binding["roleRef"]["name"])
        where = binding["metadata"]["namespace"] if binding["kind"] == "RoleBinding" else None
        for i, rule in enumerate(role["rules"]):
            out.append((f"{role['kind']}/{role['metadata']['name']}", i, rule, where))
    return out


def _permits(rule: dict[str, Any], where: str | None, attrs: tuple[str, str, str | None, str | None, str]) -> bool:
    group, resource, namespace, name, verb = attrs
    if where is not None and namespace != where:
        return False  # a RoleBinding grants in its namespace only (never cluster-scoped objects)
    if "resourceNames" in rule and name not in rule["resourceNames"]:
        return False  # create carries no name: a named rule never allows it
    return group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]


def test_certificate_jobs_rbac_is_exactly_what_they_call(rendered: dict[str, list[dict[str, Any]]],
                                                         tmp_path: Path) -> None:
    """Each certificate Job's real command, with its rendered environment, against recorded API
    answers (Secret missing, then expired): every request must be allowed by the RBAC bound to
    the Job's ServiceAccount, and every verb of that RBAC must be used by some request."""
    from tests.kube_apiserver import FakeApiServer, recorded

    objs = rendered["default"]
    job_names = {j["metadata"]["name"].rsplit("-", 1)[0]: j["metadata"]["name"] for j in find(objs, "Job")}
    runners = [("Job", job_names[f"{RELEASE}-certs-pre"]), ("Job", job_names[f"{RELEASE}-certs"]),
               ("CronJob", f"{RELEASE}-certs-renew")]
    used: dict[str, set[tuple[str, int, str]]] = {}
    calls: dict[str, set[tuple[str, str]]] = {}
    for kind, name in runners:
        spec = _pod_spec(one(objs, kind, name))
        (container,) = spec["containers"]
        env = env_of(container)
        account = spec["serviceAccountName"]
        granted = _granted(objs, account)
        secret = f"/api/v1/namespaces/{env['COREDUMP_CERTS_NAMESPACE']}/secrets"
        mwc = f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{env['COREDUMP_CERTS_WEBHOOK_CONFIG']}"
        for state in ("missing", "expired"):
            with FakeApiServer() as api:
                if state == "missing":
                    api.route("GET", f"{secret}/{env['COREDUMP_CERTS_SECRET']}", (404, recorded("secret-get-404.json", "certs")))
                    api.route("POST", secret, (201, recorded("secret-create-201.json", "certs")))
                else:
                    api.route("GET", f"{secret}/{env['COREDUMP_CERTS_SECRET']}", (200, recorded("secret-get-200-expired.json", "certs")))
                    api.route("PUT", f"{secret}/{env['COREDUMP_CERTS_SECRET']}", (200, recorded("secret-replace-200.json", "certs")))
                api.route("GET", mwc, (200, recorded("mwc-get-200.json", "certs")))
                api.route("PATCH", mwc, (200, recorded("mwc-patch-200.json", "certs")))
                run_env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "KUBECONFIG", "COREDUMP_"))}
                run_env.update(env, HOME=str(tmp_path),
                               KUBECONFIG=str(api.kubeconfig(tmp_path / f"kubeconfig-{state}", namespace=None, token="t0ken")))
                command = [str(Path(sys.executable).parent / container["command"][0]), *container["command"][1:]]
                proc = subprocess.run(command, env=run_env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
                assert proc.returncode == 0, (name, state, proc.stderr)
                line = json.loads(proc.stderr.strip().splitlines()[-1])
                assert line["event"] == "certs.bootstrap"
                assert line["secret"] == {"missing": "created", "expired": "rotated"}[state]
                assert len(line["webhooksPatched"]) == (0 if "--secret-only" in command else 2)
                for seen in api.seen():
                    attrs = _request_attributes(seen.method, seen.path)
                    allowing = [(role, i, attrs[4]) for role, i, rule, where in granted if _permits(rule, where, attrs)]
                    assert allowing, f"{name}: {seen.method} {seen.path} would be Forbidden for {account}"
                    used.setdefault(account, set()).update(allowing)
                    calls.setdefault(name, set()).add((seen.method, seen.path))
    for account in used:
        every = {(role, i, verb) for role, i, rule, _ in _granted(objs, account) for verb in rule["verbs"]}
        assert every - used[account] == set(), f"{account} is granted verbs no certificate Job uses"
    # The pre-install hook never reads or patches a webhook configuration (it does not exist yet).
    pre, post = job_names[f"{RELEASE}-certs-pre"], job_names[f"{RELEASE}-certs"]
    assert all(not path.startswith("/apis/") for _, path in calls[pre])
    assert calls[post] == calls[f"{RELEASE}-certs-renew"]
    assert {m for m, p in calls[post] if p.startswith("/apis/")} == {"GET", "PATCH"}


def test_cert_manager_alternative(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["cert-manager"]
    # no certificate Jobs; the uninstall hook keeps cert-manager's Secret
    assert [j["metadata"]["name"] for j in find(objs, "Job")] == [f"{RELEASE}-uninstall"]
    assert find(objs, "CronJob") == []
    (job,) = find(objs, "Job")
    assert "COREDUMP_CERTS_SECRET" not in env_of(job["spec"]["template"]["spec"]["containers"][0])
    assert find(objs, "Role", f"{RELEASE}-uninstall") == []
    issuers = {i["metadata"]["name"]: i for i in find(objs, "Issuer")}
    certs = {c["metadata"]["name"]: c for c in find(objs, "Certificate")}
    ca = certs[f"{RELEASE}-ca"]
    serving = certs[f"{RELEASE}-serving"]
    assert ca["spec"]["isCA"] is True
    assert issuers[ca["spec"]["issuerRef"]["name"]]["spec"] == {"selfSigned": {}}
    ca_issuer = issuers[serving["spec"]["issuerRef"]["name"]]
    assert ca_issuer["spec"]["ca"]["secretName"] == ca["spec"]["secretName"]
    deploy = webhook_deployment(objs)
    volumes = {v["name"]: v for v in deploy["spec"]["template"]["spec"]["volumes"]}
    assert serving["spec"]["secretName"] == volumes["tls"]["secret"]["secretName"]
    service = one(objs, "Service")["metadata"]["name"]
    assert f"{service}.{NAMESPACE}.svc" in serving["spec"]["dnsNames"]
    mwc = one(objs, "MutatingWebhookConfiguration")
    assert mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == f"{NAMESPACE}/{RELEASE}-serving"


# --- OpenShift ------------------------------------------------------------------------------


def test_openshift_overlay(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["values-openshift.yaml"]
    scc = one(objs, "SecurityContextConstraints")
    assert scc["allowPrivilegedContainer"] and scc["allowHostPID"] and scc["allowHostDirVolumePlugin"]
    assert not scc["allowHostNetwork"] and scc["users"] == [] and scc["groups"] == []
    use = [r for r in find(objs, "ClusterRole") if any("securitycontextconstraints" in x["resources"] for x in r["rules"])]
    (role,) = use
    assert role["rules"] == [{"apiGroups": ["security.openshift.io"], "resources": ["securitycontextconstraints"],
                              "resourceNames": [scc["metadata"]["name"]], "verbs": ["use"]}]
    binding = one(objs, "RoleBinding", f"{RELEASE}-agent-scc")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == agent_daemonset(objs)["spec"]["template"]["spec"]["serviceAccountName"]
    psc = webhook_deployment(objs)["spec"]["template"]["spec"]["securityContext"]
    assert "runAsUser" not in psc and "fsGroup" not in psc and psc["runAsNonRoot"] is True
    assert find(rendered["default"], "SecurityContextConstraints") == []


# --- helm test and NOTES --------------------------------------------------------------------


def test_helm_test_pod(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["default"]
    pods = find(objs, "Pod")
    (pod,) = pods
    assert hooks(pod) == {"test"}
    (container,) = pod["spec"]["containers"]
    script = container["command"][2]
    compile(script, "test-connection", "exec")
    assert f"https://{RELEASE}.{NAMESPACE}.svc:443/healthz" in script
    volume = pod["spec"]["volumes"][0]["secret"]
    assert volume["secretName"] == f"{RELEASE}-tls" and volume["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def _notes(helm: Path, helm_env: dict[str, str], tmp_path: Path, *args: str) -> str:
    """NOTES.txt rendered through a copy of the chart (helm template does not print NOTES)."""
    chart = tmp_path / "coredump-webhook"
    if not chart.exists():
        shutil.copytree(CHART, chart)
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n"
        '  notes: {{ include (printf "%s/templates/NOTES.txt" .Chart.Name) . | quote }}\n'
    )
    objs = render(helm, helm_env, "--show-only", "templates/zz-notes.yaml", *args, chart=chart)
    return objs[0]["data"]["notes"]


def test_notes_explain_how_to_check(helm: Path, helm_env: dict[str, str], tmp_path: Path) -> None:
    notes = _notes(helm, helm_env, tmp_path)
    assert "port-forward" not in notes  # the page is off by default
    page_notes = _notes(helm, helm_env, tmp_path, "--set", "agent.page.enabled=true")
    assert "port-forward pod/<page pod on the node> 8383" in page_notes
    assert "http://localhost:8383/" in page_notes and "kubectl create token" in page_notes
    assert "deploy/examples/crasher-deployment.yaml" in notes
    assert "coredump list" in notes
    assert f"helm test {RELEASE}" in notes
    assert "failurePolicy is Ignore" in notes
    assert (REPO / "deploy" / "examples" / "crasher-deployment.yaml").is_file()


# --- the cores page (agent.page) ---------------------------------------------------------------


def page_daemonset(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objs, "DaemonSet", f"{RELEASE}-page")


def agent_daemonset_named(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objs, "DaemonSet", f"{RELEASE}-agent")


def test_page_is_off_by_default(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for variant in ("default", "values-gke-cos.yaml", "values-bottlerocket.yaml", "values-openshift.yaml"):
        objs = rendered[variant]
        assert [o for o in objs if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "page"] == []
        assert find(objs, "DaemonSet", f"{RELEASE}-page") == []
    assert "app.kubernetes.io/component: page" not in (REPO / "deploy" / "coredump-webhook.yaml").read_text()


def test_page_needs_the_agent(helm: Path, helm_env: dict[str, str]) -> None:
    objs = render(helm, helm_env, "--set", "agent.page.enabled=true", "--set", "agent.enabled=false")
    assert find(objs, "DaemonSet") == [] and find(objs, "ServiceAccount", f"{RELEASE}-page") == []


def test_page_does_not_restart_the_agents(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """agent.page stays out of the agent's checksum: enabling or tuning the page leaves the agent
    DaemonSet byte-for-byte as it was (a restart would briefly leave nodes without the helper)."""
    assert agent_daemonset_named(rendered["page"]) == agent_daemonset_named(rendered["default"])


@pytest.mark.parametrize("tls", [True, False])
def test_page_daemonset_is_restricted_and_read_only(rendered: dict[str, list[dict[str, Any]]], helm: Path,
                                                     helm_env: dict[str, str], tls: bool) -> None:
    from webhook import constants
    from webhook.inspect.page_command import page

    objs = rendered["page"] if tls else render(helm, helm_env, "--set", "agent.page.enabled=true")
    agent = agent_daemonset_named(objs)["spec"]["template"]["spec"]
    ds = page_daemonset(objs)
    pod = ds["spec"]["template"]["spec"]
    # Its own pod: no host PID namespace (uid 0 there could signal every host root process),
    # no host network, no priority class; its own ServiceAccount.
    assert "hostPID" not in pod and "hostNetwork" not in pod and "hostIPC" not in pod
    assert "priorityClassName" not in pod
    assert pod["serviceAccountName"] == f"{RELEASE}-page" != agent["serviceAccountName"]
    assert pod["automountServiceAccountToken"] is True  # TokenReview + SubjectAccessReview
    # Wherever the agent runs.
    assert (pod["tolerations"], pod["nodeSelector"]) == (agent["tolerations"], agent["nodeSelector"])
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    # uid 0 to own-read the agent's root-only files, and nothing else: every capability dropped.
    assert sc["runAsUser"] == 0 and sc["runAsNonRoot"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # The node location, read-only, and only it (subPath: no socket, spool or helper binary).
    host_dir = constants.DEFAULT_HOST_DIR
    volumes = {v["name"]: v for v in pod["volumes"]}
    host_mounts = [m for m in container["volumeMounts"] if "hostPath" in volumes[m["name"]]]
    assert host_mounts == [{"name": "host-dir", "mountPath": f"{host_dir}/cores", "subPath": "cores", "readOnly": True}]
    assert volumes["host-dir"]["hostPath"] == {"path": host_dir, "type": "DirectoryOrCreate"}
    assert all(m.get("readOnly") for m in container["volumeMounts"] if m["name"] != "tmp")
    assert "emptyDir" in volumes["tmp"]
    # The command, its variables and flags exist in `coredump page`.
    env = env_of(container)
    assert container["args"] == ["page"]
    assert set(env) <= _click_envvars(page), set(env) - _click_envvars(page)
    assert env["COREDUMP_PAGE_CORES_ROOT"] == f"{host_dir}/cores"
    port = container["ports"][0]
    assert port["name"] == "page" and env["COREDUMP_PAGE_BIND"] == f"0.0.0.0:{port['containerPort']}"
    assert "COREDUMP_PAGE_INSECURE_NO_AUTH" not in env  # the chart never turns RBAC off
    scheme = "HTTPS" if tls else "HTTP"
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "page", "scheme": scheme}
    assert container["resources"]["limits"]["memory"] and container["resources"]["requests"]["cpu"]
    if tls:
        assert volumes["tls"]["secret"]["secretName"] == "coredump-page-tls"
        (tls_mount,) = [m for m in container["volumeMounts"] if m["name"] == "tls"]
        assert env["COREDUMP_PAGE_CERT_DIR"] == tls_mount["mountPath"]
        service = one(objs, "Service", f"{RELEASE}-page")
        assert service["spec"]["selector"] == ds["spec"]["selector"]["matchLabels"]
        assert service["spec"]["ports"][0]["targetPort"] == "page"
        assert service["spec"]["type"] == "ClusterIP"
    else:
        assert "COREDUMP_PAGE_CERT_DIR" not in env and "tls" not in volumes
        assert find(objs, "Service", f"{RELEASE}-page") == []  # agent.page.service is off by default


def _page_api_calls() -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) of every Kubernetes API call the page can make: the functions of
    webhook/inspect/kube.py that the page's modules call, followed through kube.py's own calls;
    each client method's HTTP method and path are read from the kubernetes client itself."""
    import ast
    import inspect
    import re

    from kubernetes import client as k8s

    kube_tree = ast.parse((REPO / "webhook" / "inspect" / "kube.py").read_text())
    functions = {n.name: n for n in kube_tree.body if isinstance(n, ast.FunctionDef)}
    roots = set()
    for name in ("page.py", "page_server.py"):
        tree = ast.parse((REPO / "webhook" / "inspect" / name).read_text())
        roots |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                  and isinstance(n.value, ast.Name) and n.value.id == "kube"}
    assert "make_authorizer" in roots  # the page's RBAC rule
    assert roots <= set(functions) | {"KubeError"}, roots
    seen: set[str] = set()
    todo = [r for r in roots if r in functions]
    calls: set[tuple[str, str, str]] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for node in ast.walk(functions[name]):
            if isinstance(node, ast.Name) and node.id in functions:
                todo.append(node.id)
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner = node.func.value  # client.SomeApi(api).method(...)
            if not (isinstance(owner, ast.Call) and isinstance(owner.func, ast.Attribute)
                    and owner.func.attr.endswith("Api")):
                continue
            cls = getattr(k8s, owner.func.attr)
            source = inspect.getsource(getattr(cls, f"_{node.func.attr}_serialize"))
            method = re.search(r"method='([A-Z]+)'", source).group(1)
            path = re.search(r"resource_path='([^']+)'", source).group(1).replace("{namespace}", "ns")
            group, resource, _, _, verb = _request_attributes(method, path)
            calls.add((group, resource, verb))
    return calls


def test_page_rbac_is_what_the_page_calls(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The page's ServiceAccount is granted exactly the API calls its code can make, the agent's
    RBAC stays exactly the agent's calls with the page on, and nothing else is bound to it."""
    calls = _page_api_calls()
    assert calls == {("authentication.k8s.io", "tokenreviews", "create"),
                     ("authorization.k8s.io", "subjectaccessreviews", "create")}
    objs = rendered["page"]
    granted = _granted(objs, f"{RELEASE}-page")
    assert {role for role, *_ in granted} == {f"ClusterRole/{RELEASE}-page"}
    assert {(g, r, v) for _, _, rule, _ in granted for g in rule["apiGroups"] for r in rule["resources"]
            for v in rule["verbs"]} == calls
    assert all("resourceNames" not in rule for _, _, rule, _ in granted)
    agent_role = one(objs, "ClusterRole", f"{RELEASE}-agent")
    assert {(g, r, v) for rule in agent_role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
            for v in rule["verbs"]} == _agent_api_calls() - {("apps", "daemonsets", "get")}
    assert {o["metadata"]["name"] for o in find(objs, "ClusterRole")} == {
        f"{RELEASE}-agent", f"{RELEASE}-certs", f"{RELEASE}-page", f"{RELEASE}-uninstall", f"{RELEASE}-webhook",
        f"{RELEASE}-coredumps-view", f"{RELEASE}-coredumps-edit"}


def test_index_page_is_one_restricted_deployment_with_no_rights_but_token_review(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    """indexPage: the Dashboard model. Its account may only review tokens; users' own tokens list
    CoreDumps and download cores. Off by default."""
    from click.testing import CliRunner

    from webhook.cli import main

    assert find(rendered["default"], "Deployment", f"{RELEASE}-index-page") == []
    objs = rendered["index-page"]
    name = f"{RELEASE}-index-page"
    assert _rules(objs, "ClusterRole", name) == {("authentication.k8s.io", "tokenreviews", (), ("create",))}
    binding = one(objs, "ClusterRoleBinding", name)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}]
    deploy = one(objs, "Deployment", name)
    pod = deploy["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == name and pod["automountServiceAccountToken"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["seccompProfile"] == {
        "type": "RuntimeDefault"}
    (c,) = pod["containers"]
    assert c["args"] == ["page", "--index"]
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}
    assert "hostPath" not in json.dumps(pod) and "hostPID" not in pod
    env = env_of(c)
    assert env["COREDUMP_PAGE_CERT_DIR"] == "/etc/coredump-page/tls"
    help_text = CliRunner().invoke(main, ["page", "--help"]).output
    assert "--index" in help_text and all(k in help_text for k in env)  # every env var is a real option
    svc = one(objs, "Service", name)
    assert svc["spec"]["ports"][0]["name"] == "https" and svc["spec"]["ports"][0]["targetPort"] == "page"


# --- production: rollouts, evictions and the agent's stop -----------------------------------


def test_grace_period_covers_the_agents_stop_timeout(helm: Path, helm_env: dict[str, str]) -> None:
    """The pod's grace period must outlast the agent's own stop wait (in-flight dumps), else
    the kubelet kills the agent mid-dump: a longer stop timeout needs a longer grace period."""
    from webhook.agent.settings import AgentSettings

    default_grace = yaml.safe_load((CHART / "values.yaml").read_text())["agent"]["terminationGracePeriodSeconds"]
    assert default_grace >= AgentSettings().stop_timeout_seconds + 20
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["properties"]["agent"]["properties"]["terminationGracePeriodSeconds"]["minimum"] == \
        AgentSettings().stop_timeout_seconds + 20
    proc = run_helm(helm, helm_env, "template", RELEASE, str(CHART), "--set",
                    "agent.settings.stop_timeout_seconds=120", check=False)
    assert proc.returncode != 0 and "agent.terminationGracePeriodSeconds (60)" in proc.stderr, proc.stderr
    objs = render(helm, helm_env, "--set-json", "agent.settings.stop_timeout_seconds=120.5",
                  "--set", "agent.terminationGracePeriodSeconds=141")
    pod = agent_daemonset(objs)["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 141
    assert env_of(pod["containers"][0])["COREDUMP_AGENT_STOP_TIMEOUT_SECONDS"] == "120.5"
    proc = run_helm(helm, helm_env, "template", RELEASE, str(CHART), "--set-json", "agent.settings.stop_timeout_seconds=120.5",
                    "--set", "agent.terminationGracePeriodSeconds=140", check=False)
    assert proc.returncode != 0  # 120.5 rounds up to 121, + 20 = 141


# --- production: only annotated objects reach the webhook -----------------------------------


def _cel(expression: str) -> Any:
    import celpy

    env = celpy.Environment()
    return env.program(env.compile(expression))


def _matches(webhook: dict[str, Any], obj: dict[str, Any], username: str = "alice") -> bool:
    """Every matchCondition true (the API server ANDs them), evaluated by a real CEL runtime."""
    import celpy

    activation = {"object": celpy.json_to_cel(obj), "oldObject": celpy.json_to_cel(None),
                  "request": celpy.json_to_cel({"userInfo": {"username": username, "groups": []},
                                                "operation": "CREATE"})}
    results = []
    for condition in webhook["matchConditions"]:
        value = _cel(condition["expression"]).evaluate(activation)
        assert isinstance(value, celpy.celtypes.BoolType), (condition, value)  # never an error
        results.append(bool(value))
    return all(results)


def _annotated(pattern_key: str | None) -> dict[str, Any]:
    return {"annotations": {pattern_key: "/data/core.%e.%p", "other": "x"}} if pattern_key else {"labels": {"a": "b"}}


def test_match_conditions_send_only_annotated_objects(rendered: dict[str, list[dict[str, Any]]]) -> None:
    from webhook import constants

    mwc = one(rendered["default"], "MutatingWebhookConfiguration")
    hooks = {h["name"]: h for h in mwc["webhooks"]}
    pods, workloads = hooks["pods.coredump-webhook.io"], hooks["workloads.coredump-webhook.io"]
    keys = list(constants.PATTERN_ANNOTATIONS)
    for key in keys:  # the chart's CEL names exactly the annotations the webhook reads
        assert all(key in c["expression"] for c in pods["matchConditions"][:1] + workloads["matchConditions"][:1])
    pod = {"apiVersion": "v1", "kind": "Pod", "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    for key in keys:
        assert _matches(pods, {**pod, "metadata": _annotated(key)})
    assert not _matches(pods, {**pod, "metadata": _annotated(None)})
    assert not _matches(pods, {**pod, "metadata": {"annotations": {"alibabacloud.com/core-pattern-x": "/d"}}})
    assert not _matches(pods, {**pod, "metadata": {}})
    assert not _matches(pods, pod)
    # Pods are created by controllers: never skipped for the user who writes them.
    assert _matches(pods, {**pod, "metadata": _annotated(keys[0])},
                    username="system:serviceaccount:kube-system:replicaset-controller")

    def deployment(template_meta: dict[str, Any] | None, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        template = {"spec": pod["spec"]} if template_meta is None else {"metadata": template_meta, "spec": pod["spec"]}
        return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta or {"name": "web"},
                "spec": {"selector": {}, "template": template}}

    def cronjob(template_meta: dict[str, Any] | None) -> dict[str, Any]:
        template = {"spec": pod["spec"]} if template_meta is None else {"metadata": template_meta, "spec": pod["spec"]}
        return {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly"},
                "spec": {"schedule": "@daily", "jobTemplate": {"spec": {"template": template}}}}

    def podtemplate(template_meta: dict[str, Any] | None) -> dict[str, Any]:
        template = {"spec": pod["spec"]} if template_meta is None else {"metadata": template_meta, "spec": pod["spec"]}
        return {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}

    for key in keys:
        assert _matches(workloads, deployment(_annotated(key)))
        assert _matches(workloads, cronjob(_annotated(key)))
        assert _matches(workloads, podtemplate(_annotated(key)))  # its template is at the top level
        assert _matches(workloads, deployment(_annotated(key)) | {"kind": "ReplicationController", "apiVersion": "v1"})
        # misplaced on the workload itself: still sent, so the webhook can warn
        assert _matches(workloads, deployment(None, {"name": "web", "annotations": {key: "/d/core"}}))
    for unannotated in (deployment(None), deployment(_annotated(None)), cronjob(None), cronjob(_annotated(None)),
                        podtemplate(None), podtemplate(_annotated(None)),
                        {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {}, "spec": {}}):
        assert not _matches(workloads, unannotated)
    # What users write is checked, what controllers copy from a checked template is not.
    rs = deployment(_annotated(keys[0])) | {"kind": "ReplicaSet"}
    assert _matches(workloads, rs, username="alice")
    assert _matches(workloads, rs, username="system:serviceaccount:argocd:argocd-application-controller")
    for controller in ("system:serviceaccount:kube-system:deployment-controller",
                       "system:serviceaccount:kube-system:cronjob-controller",
                       "system:serviceaccount:kube-system:generic-garbage-collector",
                       "system:kube-controller-manager"):
        assert not _matches(workloads, rs, username=controller), controller
    # objectSelector stays an extra opt-in, and the README says which requests are skipped.
    assert "objectSelector" not in pods
    readme = (REPO / "README.md").read_text()
    assert "matchConditions" in readme and "deployment-controller" in readme


def test_match_conditions_validate_and_skip_list_can_be_emptied(helm: Path, helm_env: dict[str, str]) -> None:
    objs = render(helm, helm_env, "--set-json", "webhook.skipWorkloadUsers=[]")
    hooks = {h["name"]: h for h in one(objs, "MutatingWebhookConfiguration")["webhooks"]}
    assert [c["name"] for c in hooks["workloads.coredump-webhook.io"]["matchConditions"]] == [
        "has-core-pattern-annotation"]
    for version in ("1.29.0", "1.33.0"):
        kubernetes_validate.validate(one(objs, "MutatingWebhookConfiguration"), version, strict=True)
    proc = run_helm(helm, helm_env, "template", RELEASE, str(CHART), "--set-json",
                    "webhook.skipWorkloadUsers=[\"x' || true || '\"]", check=False)
    assert proc.returncode != 0 and "skipWorkloadUsers" in proc.stderr  # no CEL injection through values


def test_uninstall_removes_the_webhook_configuration_first(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """A pre-delete hook Job runs `coredump certs remove` for exactly the release's webhook
    configuration and TLS Secret, with its own hook RBAC; deploy/ has none of it."""
    from webhook.certs.commands import certs

    objs = rendered["default"]
    job = one(objs, "Job", f"{RELEASE}-uninstall")
    assert hooks(job) == {"pre-delete"}
    assert job["metadata"]["annotations"]["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["coredump", "certs", "remove"]
    env = env_of(container)
    assert env["COREDUMP_CERTS_WEBHOOK_CONFIG"] == one(objs, "MutatingWebhookConfiguration")["metadata"]["name"]
    assert env["COREDUMP_CERTS_SECRET"] == f"{RELEASE}-tls"
    assert set(env) <= _click_envvars(certs.commands["remove"])
    assert pod["serviceAccountName"] == f"{RELEASE}-uninstall"
    for kind in ("ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"):
        (obj,) = [o for o in find(objs, kind) if o["metadata"]["name"].endswith("-uninstall")]
        assert hooks(obj) == {"pre-delete"}
        assert int(obj["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
            job["metadata"]["annotations"]["helm.sh/hook-weight"])  # RBAC before the Job
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    readme = (REPO / "README.md").read_text()
    assert "pre-delete" in readme and "coredump certs remove" in readme


# --- production: monitoring that ships with the chart ---------------------------------------


def _exported_metrics() -> set[str]:
    """Every sample name the code's prometheus registries expose (agent crash path, agent
    server, webhook), collected from the real registries, not typed here."""
    from prometheus_client import CollectorRegistry

    from webhook.agent.inflight import RecoveryMetrics
    from webhook.agent.kernellog import DropMetrics
    from webhook.agent.metrics import AgentMetrics
    from webhook.agent.server_metrics import ServerMetrics
    from webhook.server.metrics import Metrics

    registries = [CollectorRegistry() for _ in range(4)]
    AgentMetrics(registries[0])
    ServerMetrics(registries[1])
    DropMetrics(registries[2])
    RecoveryMetrics(registries[3])
    registries.append(Metrics().registry)
    names: set[str] = set()
    for registry in registries:
        for family in registry.collect():
            names.add(family.name)
            kind = family.type
            if kind == "counter":
                names.add(family.name + "_total")
            elif kind == "histogram":
                names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
    return names


#: PromQL words that are not metric names.
_PROMQL_WORDS = {"sum", "by", "without", "rate", "increase", "histogram_quantile", "max", "min", "avg", "count",
                 "time", "or", "and", "unless", "on", "ignoring", "group_left", "group_right", "le", "bool",
                 "offset", "vector", "abs", "clamp_min", "irate", "delta", "topk", "label_values"}


def _metric_names(expr: str) -> set[str]:
    """Identifiers of an expression outside label matchers, strings and ranges: metric names."""
    import re

    bare = re.sub(r"\{[^}]*\}", "", re.sub(r'"[^"]*"', "", expr))
    bare = re.sub(r"\[[^\]]*\]", "", bare)
    bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", bare)  # label lists
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", bare))
    return {w for w in words if w not in _PROMQL_WORDS and not w.isdigit()}


def _monitoring(helm: Path, helm_env: dict[str, str]) -> list[dict[str, Any]]:
    return render(helm, helm_env, *MONITORING)


def _rule_groups(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return one(objs, "PrometheusRule")["spec"]["groups"]


def _dashboard(objs: list[dict[str, Any]]) -> dict[str, Any]:
    cm = one(objs, "ConfigMap", f"{RELEASE}-dashboard")
    (raw,) = cm["data"].values()
    return json.loads(raw)


def _dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def test_monitoring_is_opt_in(rendered: dict[str, list[dict[str, Any]]]) -> None:
    kinds = {o["kind"] for o in rendered["default"]}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule", "NetworkPolicy"}
    assert find(rendered["default"], "ConfigMap", f"{RELEASE}-dashboard") == []


def test_every_metric_the_monitoring_names_is_exported(rendered: dict[str, list[dict[str, Any]]]) -> None:
    exported = _exported_metrics()
    assert {"coredump_agent_cores_total", "coredump_webhook_requests_total",
            "coredump_webhook_certificate_expiry_timestamp_seconds"} <= exported
    objs = rendered["monitoring"]
    exprs = [r["expr"] for g in _rule_groups(objs) for r in g["rules"]]
    exprs += [e.replace("$__rate_interval", "5m") for e in _dashboard_exprs(_dashboard(objs))]
    variable = _dashboard(objs)["templating"]["list"][1]["definition"]  # label_values(METRIC, LABEL)
    exprs.append(variable.removeprefix("label_values(").split(",")[0])
    used: set[str] = set()
    for expr in exprs:
        names = _metric_names(expr)
        assert names, expr
        assert names <= exported, f"{expr}: not exported by the code: {names - exported}"
        used |= names
    # the alerts the issue asks for, by what they watch
    alerts = {r["alert"]: r for g in _rule_groups(objs) for r in g["rules"]}
    assert {"CoredumpCoresLost", "CoredumpCoresPartial", "CoredumpCoresDropped", "CoredumpWebhookErrors",
            "CoredumpWebhookSlow", "CoredumpWebhookCertificateExpiring",
            "CoredumpWebhookCertificateRenewalFailing"} <= set(alerts)
    assert 'outcome="failed"' in alerts["CoredumpCoresLost"]["expr"]
    assert 'outcome="partial"' in alerts["CoredumpCoresPartial"]["expr"]


def test_prometheus_rules_and_dashboard_parse_with_promtool(rendered: dict[str, list[dict[str, Any]]],
                                                            tmp_path: Path) -> None:
    """The real PromQL parser (promtool from Debian's prometheus package) checks the rules, and
    the dashboard's expressions as recording rules (Grafana's variables given values)."""
    from tests.suite_support import which_or_fail

    promtool = which_or_fail("promtool")
    objs = rendered["monitoring"]
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": _rule_groups(objs)}))
    proc = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dashboard = _dashboard(objs)
    records = [{"record": f"dashboard:expr{i}", "expr": e.replace("$__rate_interval", "5m").replace("$namespace", ".*")}
               for i, e in enumerate(_dashboard_exprs(dashboard))]
    panels = tmp_path / "dashboard-exprs.yaml"
    panels.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    proc = subprocess.run([promtool, "check", "rules", str(panels)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # a broken expression is refused (the check can fail)
    panels.write_text(yaml.safe_dump({"groups": [{"name": "bad", "rules": [{"record": "x", "expr": "sum(rate(x[5m]"}]}]}))
    assert subprocess.run([promtool, "check", "rules", str(panels)], capture_output=True, timeout=60).returncode != 0


def test_alerts_fire_on_the_series_the_code_exports(rendered: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    """`promtool test rules`: synthetic series named and labelled as the agent and webhook
    export them (labels of the PodMonitor/ServiceMonitor targets added) fire the alerts."""
    from tests.suite_support import which_or_fail

    promtool = which_or_fail("promtool")
    groups = copy.deepcopy(_rule_groups(rendered["monitoring"]))
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)  # the test is about the expressions
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    target = 'namespace="coredump-webhook",pod="coredump-webhook-agent-x1"'
    hook = 'namespace="coredump-webhook",pod="coredump-webhook-7d9-a"'
    now_plus_10d = 10 * 86400
    tests = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [
            {"series": f'coredump_agent_cores_total{{outcome="failed",reason="commit_failed",destination="pod",{target}}}',
             "values": "0 0 0 1 1 1 1 1"},
            {"series": f'coredump_agent_cores_total{{outcome="partial",reason="max_core_bytes",destination="pod",{target}}}',
             "values": "0 0 0 0 2 2 2 2"},
            {"series": f'coredump_agent_cores_total{{outcome="written",reason="registered",destination="pod",{target}}}',
             "values": "0+5x7"},
            {"series": f'coredump_agent_spool_deliveries_total{{result="failed",{target}}}', "values": "0 0 1 1 1 1 1 1"},
            {"series": f'coredump_agent_dump_timeouts_total{{{target}}}', "values": "0x7"},
            {"series": f'coredump_agent_stop_cut_total{{{target}}}', "values": "0x7"},
            {"series": f'coredump_webhook_requests_total{{endpoint="mutate",outcome="error",{hook}}}', "values": "0+10x30"},
            {"series": f'coredump_webhook_requests_total{{endpoint="mutate",outcome="patched",{hook}}}', "values": "0+10x30"},
            {"series": f'coredump_webhook_request_duration_seconds_bucket{{endpoint="mutate",le="1.0",{hook}}}',
             "values": "0+1x30"},
            {"series": f'coredump_webhook_request_duration_seconds_bucket{{endpoint="mutate",le="2.5",{hook}}}',
             "values": "0+20x30"},
            {"series": f'coredump_webhook_request_duration_seconds_bucket{{endpoint="mutate",le="+Inf",{hook}}}',
             "values": "0+20x30"},
            {"series": f'coredump_webhook_certificate_expiry_timestamp_seconds{{{hook}}}',
             "values": f"{now_plus_10d}x30"},
        ],
        "alert_rule_test": [
            {"eval_time": "7m", "alertname": "CoredumpCoresLost", "exp_alerts": [{"exp_labels": {
                "severity": "critical", "namespace": "coredump-webhook", "pod": "coredump-webhook-agent-x1",
                "reason": "commit_failed"}}]},
            {"eval_time": "7m", "alertname": "CoredumpCoresPartial", "exp_alerts": [{"exp_labels": {
                "severity": "warning", "namespace": "coredump-webhook", "pod": "coredump-webhook-agent-x1",
                "reason": "max_core_bytes"}}]},
            {"eval_time": "7m", "alertname": "CoredumpCoresDropped", "exp_alerts": [{"exp_labels": {
                "severity": "warning", "namespace": "coredump-webhook", "pod": "coredump-webhook-agent-x1"}}]},
            {"eval_time": "1m", "alertname": "CoredumpCoresLost", "exp_alerts": []},
            {"eval_time": "25m", "alertname": "CoredumpWebhookErrors", "exp_alerts": [{"exp_labels": {
                "severity": "warning", "namespace": "coredump-webhook"}}]},
            {"eval_time": "25m", "alertname": "CoredumpWebhookSlow", "exp_alerts": [{"exp_labels": {
                "severity": "warning", "namespace": "coredump-webhook"}}]},
            {"eval_time": "5m", "alertname": "CoredumpWebhookCertificateExpiring", "exp_alerts": [{"exp_labels": {
                "severity": "critical", "namespace": "coredump-webhook"}}]},
            {"eval_time": "5m", "alertname": "CoredumpWebhookCertificateRenewalFailing", "exp_alerts": [{"exp_labels": {
                "severity": "warning", "namespace": "coredump-webhook"}}]},
        ],
    }]}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    proc = subprocess.run([promtool, "test", "rules", "tests.yaml"], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_monitoring_objects(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["monitoring"]
    sm = one(objs, "ServiceMonitor")
    (endpoint,) = sm["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["scheme"], endpoint["path"]) == ("https", "https", "/metrics")
    assert endpoint["tlsConfig"]["ca"]["secret"] == {"name": f"{RELEASE}-tls", "key": "ca.crt"}
    assert endpoint["tlsConfig"]["serverName"] == f"{RELEASE}.{NAMESPACE}.svc"
    service = one(objs, "Service", RELEASE)
    assert sm["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert "https" in {p["name"] for p in service["spec"]["ports"]}
    pm = one(objs, "PodMonitor")
    agent_pod = agent_daemonset(objs)["spec"]["template"]
    assert pm["spec"]["selector"]["matchLabels"].items() <= agent_pod["metadata"]["labels"].items()
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] in {p["name"] for p in agent_pod["spec"]["containers"][0]["ports"]}
    cm = one(objs, "ConfigMap", f"{RELEASE}-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = _dashboard(objs)
    assert dashboard["uid"] == "coredump-webhook" and len(dashboard["panels"]) >= 8
    assert all(t["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"] for t in p["targets"])


def test_network_policies(rendered: dict[str, list[dict[str, Any]]], helm: Path, helm_env: dict[str, str]) -> None:
    objs = rendered["monitoring"]
    webhook = one(objs, "NetworkPolicy", RELEASE)
    pod = webhook_deployment(objs)["spec"]["template"]
    assert webhook["spec"]["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert webhook["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = webhook["spec"]["ingress"]
    assert rule["ports"] == [{"port": "https", "protocol": "TCP"}]
    assert {"ipBlock": {"cidr": "10.0.0.0/24"}} in rule["from"]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}} in rule["from"]
    agent = one(objs, "NetworkPolicy", f"{RELEASE}-agent")
    (rule,) = agent["spec"]["ingress"]
    assert rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    # nothing listed: the agents accept no one (but their node), the webhook its port from anywhere
    bare = render(helm, helm_env, "--set", "networkPolicy.enabled=true")
    assert one(bare, "NetworkPolicy", f"{RELEASE}-agent")["spec"]["ingress"] == []
    assert one(bare, "NetworkPolicy", RELEASE)["spec"]["ingress"] == [{"ports": [{"port": "https", "protocol": "TCP"}]}]


def test_notes_point_at_the_monitoring(helm: Path, helm_env: dict[str, str], tmp_path: Path) -> None:
    assert "Monitoring:" not in _notes(helm, helm_env, tmp_path)
    notes = _notes(helm, helm_env, tmp_path, "--set", "monitoring.prometheusRule.enabled=true")
    assert "PrometheusRule" in notes and "monitoring.labels" in notes
    assert "sees its DaemonSet gone" in _notes(helm, helm_env, tmp_path)


def test_registry_platform_defaults_to_the_webhook_nodes_architecture(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """By default the chart sets no platform: `coredump serve` then picks its own node's
    (linux/amd64 or linux/arm64, the image being multi-platform); a set value is passed on."""
    from webhook.registry.platforms import host_platform
    from webhook.registry.settings import RegistrySettings

    container = webhook_deployment(rendered["default"])["spec"]["template"]["spec"]["containers"][0]
    env = env_of(container)
    assert "COREDUMP_REGISTRY_PLATFORM" not in env
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["registry"]["platform"] == ""
    assert RegistrySettings(platform=values["registry"]["platform"]).platform == host_platform()
