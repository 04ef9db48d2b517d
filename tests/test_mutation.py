"""The pure mutation: every step of issue 2, Kubernetes command/args semantics, idempotence.

Every patched pod is applied with jsonpatch and validated strictly against the 1.31 schema.
"""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

import pytest
from admission_support import (
    PATTERN,
    Image,
    TableResolver,
    W,
    annotations_of,
    container,
    find,
    make_pod,
    mutate,
    mutate_apply,
    validate,
)
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from webhook import constants as C
from webhook.admission.mutate import mutate_pod
from webhook.admission.options import parse_coredump_filter, parse_size
from webhook.admission.patch import MAX_WARNING, escape_pointer
from webhook.admission.podspec import covers
from webhook.admission.settings import AdmissionSettings
from webhook.pattern import PatternError, parse

IMG = "registry.example.com/app:1"


# --- step 7 / step 1: when nothing happens, and the pattern ------------------------------------


def test_pod_without_annotation_gets_nothing() -> None:
    result = mutate(make_pod(pattern=None))
    assert result.allowed and result.patch == [] and result.warnings == []


def test_pod_already_injected_gets_empty_patch() -> None:
    prepared, _ = mutate_apply(make_pod())
    assert mutate(prepared).patch == [] and mutate(prepared).warnings == []


def test_status_annotation_without_the_injected_parts_does_not_skip_preparation() -> None:
    """A user-set (or copied) status annotation is only the pod's word: prepare it anyway."""
    pod = make_pod(annotations={C.ANN_STATUS: C.STATUS_INJECTED})
    after, result = mutate_apply(pod)
    assert any(c["name"].startswith(C.INSTALLER_CONTAINER) for c in after["spec"]["initContainers"])
    assert after["spec"]["containers"][0]["command"][0] == W if after["spec"]["containers"][0].get("command") else True
    assert any("lacks the injected parts" in w for w in result.warnings)
    # half the parts (an installer but no wrapper mount) is not prepared either
    half = make_pod(annotations={C.ANN_STATUS: C.STATUS_INJECTED})
    half["spec"]["initContainers"] = [after["spec"]["initContainers"][0]]
    assert mutate(half).patch != []


def test_other_annotations_only_get_nothing() -> None:
    pod = make_pod(pattern=None, annotations={C.ANN_MAX_SIZE: "bogus"})
    result = mutate(pod)
    assert result.allowed and result.patch == []


@pytest.mark.parametrize(
    "raw, reason",
    [
        ("|/bin/sh -c 'id'", "pipe"),
        ("/data/../etc/core", "'..'"),
        ("/data/core\n-%p", "control character"),
        ("/data/" + "x" * 130, "127"),
        ("/data/core-%z", "unknown specifier"),
        ("", "empty"),
        ("/core-%p", "directory is '/'"),
    ],
)
def test_invalid_patterns_are_refused_naming_annotation_and_reason(raw: str, reason: str) -> None:
    result = mutate(make_pod(pattern=raw))
    assert not result.allowed
    assert result.patch == []
    assert result.message.startswith(f"annotation {C.ANN_PATTERN}: ")
    assert reason in result.message


def test_eci_annotation_alone_is_used_and_named_in_refusals() -> None:
    after, result = mutate_apply(make_pod(pattern=None, annotations={C.ANN_PATTERN_ECI: "/pod/data/dump/core-eci"}))
    assert annotations_of(after)[C.ANN_EFFECTIVE_PATTERN] == "/pod/data/dump/core-eci"
    refused = mutate(make_pod(pattern=None, annotations={C.ANN_PATTERN_ECI: "|/x"}))
    assert not refused.allowed and refused.message.startswith(f"annotation {C.ANN_PATTERN_ECI}: ")


def test_acs_wins_over_eci_with_a_warning() -> None:
    pod = make_pod(annotations={C.ANN_PATTERN_ECI: "/eci/core"})
    after, result = mutate_apply(pod)
    assert annotations_of(after)[C.ANN_EFFECTIVE_PATTERN] == PATTERN
    assert any(C.ANN_PATTERN in w and "wins" in w for w in result.warnings)
    # The losing annotation is not even validated: ACS is the one that counts.
    assert mutate(make_pod(annotations={C.ANN_PATTERN_ECI: "|/bad"})).allowed


def test_same_pattern_in_both_annotations_gives_no_warning() -> None:
    _, result = mutate_apply(make_pod(annotations={C.ANN_PATTERN_ECI: PATTERN}))
    assert not any("wins" in w for w in result.warnings)


def test_relative_pattern_is_admitted_without_volume() -> None:
    after, result = mutate_apply(make_pod(pattern="core-%e"))
    assert annotations_of(after)[C.ANN_CORE_VOLUME] == ""
    assert [v["name"] for v in after["spec"]["volumes"]] == [C.WRAPPER_VOLUME]
    assert any("working directory" in w for w in result.warnings)
    assert any("relative pattern" in w for w in result.warnings)
    # still registered and wrapped: the agent writes into the process's cwd
    c = after["spec"]["containers"][0]
    assert find(c["env"], C.ENV_PATTERN)["value"] == "core-%e"


# --- step 2: the volume -------------------------------------------------------------------------


def test_default_emptydir_at_pattern_directory_in_every_target() -> None:
    pod = make_pod([container("a", command=["/a"]), container("b", command=["/b"])])
    after, result = mutate_apply(pod)
    vol = find(after["spec"]["volumes"], C.CORE_VOLUME)
    assert vol == {"name": C.CORE_VOLUME, "emptyDir": {}}
    for c in after["spec"]["containers"]:
        assert {"name": C.CORE_VOLUME, "mountPath": "/data/dump-a"} in c["volumeMounts"]
    assert annotations_of(after)[C.ANN_CORE_VOLUME] == f"{C.CORE_VOLUME}@/data/dump-a"
    assert any("emptyDir" in w for w in result.warnings)


def test_emptydir_size_limit_from_settings() -> None:
    after, _ = mutate_apply(make_pod(), AdmissionSettings(empty_dir_size_limit="4Gi"))
    assert find(after["spec"]["volumes"], C.CORE_VOLUME)["emptyDir"] == {"sizeLimit": "4Gi"}


def test_injected_names_never_collide() -> None:
    volumes = [
        {"name": C.CORE_VOLUME, "emptyDir": {}},
        {"name": C.CORE_VOLUME + "-2", "emptyDir": {}},
        {"name": C.WRAPPER_VOLUME, "emptyDir": {}},
    ]
    c = container(volumeMounts=[{"name": n["name"], "mountPath": f"/u/{i}"} for i, n in enumerate(volumes)])
    init = [container(C.INSTALLER_CONTAINER, command=["/x"])]
    after, _ = mutate_apply(make_pod([c], volumes=volumes, initContainers=init))
    names = [v["name"] for v in after["spec"]["volumes"]]
    assert names[3:] == [C.CORE_VOLUME + "-3", C.WRAPPER_VOLUME + "-2"]
    assert after["spec"]["initContainers"][0]["name"] == C.INSTALLER_CONTAINER + "-2"
    assert annotations_of(after)[C.ANN_CORE_VOLUME] == f"{C.CORE_VOLUME}-3@/data/dump-a"


def test_user_volume_at_parent_is_reused_with_subpath_in_other_targets() -> None:
    nas = {"name": "nas", "mountPath": "/data", "subPath": "cores"}
    pod = make_pod(
        [container("app", command=["/app"], volumeMounts=[nas]), container("sidecar", command=["/s"])],
        volumes=[{"name": "nas", "nfs": {"server": "nas.example.com", "path": "/"}}],
    )
    after, _ = mutate_apply(pod)
    assert [v["name"] for v in after["spec"]["volumes"]] == ["nas", C.WRAPPER_VOLUME]
    app, sidecar = after["spec"]["containers"]
    assert [m for m in app["volumeMounts"] if m["name"] == "nas"] == [nas]
    assert [m for m in sidecar["volumeMounts"] if m["name"] == "nas"] == [nas]
    assert annotations_of(after)[C.ANN_CORE_VOLUME] == "nas@/data"


def test_user_mount_at_exact_directory_in_some_containers_is_reused() -> None:
    pvc = {"name": "oss", "mountPath": "/data/dump-a/"}
    pod = make_pod(
        [container("a", command=["/a"], volumeMounts=[pvc]), container("b", command=["/b"]), container("c", command=["/c"])],
        volumes=[{"name": "oss", "persistentVolumeClaim": {"claimName": "oss-pvc"}}],
    )
    after, _ = mutate_apply(pod)
    for c in after["spec"]["containers"]:
        assert [m for m in c["volumeMounts"] if m["name"] == "oss"] == [pvc]
    assert annotations_of(after)[C.ANN_CORE_VOLUME] == "oss@/data/dump-a"


def test_deepest_covering_mount_is_the_reference() -> None:
    pod = make_pod(
        [
            container("a", command=["/a"], volumeMounts=[{"name": "top", "mountPath": "/data"}]),
            container("b", command=["/b"], volumeMounts=[{"name": "deep", "mountPath": "/data/dump-a"}]),
            container("c", command=["/c"]),
        ],
        volumes=[{"name": "top", "emptyDir": {}}, {"name": "deep", "emptyDir": {}}],
    )
    after, _ = mutate_apply(pod)
    a, b, c = after["spec"]["containers"]
    assert {"name": "deep", "mountPath": "/data/dump-a"} in c["volumeMounts"]
    assert not any(m["name"] == "deep" for m in a["volumeMounts"])  # a already keeps its cores in "top"
    assert annotations_of(after)[C.ANN_CORE_VOLUME] == "deep@/data/dump-a"


def test_non_target_container_mount_is_used_for_targets() -> None:
    pod = make_pod(
        [
            container("app", command=["/app"]),
            container("uploader", command=["/up"], volumeMounts=[{"name": "nas", "mountPath": "/data"}]),
        ],
        {C.ANN_CONTAINERS: "app"},
        volumes=[{"name": "nas", "nfs": {"server": "nas", "path": "/x"}}],
    )
    after, _ = mutate_apply(pod)
    assert {"name": "nas", "mountPath": "/data"} in after["spec"]["containers"][0]["volumeMounts"]
    assert after["spec"]["containers"][1] == pod["spec"]["containers"][1]


def test_sibling_directory_is_not_a_parent() -> None:
    pod = make_pod(
        [container(command=["/a"], volumeMounts=[{"name": "v", "mountPath": "/data/dump"}])],
        volumes=[{"name": "v", "emptyDir": {}}],
    )
    after, _ = mutate_apply(pod)
    assert annotations_of(after)[C.ANN_CORE_VOLUME] == f"{C.CORE_VOLUME}@/data/dump-a"


def test_read_only_covering_mount_warns() -> None:
    pod = make_pod(
        [container(command=["/a"], volumeMounts=[{"name": "v", "mountPath": "/data", "readOnly": True}])],
        volumes=[{"name": "v", "emptyDir": {}}],
    )
    _, result = mutate_apply(pod)
    assert any("read-only" in w for w in result.warnings)


@pytest.mark.parametrize(
    "choice, expected",
    [
        ("nfs:10.0.0.5:/exports/cores", {"nfs": {"server": "10.0.0.5", "path": "/exports/cores"}}),
        ("nfs:[fd00::5]:/cores", {"nfs": {"server": "[fd00::5]", "path": "/cores"}}),
        ("pvc:oss-pvc", {"persistentVolumeClaim": {"claimName": "oss-pvc"}}),
        ("emptyDir", {"emptyDir": {}}),
    ],
)
def test_default_volume_from_settings_and_from_pod_annotation(choice: str, expected: dict[str, Any]) -> None:
    after, _ = mutate_apply(make_pod(), AdmissionSettings(default_volume=choice))
    assert find(after["spec"]["volumes"], C.CORE_VOLUME) == {"name": C.CORE_VOLUME, **expected}
    after, _ = mutate_apply(make_pod(annotations={C.ANN_VOLUME: choice}), AdmissionSettings(default_volume="pvc:other"))
    assert find(after["spec"]["volumes"], C.CORE_VOLUME) == {"name": C.CORE_VOLUME, **expected}


@pytest.mark.parametrize("bad", ["hostPath:/var", "nfs:server", "nfs::/x", "pvc:Bad_Name", "pvc:", "nfs:srv:/a/../b"])
def test_bad_volume_annotation_is_refused(bad: str) -> None:
    result = mutate(make_pod(annotations={C.ANN_VOLUME: bad}))
    assert not result.allowed and result.message.startswith(f"annotation {C.ANN_VOLUME}: ")


def test_volume_annotation_ignored_when_not_allowed_or_not_needed() -> None:
    _, result = mutate_apply(
        make_pod(annotations={C.ANN_VOLUME: "pvc:mine"}), AdmissionSettings(allow_pod_volume_override=False)
    )
    assert any("does not allow" in w for w in result.warnings)
    pod = make_pod(
        [container(command=["/a"], volumeMounts=[{"name": "v", "mountPath": "/data"}])],
        {C.ANN_VOLUME: "pvc:mine"},
        volumes=[{"name": "v", "emptyDir": {}}],
    )
    _, result = mutate_apply(pod)
    assert any(f"{C.ANN_VOLUME} ignored" in w for w in result.warnings)


# --- step 3: the wrapper and Kubernetes' command/args semantics -----------------------------------


def runtime_argv(c: dict[str, Any], image: Image) -> list[str] | None:
    """What the container runtime executes (containerd CRI / Docker semantics); None: nothing."""
    command, args = list(c.get("command") or []), list(c.get("args") or [])
    if not command:
        if not args:
            args = list(image.cmd)
        entrypoint = list(image.entrypoint)
        command = [] if entrypoint == [""] else entrypoint
    argv = command + args
    return argv or None


COMMANDS = [None, [], ["/bin/server", "--flag"]]
ARGS = [None, [], ["--port=80", "x y"]]
ENTRYPOINTS = [[], [""], ["/entry.sh", "-e"]]
CMDS = [[], ["serve", "--all"]]


@pytest.mark.parametrize("command, args, entrypoint, cmd", list(itertools.product(COMMANDS, ARGS, ENTRYPOINTS, CMDS)))
def test_wrapper_keeps_exact_command_args_semantics(command, args, entrypoint, cmd) -> None:
    c = container()
    if command is not None:
        c["command"] = command
    if args is not None:
        c["args"] = args
    image = Image(entrypoint, cmd)
    resolver = TableResolver({IMG: image})
    after, result = mutate_apply(make_pod([c]), resolve_image=resolver)
    patched = after["spec"]["containers"][0]
    before_argv = runtime_argv(c, image)
    if before_argv is None:
        # Nothing would run anyway: the container is left alone, with a warning.
        assert "command" not in patched or not patched["command"]
        assert any("no ENTRYPOINT or CMD" in w for w in result.warnings)
        return
    assert runtime_argv(patched, image) == [W, *before_argv]
    # args are never rewritten when the user gave them
    if args:
        assert patched["args"] == args
    # the registry is asked only when there is no command
    assert bool(resolver.calls) == (not command)


def test_command_and_args_only_command_is_prefixed() -> None:
    c = container(command=["/bin/app", "-v"], args=["--x"])
    after, _ = mutate_apply(make_pod([c]))
    patched = after["spec"]["containers"][0]
    assert patched["command"] == [W, "/bin/app", "-v"] and patched["args"] == ["--x"]


def test_resolver_failure_leaves_command_alone_and_says_why() -> None:
    c = container(args=["--x"])
    resolver = TableResolver({IMG: TimeoutError("registry.example.com did not answer in 2.0 s")})
    after, result = mutate_apply(make_pod([c]), resolve_image=resolver)
    patched = after["spec"]["containers"][0]
    assert "command" not in patched and patched["args"] == ["--x"]
    assert any("app" in w and "could not resolve the image's entrypoint" in w for w in result.warnings)
    assert not any("did not answer" in w for w in result.warnings), "the raw error is never echoed"
    # everything else is still prepared: the agent collects its cores regardless of the limit
    assert find(patched["env"], C.ENV_PATTERN)["value"] == PATTERN
    assert "SYS_RESOURCE" in patched["securityContext"]["capabilities"]["add"]


def test_resolver_returning_garbage_is_a_failure() -> None:
    bad = Image.__new__(Image)
    bad.entrypoint, bad.cmd = "not-a-list", None  # type: ignore[assignment]
    after, result = mutate_apply(make_pod([container()]), resolve_image=TableResolver({IMG: bad}))
    assert "command" not in after["spec"]["containers"][0]
    assert any("could not resolve the image's entrypoint" in w for w in result.warnings)


def test_no_resolver_or_lookup_disabled_warns() -> None:
    _, result = mutate_apply(make_pod([container()]))
    assert any("no registry resolver" in w for w in result.warnings)
    resolver = TableResolver({IMG: Image(["/e"], [])})
    after, result = mutate_apply(
        make_pod([container()]), AdmissionSettings(resolve_entrypoints=False), resolve_image=resolver
    )
    assert resolver.calls == [] and "command" not in after["spec"]["containers"][0]
    assert any("look-up is off" in w for w in result.warnings)


def test_resolver_gets_namespace_pull_secrets_and_deadline_and_is_asked_once_per_image() -> None:
    resolver = TableResolver({IMG: Image(["/e"], ["c"])})
    pod = make_pod(
        [container("a"), container("b"), container("c", image="other:1")],
        namespace="payments",
        imagePullSecrets=[{"name": "reg-a"}, {"name": "reg-b"}],
    )
    deadline = time.monotonic() + 5
    after, result = mutate_apply(pod, resolve_image=resolver, deadline=deadline)
    assert [image for image, _ in resolver.calls][:2] == [IMG, "other:1"]
    assert resolver.calls[0][1] == {"namespace": "payments", "pull_secrets": ["reg-a", "reg-b"], "deadline": deadline}
    a, b, c = after["spec"]["containers"]
    assert a["command"] == b["command"] == [W, "/e"]
    assert "command" not in c and any("container c" in w and "could not resolve" in w for w in result.warnings)


def test_spent_deadline_stops_resolution() -> None:
    resolver = TableResolver({IMG: Image(["/e"], [])})
    _, result = mutate_apply(make_pod([container()]), resolve_image=resolver, deadline=time.monotonic() - 1)
    assert resolver.calls == []
    assert any("budget spent" in w for w in result.warnings)


def test_deadline_spent_by_a_slow_registry_stops_the_next_lookups() -> None:
    def slow(image: str, **kwargs: Any) -> Image:
        slow.calls.append(image)  # type: ignore[attr-defined]
        time.sleep(0.45)
        return Image(["/e"], [])

    slow.calls = []  # type: ignore[attr-defined]
    pod = make_pod([container("a", image="one:1"), container("b", image="two:1")])
    after, result = mutate_apply(pod, resolve_image=slow, deadline=time.monotonic() + 0.3)
    assert slow.calls == ["one:1"]  # type: ignore[attr-defined]
    a, b = after["spec"]["containers"]
    assert a["command"] == [W, "/e"] and "command" not in b
    assert any("container b" in w and "budget spent" in w for w in result.warnings)


class BatchResolver(TableResolver):
    """A resolver that answers a pod's images in one ``resolve_many`` call, as the registry one does."""

    def __init__(self, table: dict[str, Image | Exception], fail: bool = False) -> None:
        super().__init__(table)
        self.fail = fail
        self.batches: list[tuple[list[str], dict[str, Any]]] = []

    def resolve_many(self, images: list[str], **kwargs: Any) -> dict[str, Any]:
        self.batches.append((list(images), kwargs))
        if self.fail:
            raise RuntimeError("registry.example.com:5000 refused the connection")
        out: dict[str, Any] = {}
        for image in images:
            try:
                out[image] = self(image)
            except Exception as exc:  # noqa: BLE001 - an outcome, as resolve_many returns it
                out[image] = exc
        return out


def test_batch_resolver_is_asked_once_for_every_image_without_a_command() -> None:
    bad = Image.__new__(Image)
    bad.entrypoint, bad.cmd = "not-a-list", None  # type: ignore[assignment]
    resolver = BatchResolver({IMG: Image(["/e"], ["c"]), "bad:1": bad})
    pod = make_pod(
        [container("a"), container("b"), container("c", image="bad:1"), container("d", image="gone:1"),
         container("e", image="cmd:1", command=["/own"])],
        namespace="payments", imagePullSecrets=[{"name": "reg-a"}],
    )
    deadline = time.monotonic() + 5
    after, result = mutate_apply(pod, resolve_image=resolver, deadline=deadline)
    assert resolver.batches == [
        ([IMG, "bad:1", "gone:1"], {"namespace": "payments", "pull_secrets": ["reg-a"], "deadline": deadline})
    ]
    a, b, c, d, e = after["spec"]["containers"]
    assert a["command"] == b["command"] == [W, "/e"] and a["args"] == ["c"] and e["command"] == [W, "/own"]
    assert "command" not in c and "command" not in d
    assert {w.split(":")[0] for w in result.warnings if "could not resolve" in w} == {"container c", "container d"}


def test_batch_resolver_failing_degrades_every_image() -> None:
    resolver = BatchResolver({IMG: Image(["/e"], [])}, fail=True)
    after, result = mutate_apply(make_pod([container("a"), container("b", image="other:1")]), resolve_image=resolver)
    assert len(resolver.batches) == 1 and resolver.calls == []  # no second try, one image at a time
    assert all("command" not in c for c in after["spec"]["containers"])
    lookups = [w for w in result.warnings if "could not resolve" in w]
    assert len(lookups) == 2 and all("(lookup failed)" in w and "refused" not in w for w in lookups)


def test_already_wrapped_command_is_not_wrapped_twice() -> None:
    after, _ = mutate_apply(make_pod([container(command=[W, "/app"])]))
    assert after["spec"]["containers"][0]["command"] == [W, "/app"]


def test_installer_init_container_first_and_restricted() -> None:
    init = [container("migrate", command=["/migrate"]), container("warm", command=["/warm"])]
    pod = make_pod([container(command=["/a"])], {C.ANN_INIT_CONTAINERS: "true"}, initContainers=init)
    after, result = mutate_apply(pod, AdmissionSettings(image="example.org/cd:9", image_pull_policy="Always"))
    installer, migrate, warm = after["spec"]["initContainers"]
    assert installer["name"] == C.INSTALLER_CONTAINER
    assert installer["image"] == "example.org/cd:9" and installer["imagePullPolicy"] == "Always"
    assert installer["command"] == [C.IMAGE_WRAPPER_PATH, C.WRAPPER_INSTALL_FLAG, C.WRAPPER_PATH]
    assert installer["volumeMounts"] == [{"name": C.WRAPPER_VOLUME, "mountPath": C.WRAPPER_DIR}]
    sc = installer["securityContext"]
    assert sc["runAsNonRoot"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"} and sc["readOnlyRootFilesystem"]
    assert installer["resources"]["limits"]["memory"]
    # the wrapped init containers come after the installer, with their own indices patched correctly
    assert migrate["command"] == [W, "/migrate"] and warm["command"] == [W, "/warm"]
    assert {"name": C.WRAPPER_VOLUME, "mountPath": C.WRAPPER_DIR, "readOnly": True} in migrate["volumeMounts"]
    assert json.loads(annotations_of(after)[C.ANN_TARGETS]) == ["migrate", "warm", "app"]


def test_wrapper_dir_already_used_is_admitted_unprepared_with_a_warning() -> None:
    """The product never blocks a pod it cannot prepare."""
    for path in (C.WRAPPER_DIR + "/", C.WRAPPER_DIR + "/sub"):
        pod = make_pod([container(volumeMounts=[{"name": "x", "mountPath": path}])], volumes=[{"name": "x", "emptyDir": {}}])
        result = mutate(pod)
        assert result.allowed and result.patch == []
        assert any(C.WRAPPER_DIR in w and "not prepared" in w for w in result.warnings)


# --- step 4: capabilities -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sc, expected",
    [
        (None, {"capabilities": {"add": ["SYS_RESOURCE"]}}),
        ({"runAsUser": 0}, {"runAsUser": 0, "capabilities": {"add": ["SYS_RESOURCE"]}}),
        ({"capabilities": {"drop": ["ALL"]}}, {"capabilities": {"drop": ["ALL"], "add": ["SYS_RESOURCE"]}}),
        (
            {"capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}},
            {"capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE", "SYS_RESOURCE"]}},
        ),
        ({"capabilities": {"add": ["SYS_RESOURCE"]}}, {"capabilities": {"add": ["SYS_RESOURCE"]}}),
        ({"capabilities": {"add": ["CAP_SYS_RESOURCE"]}}, {"capabilities": {"add": ["CAP_SYS_RESOURCE"]}}),
    ],
)
def test_sys_resource_is_merged(sc: dict[str, Any] | None, expected: dict[str, Any]) -> None:
    c = container(command=["/a"])
    if sc is not None:
        c["securityContext"] = sc
    after, _ = mutate_apply(make_pod([c]))
    assert after["spec"]["containers"][0]["securityContext"] == expected


def test_privileged_container_is_skipped_with_warning() -> None:
    c = container(command=["/a"], securityContext={"privileged": True})
    after, result = mutate_apply(make_pod([c]))
    assert after["spec"]["containers"][0]["securityContext"] == {"privileged": True}
    assert any("privileged" in w for w in result.warnings)


def test_capability_disabled_by_settings_or_namespace() -> None:
    for settings, ns in ((AdmissionSettings(add_capability=False), "default"), (AdmissionSettings(no_capability_namespaces=("psa-baseline",)), "psa-baseline")):
        pod = make_pod([container("a", command=["/a"]), container("b", command=["/b"])], namespace=ns)
        after, result = mutate_apply(pod, settings, namespace=ns)
        assert all("securityContext" not in c for c in after["spec"]["containers"])
        assert sum("SYS_RESOURCE not added" in w for w in result.warnings) == 1
    after, _ = mutate_apply(make_pod(namespace="other"), AdmissionSettings(no_capability_namespaces=("psa-baseline",)), namespace="other")
    assert after["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] == ["SYS_RESOURCE"]


# --- step 5: registration -------------------------------------------------------------------------


def test_registration_env_and_annotations() -> None:
    pod = make_pod([container("a", command=["/a"], env=[{"name": "KEEP", "value": "1"}]), container("b", command=["/b"])])
    del pod["metadata"]["name"]
    pod["metadata"]["generateName"] = "app-7d9f-"
    after, _ = mutate_apply(pod)
    a, b = after["spec"]["containers"]
    assert a["env"][0] == {"name": "KEEP", "value": "1"}
    for c in (a, b):
        env = {e["name"]: e for e in c["env"]}
        assert env[C.ENV_PATTERN]["value"] == PATTERN
        assert env[C.ENV_CONTAINER_NAME]["value"] == c["name"]
        for var, path in (
            (C.ENV_POD_NAME, "metadata.name"),
            (C.ENV_POD_NAMESPACE, "metadata.namespace"),
            (C.ENV_POD_UID, "metadata.uid"),
            (C.ENV_NODE_NAME, "spec.nodeName"),
        ):
            assert env[var]["valueFrom"] == {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}
        assert C.ENV_MAX_SIZE not in env and C.ENV_COMPRESS not in env
    ann = annotations_of(after)
    assert ann[C.ANN_STATUS] == C.STATUS_INJECTED
    assert ann[C.ANN_EFFECTIVE_PATTERN] == PATTERN
    assert json.loads(ann[C.ANN_TARGETS]) == ["a", "b"]
    assert ann[C.ANN_PATTERN] == PATTERN  # the user's annotation stays


def test_annotation_keys_are_pointer_escaped() -> None:
    assert escape_pointer("coredump-webhook.io/status") == "coredump-webhook.io~1status"
    assert escape_pointer("a~b/c") == "a~0b~1c"
    result = mutate(make_pod())
    paths = [op["path"] for op in result.patch if op["path"].startswith("/metadata/")]
    assert "/metadata/annotations/coredump-webhook.io~1status" in paths


def test_user_value_of_our_variable_is_replaced_with_warning() -> None:
    c = container(command=["/a"], env=[{"name": C.ENV_PATTERN, "value": "/elsewhere/core"}, {"name": "X", "value": "y"}])
    after, result = mutate_apply(make_pod([c]))
    env = after["spec"]["containers"][0]["env"]
    assert [e for e in env if e["name"] == C.ENV_PATTERN] == [{"name": C.ENV_PATTERN, "value": PATTERN}]
    assert any(C.ENV_PATTERN in w and "replaced" in w for w in result.warnings)


def test_per_pod_options_are_validated_and_normalized() -> None:
    ann = {C.ANN_MAX_SIZE: "512M", C.ANN_COMPRESS: "ZSTD", C.ANN_COREDUMP_FILTER: "33"}
    after, _ = mutate_apply(make_pod(annotations=ann))
    env = {e["name"]: e.get("value") for e in after["spec"]["containers"][0]["env"]}
    assert env[C.ENV_MAX_SIZE] == str(512 << 20)
    assert env[C.ENV_COMPRESS] == "zstd"
    assert env[C.ENV_COREDUMP_FILTER] == "0x33"


@pytest.mark.parametrize(
    "key, value",
    [
        (C.ANN_MAX_SIZE, "lots"),
        (C.ANN_MAX_SIZE, "0"),
        (C.ANN_MAX_SIZE, "-5G"),
        (C.ANN_COMPRESS, "gzip"),
        (C.ANN_COREDUMP_FILTER, "0x1000"),
        (C.ANN_COREDUMP_FILTER, "zz"),
    ],
)
def test_bad_per_pod_options_are_refused(key: str, value: str) -> None:
    result = mutate(make_pod(annotations={key: value}))
    assert not result.allowed and result.message.startswith(f"annotation {key}: ") and repr(value) in result.message


def test_size_and_filter_parsers() -> None:
    assert parse_size("4096") == 4096
    assert parse_size("2G") == parse_size("2Gi") == parse_size("2gib") == 2 << 30
    assert parse_coredump_filter("0x1ff") == 0x1FF
    with pytest.raises(ValueError):
        parse_size("5B5")


# --- step 6: targets ------------------------------------------------------------------------------


def test_containers_annotation_picks_targets_and_leaves_others_untouched() -> None:
    pod = make_pod([container("a", command=["/a"]), container("b", command=["/b"]), container("c", command=["/c"])], {C.ANN_CONTAINERS: " c, a "})
    after, _ = mutate_apply(pod)
    a, b, c = after["spec"]["containers"]
    assert a["command"][0] == W and c["command"][0] == W
    assert b == pod["spec"]["containers"][1]
    assert json.loads(annotations_of(after)[C.ANN_TARGETS]) == ["a", "c"]


@pytest.mark.parametrize(
    "annotations, needle",
    [
        ({C.ANN_CONTAINERS: "a,nope"}, "no container named 'nope' (containers: a)"),
        ({C.ANN_CONTAINERS: "init"}, f"use {C.ANN_INIT_CONTAINERS}"),
        ({C.ANN_CONTAINERS: " , "}, "names no container"),
        ({C.ANN_INIT_CONTAINERS: "ghost"}, "no init container named 'ghost'"),
    ],
)
def test_unknown_target_names_are_refused(annotations: dict[str, str], needle: str) -> None:
    pod = make_pod([container("a", command=["/a"])], annotations, initContainers=[container("init", command=["/i"])])
    result = mutate(pod)
    assert not result.allowed and needle in result.message


def test_init_containers_by_name_and_false() -> None:
    init = [container("one", command=["/1"]), container("two", command=["/2"])]
    after, _ = mutate_apply(make_pod([container(command=["/a"])], {C.ANN_INIT_CONTAINERS: "two"}, initContainers=init))
    _, one, two = after["spec"]["initContainers"]
    assert one == init[0] and two["command"] == [W, "/2"]
    after, _ = mutate_apply(make_pod([container(command=["/a"])], {C.ANN_INIT_CONTAINERS: "false"}, initContainers=init))
    assert after["spec"]["initContainers"][1:] == init


def test_native_sidecar_init_container_is_wrapped_after_installer() -> None:
    sidecar = container("proxy", command=["/proxy"], restartPolicy="Always")
    after, _ = mutate_apply(make_pod([container(command=["/a"])], {C.ANN_INIT_CONTAINERS: "proxy"}, initContainers=[sidecar]))
    installer, proxy = after["spec"]["initContainers"]
    assert installer["name"] == C.INSTALLER_CONTAINER and proxy["command"] == [W, "/proxy"]


def test_ephemeral_containers_are_never_touched() -> None:
    eph = {"name": "debug", "image": "busybox", "command": ["sh"], "targetContainerName": "app"}
    pod = make_pod([container(command=["/a"])], ephemeralContainers=[eph])
    after, _ = mutate_apply(pod)
    assert after["spec"]["ephemeralContainers"] == [eph]


def test_windows_pod_and_empty_pod_are_left_alone() -> None:
    result = mutate(make_pod(os={"name": "windows"}))
    assert result.allowed and result.patch == [] and "Windows" in result.warnings[0]
    result = mutate(make_pod([]))
    assert result.allowed and result.patch == [] and result.warnings


# --- helpers and properties -----------------------------------------------------------------------


def test_covers() -> None:
    assert covers("/data", "/data/dump-a") and covers("/data/dump-a/", "/data/dump-a") and covers("/", "/x")
    assert not covers("/data/dump", "/data/dump-a") and not covers("/data/dump-a/x", "/data/dump-a")


def test_patch_is_built_not_diffed_and_input_is_not_copied() -> None:
    """Every operation is an add/replace of a precise path: no whole-pod replacement."""
    result = mutate(make_pod([container(command=["/a"]) for _ in range(1)]))
    assert {op["op"] for op in result.patch} <= {"add", "replace"}
    assert all(op["path"] not in ("", "/", "/spec", "/metadata") for op in result.patch)


@given(st.text(max_size=140))
@hsettings(max_examples=300, deadline=None)
def test_parse_never_crashes_and_mutation_follows(raw: str) -> None:
    try:
        parse(raw)
    except PatternError:
        result = mutate(make_pod(pattern=raw))
        assert not result.allowed and C.ANN_PATTERN in result.message
        return
    after, _ = mutate_apply(make_pod([container(command=["/a"])], pattern=raw))
    assert annotations_of(after)[C.ANN_EFFECTIVE_PATTERN] == raw


# A random but valid pod: the properties hold for any of them.
_NAMES = st.sampled_from(["app", "side", "proxy", "worker", "init-db", C.INSTALLER_CONTAINER])
_PATHS = st.sampled_from(["/data", "/data/dump-a", "/data/dump-a/", "/data/dump", "/var/log", "/tmp", "/cores", "/"])
_VOLNAMES = st.sampled_from(["data", "logs", C.CORE_VOLUME, C.CORE_VOLUME + "-2", C.WRAPPER_VOLUME])
_PATTERNS = st.sampled_from([PATTERN, "/cores/%e.%p", "/data/dump-a/%h/core", "core", "/data/core-%t", "/var/log/app/core"])
_ARGV = st.one_of(st.none(), st.lists(st.text(min_size=1, max_size=8), max_size=3))


@st.composite
def random_pods(draw: st.DrawFn) -> dict[str, Any]:
    volumes = draw(st.lists(_VOLNAMES, unique=True, max_size=3))
    def one(name: str) -> dict[str, Any]:
        c = container(name, image=draw(st.sampled_from(["img-a:1", "img-b:1", "unknown:1"])))
        for key in ("command", "args"):
            value = draw(_ARGV)
            if value is not None:
                c[key] = value
        if volumes:
            mounts = draw(st.lists(st.tuples(st.sampled_from(volumes), _PATHS), max_size=2, unique_by=lambda t: t[1].rstrip("/")))
            if mounts:
                c["volumeMounts"] = [{"name": v, "mountPath": p} for v, p in mounts if p != "/"]
        if draw(st.booleans()):
            c["env"] = draw(st.lists(st.sampled_from([{"name": "X", "value": "1"}, {"name": C.ENV_PATTERN, "value": "old"}, {"name": C.ENV_POD_UID, "value": "u"}]), unique_by=lambda e: e["name"], max_size=2))
        sc = draw(st.sampled_from([None, {}, {"privileged": True}, {"capabilities": {"drop": ["ALL"]}}, {"capabilities": {"add": ["NET_ADMIN"]}}]))
        if sc is not None:
            c["securityContext"] = sc
        return c
    names = draw(st.lists(_NAMES, unique=True, min_size=1, max_size=5))
    split = draw(st.integers(0, len(names) - 1))
    init_names, names = names[:split], names[split:]
    ann: dict[str, str] = {C.ANN_PATTERN: draw(_PATTERNS)}
    if draw(st.booleans()):
        ann[C.ANN_CONTAINERS] = ",".join(draw(st.lists(st.sampled_from(names), unique=True, min_size=1)))
    if init_names and draw(st.booleans()):
        ann[C.ANN_INIT_CONTAINERS] = draw(st.sampled_from(["true", "false", init_names[0]]))
    if draw(st.booleans()):
        ann[C.ANN_VOLUME] = draw(st.sampled_from(["emptyDir", "pvc:claim-a", "nfs:nas:/x"]))
    spec: dict[str, Any] = {"volumes": [{"name": v, "emptyDir": {}} for v in volumes]} if volumes else {}
    if init_names:
        spec["initContainers"] = [one(n) for n in init_names]
    if draw(st.booleans()):
        spec["imagePullSecrets"] = [{"name": "pull"}]
    return make_pod([one(n) for n in names], {k: v for k, v in ann.items() if k != C.ANN_PATTERN}, pattern=ann[C.ANN_PATTERN], **spec)


RANDOM_RESOLVER = TableResolver({"img-a:1": Image(["/a"], ["x"]), "img-b:1": Image([], ["/b", "y"])})


@given(random_pods(), st.sampled_from([AdmissionSettings(), AdmissionSettings(add_capability=False, default_volume="pvc:cores")]))
@hsettings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_pods_mutate_validly_and_idempotently(pod: dict[str, Any], settings: AdmissionSettings) -> None:
    validate(pod)
    after, result = mutate_apply(pod, settings, resolve_image=RANDOM_RESOLVER)
    targets = json.loads(annotations_of(after)[C.ANN_TARGETS])
    assert targets
    assert after["spec"]["initContainers"][0]["name"].startswith(C.INSTALLER_CONTAINER)
    for field in ("initContainers", "containers"):
        for c in after["spec"].get(field) or []:
            if c["name"] not in targets:
                continue
            env = {e["name"]: e for e in c["env"]}
            assert env[C.ENV_PATTERN]["value"] == annotations_of(after)[C.ANN_EFFECTIVE_PATTERN]
            assert env[C.ENV_CONTAINER_NAME]["value"] == c["name"]
            wrapped = (c.get("command") or [None])[0] == W
            assert wrapped or any(c["name"] in w for w in result.warnings)
    core = annotations_of(after)[C.ANN_CORE_VOLUME]
    if core:
        vol, _, path = core.partition("@")
        directory = parse(annotations_of(after)[C.ANN_EFFECTIVE_PATTERN]).directory
        for field in ("initContainers", "containers"):
            for c in after["spec"].get(field) or []:
                if c["name"] in targets:
                    assert any(covers(m["mountPath"], directory) for m in c["volumeMounts"]), c
    assert all(len(w) <= MAX_WARNING for w in result.warnings)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


@given(
    st.dictionaries(
        st.sampled_from(["containers", "initContainers", "volumes", "imagePullSecrets", "os", "ephemeralContainers"]),
        st.one_of(_JSON, st.lists(st.dictionaries(st.sampled_from(["name", "image", "command", "args", "env", "volumeMounts", "securityContext"]), _JSON), max_size=3)),
    ),
    st.dictionaries(st.sampled_from([C.ANN_CONTAINERS, C.ANN_INIT_CONTAINERS, C.ANN_VOLUME, C.ANN_MAX_SIZE]), st.text(max_size=8)),
)
@hsettings(max_examples=300, deadline=None)
def test_mutation_of_malformed_pods_does_not_raise(spec: dict[str, Any], annotations: dict[str, str]) -> None:
    """The API server never sends these; the mutation still answers instead of raising."""
    pod = {"metadata": {"annotations": {C.ANN_PATTERN: PATTERN, **annotations}}, "spec": spec}
    result = mutate_pod(pod, AdmissionSettings(), namespace="ns", resolve_image=RANDOM_RESOLVER)
    assert isinstance(result.allowed, bool)
    json.dumps(result.patch)
