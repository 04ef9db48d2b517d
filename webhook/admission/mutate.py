"""The mutation: from an annotated pod to the JSONPatch that prepares it to keep its cores.

Pure: no I/O except the injected ``resolve_image`` (registry look-up of ENTRYPOINT/CMD for
containers without a command). A function of its inputs, like kopf's admission engine: a pod
dict in, a :class:`MutationResult` (JSONPatch operations, warnings, refusal) out.

Steps (README, "The mutation, step by step"): pattern, targets (``targets.py``), volume
(``volume.py``), wrapper (``wrapping.py``), capability, registration env and annotations; the
per-pod options are ``options.py``, the patch being built ``patch.py``. Refusals are returned as
``allowed=False`` with a message naming the annotation and the reason; degraded choices become
``warnings`` (at most 120 characters).
"""

from __future__ import annotations

import json
from typing import Any

from webhook import constants as C
from webhook.admission import podsecurity
from webhook.admission.options import registration_options
from webhook.admission.patch import Draft, MutationResult, Refused, escape_pointer
from webhook.admission.podspec import Target, dicts, normalize_path, unique
from webhook.admission.settings import AdmissionSettings
from webhook.admission.targets import reserved_path_user, select_targets
from webhook.admission.volume import place_cores
from webhook.admission.wrapping import ImageLookup, Resolver, wrap_command
from webhook.pattern import Pattern, PatternError, parse

#: The capability that lets the wrapper raise the hard RLIMIT_CORE.
CAPABILITY = "SYS_RESOURCE"
#: Resources of the installer init container (it copies one small file and exits).
INSTALLER_RESOURCES = {
    "requests": {"cpu": "10m", "memory": "16Mi"},
    "limits": {"cpu": "100m", "memory": "32Mi"},
}
#: emptyDir holding the wrapper: one static binary, well under a megabyte.
WRAPPER_VOLUME_SIZE = "16Mi"


def mutate_pod(
    pod: dict[str, Any],
    settings: AdmissionSettings,
    *,
    namespace: str,
    resolve_image: Resolver | None = None,
    deadline: float | None = None,
    namespace_level: str = "privileged",
) -> MutationResult:
    """The JSONPatch (or refusal) that prepares ``pod`` to keep its cores.

    ``deadline`` is a ``time.monotonic()`` instant after which no registry look-up starts.
    ``namespace_level`` is the Pod Security level the namespace enforces ("restricted" when
    not known): nothing that level refuses is added unless the pod asks for it.
    Pods without a pattern annotation, and pods already prepared, get an empty patch.
    """
    metadata = pod.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    if not isinstance(annotations, dict):
        return MutationResult()
    if C.ANN_PATTERN not in annotations and C.ANN_PATTERN_ECI not in annotations:
        return MutationResult()
    spoofed = False
    if annotations.get(C.ANN_STATUS) == C.STATUS_INJECTED:
        if is_prepared(pod):
            return MutationResult()
        spoofed = True  # a status set by hand (or copied from another pod): prepare it anyway
    mutation = _Mutation(pod, annotations, settings, namespace, resolve_image, deadline, namespace_level)
    if spoofed:
        mutation.warn(f"{C.ANN_STATUS}: injected, but the pod lacks the injected parts: prepared anyway")
    try:
        return mutation.run()
    except Refused as refused:
        return mutation.draft.refused(refused.message, mutation.raw)


class _Mutation:
    """One pod's mutation; the steps share the :class:`Draft` being built."""

    def __init__(
        self,
        pod: dict[str, Any],
        annotations: dict[str, Any],
        settings: AdmissionSettings,
        namespace: str,
        resolve_image: Resolver | None,
        deadline: float | None,
        namespace_level: str = "privileged",
    ) -> None:
        self.pod = pod
        self.level = namespace_level if namespace_level in podsecurity.LEVELS else "restricted"
        self.annotations = annotations
        self.settings = settings
        self.namespace = namespace or ""
        self.resolve_image = resolve_image
        self.deadline = deadline
        self.draft = Draft()
        self.raw: str | None = None

    def warn(self, text: str) -> None:
        self.draft.warn(text)

    # -- the steps ------------------------------------------------------------------------

    def run(self) -> MutationResult:
        pattern = self.pattern()
        spec = self.pod.get("spec")
        if not isinstance(spec, dict):
            raise Refused("the pod has no spec")
        self.spec = spec
        self.containers = dicts(spec.get("containers"))
        self.init_containers = dicts(spec.get("initContainers"))
        skipped = self.skip_reason()
        if skipped is not None:
            self.warn(skipped)
            return self.draft.warned(self.raw)
        options = registration_options(self.annotations)
        targets = select_targets(self.annotations, self.containers, self.init_containers)
        taken = reserved_path_user(targets)
        if taken is not None:
            self.warn(f"container {taken} mounts {C.WRAPPER_DIR}, reserved for the wrapper: pod not prepared")
            return self.draft.warned(self.raw)
        core_volume, wrapper_volume = self.add_volumes(pattern, targets)
        lookup = ImageLookup(
            self.resolve_image, enabled=self.settings.resolve_entrypoints, namespace=self.namespace,
            spec=spec, deadline=self.deadline,
        )
        resolved = lookup.resolve_all(targets)
        for t in targets:
            self.append_mounts(t)
            wrap_command(self.draft, t, lookup, resolved)
            self.capability(t)
            self.registration_env(t, pattern, options)
        self.add_installer(wrapper_volume)
        self.add_annotations(pattern, targets, core_volume)
        return self.draft.result(self.raw)

    def skip_reason(self) -> str | None:
        """Why the pod is admitted unchanged before any step (None: prepare it)."""
        os_field = self.spec.get("os")
        if isinstance(os_field, dict) and os_field.get("name") == "windows":
            return "Windows pod: core dumps are not prepared (Linux only)"
        if not self.containers:
            return "pod has no containers: nothing prepared"
        return None

    def add_volumes(self, pattern: Pattern, targets: list[Target]) -> tuple[str, str]:
        """Steps 2 and 3's volumes: the cores' (see volume.py) and the wrapper's emptyDir.

        Returns the core volume's "name@mountPath" and the wrapper volume's name; each
        target's new mounts wait in ``self.mounts`` for :meth:`append_mounts`.
        """
        volume_names = {str(v.get("name")) for v in dicts(self.spec.get("volumes"))}
        placement = place_cores(
            self.draft, pattern, targets, annotations=self.annotations, settings=self.settings, level=self.level,
            containers=self.init_containers + self.containers, volume_names=volume_names,
        )
        new_volumes = [placement.volume] if placement.volume is not None else []
        wrapper_volume = unique(C.WRAPPER_VOLUME, volume_names | {v["name"] for v in new_volumes})
        new_volumes.append({"name": wrapper_volume, "emptyDir": {"sizeLimit": WRAPPER_VOLUME_SIZE}})
        self.mounts: dict[int, list[dict[str, Any]]] = {id(t.container): [] for t in targets}
        for key, mounts in placement.mounts.items():
            self.mounts[key].extend(mounts)
        for t in targets:
            self.mounts[id(t.container)].append({"name": wrapper_volume, "mountPath": C.WRAPPER_DIR, "readOnly": True})
        self.draft.append_all("/spec/volumes", self.spec.get("volumes"), new_volumes)
        return placement.label, wrapper_volume

    def append_mounts(self, t: Target) -> None:
        self.draft.append_all(t.path + "/volumeMounts", t.container.get("volumeMounts"), self.mounts[id(t.container)])

    def capability(self, t: Target) -> None:
        """Step 4: SYS_RESOURCE added, or why not said where it matters."""
        skipped = self.capability_skip_reason(t)
        if skipped is None:
            self.add_capability(t)
        elif skipped not in podsecurity.USELESS:
            self.warn(f"SYS_RESOURCE not added ({skipped}): cores are still kept in full")

    def capability_skip_reason(self, t: Target) -> str | None:
        """Step 4's decision: why SYS_RESOURCE is not added to ``t`` (None: add it)."""
        if not self.settings.add_capability:
            return "disabled by the operator"
        if self.namespace in self.settings.no_capability_namespaces:
            return f"namespace {self.namespace} excluded by the operator"
        return podsecurity.capability_skip_reason(
            t.container, self.spec, self.namespace, self.level, podsecurity.explicit_choice(self.annotations)
        )

    def pattern(self) -> Pattern:
        """Step 1: the effective pattern (ACS wins over ECI), validated."""
        acs = self.annotations.get(C.ANN_PATTERN)
        eci = self.annotations.get(C.ANN_PATTERN_ECI)
        key = C.ANN_PATTERN if C.ANN_PATTERN in self.annotations else C.ANN_PATTERN_ECI
        if C.ANN_PATTERN in self.annotations and C.ANN_PATTERN_ECI in self.annotations and acs != eci:
            self.warn(f"{C.ANN_PATTERN} and {C.ANN_PATTERN_ECI} differ: {C.ANN_PATTERN} wins")
        raw = self.annotations[key]
        try:
            pattern = parse(raw)
        except PatternError as exc:
            raise Refused(f"annotation {key}: {exc}") from None
        self.raw = pattern.raw
        for text in pattern.warnings:
            self.warn(text)
        return pattern

    def add_capability(self, t: Target) -> None:
        """Step 4: SYS_RESOURCE merged into securityContext.capabilities.add."""
        sc = t.container.get("securityContext")
        path = t.path + "/securityContext"
        if not isinstance(sc, dict):
            self.draft.add(path, {"capabilities": {"add": [CAPABILITY]}})
            return
        if sc.get("privileged") is True:
            self.warn(f"container {t.name} is privileged: it has every capability, SYS_RESOURCE not added")
            return
        caps = sc.get("capabilities")
        if not isinstance(caps, dict):
            self.draft.add(path + "/capabilities", {"add": [CAPABILITY]})
            return
        add = caps.get("add")
        if not isinstance(add, list):
            self.draft.add(path + "/capabilities/add", [CAPABILITY])
        elif CAPABILITY not in add and "CAP_" + CAPABILITY not in add:
            self.draft.add(path + "/capabilities/add/-", CAPABILITY)

    def registration_env(self, t: Target, pattern: Pattern, options: dict[str, str]) -> None:
        """Step 5: the variables the node agent reads from /proc/<pid>/environ."""
        wanted: list[dict[str, Any]] = [
            {"name": C.ENV_PATTERN, "value": pattern.raw},
            _field_env(C.ENV_POD_NAME, "metadata.name"),
            _field_env(C.ENV_POD_NAMESPACE, "metadata.namespace"),
            _field_env(C.ENV_POD_UID, "metadata.uid"),
            {"name": C.ENV_CONTAINER_NAME, "value": t.name},
            _field_env(C.ENV_NODE_NAME, "spec.nodeName"),
        ]
        wanted.extend({"name": name, "value": value} for name, value in options.items())
        env = t.container.get("env")
        if not isinstance(env, list) or not env:
            self.draft.add(t.path + "/env", wanted)
            return
        existing = {item.get("name"): i for i, item in enumerate(env) if isinstance(item, dict)}
        for var in wanted:
            i = existing.get(var["name"])
            if i is None:
                self.draft.add(t.path + "/env/-", var)
            else:
                self.warn(f"container {t.name}: {var['name']} is set by coredump-webhook, your value was replaced")
                self.draft.replace(f"{t.path}/env/{i}", var)

    def add_installer(self, wrapper_volume: str) -> None:
        """Step 3: the init container that installs the wrapper, first of all init containers."""
        taken = {
            str(c.get("name"))
            for c in self.containers + self.init_containers + dicts(self.spec.get("ephemeralContainers"))
        }
        installer = {
            "name": unique(C.INSTALLER_CONTAINER, taken),
            "image": self.settings.image,
            "imagePullPolicy": self.settings.image_pull_policy,
            "command": [C.IMAGE_WRAPPER_PATH, C.WRAPPER_INSTALL_FLAG, C.WRAPPER_PATH],
            "volumeMounts": [{"name": wrapper_volume, "mountPath": C.WRAPPER_DIR}],
            "resources": {k: dict(v) for k, v in INSTALLER_RESOURCES.items()},
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
                "privileged": False,
                "readOnlyRootFilesystem": True,
                "runAsNonRoot": True,
                "runAsUser": 65532,
                "runAsGroup": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }
        if "initContainers" in self.spec and isinstance(self.spec["initContainers"], list):
            self.draft.add("/spec/initContainers/0", installer)
        else:
            self.draft.add("/spec/initContainers", [installer])

    def add_annotations(self, pattern: Pattern, targets: list[Target], core_volume: str) -> None:
        """Step 5 and 7: what the agent and the CLI read from the API, and the idempotence mark."""
        base = "/metadata/annotations/"
        for key, value in (
            (C.ANN_STATUS, C.STATUS_INJECTED),
            (C.ANN_EFFECTIVE_PATTERN, pattern.raw),
            (C.ANN_TARGETS, json.dumps([t.name for t in targets], separators=(",", ":"))),
            (C.ANN_CORE_VOLUME, core_volume),
            *([(C.ANN_UNWRITABLE, self.draft.unwritable)] if self.draft.unwritable else []),
        ):
            self.draft.add(base + escape_pointer(key), value)


def is_prepared(pod: dict[str, Any]) -> bool:
    """Whether ``pod`` carries what the mutation injects: the installer init container and the
    wrapper's mount (the status annotation alone is only the pod's word)."""
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        return False
    def is_installer(c: dict[str, Any]) -> bool:
        command = c.get("command")
        return isinstance(command, list) and command[:2] == [C.IMAGE_WRAPPER_PATH, C.WRAPPER_INSTALL_FLAG]

    init = dicts(spec.get("initContainers"))
    mounted = any(
        isinstance(m.get("mountPath"), str) and normalize_path(m["mountPath"]) == C.WRAPPER_DIR
        for c in init + dicts(spec.get("containers"))
        if not is_installer(c)
        for m in dicts(c.get("volumeMounts"))
    )
    return mounted and any(is_installer(c) for c in init)


def _field_env(name: str, field_path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": field_path}}}


