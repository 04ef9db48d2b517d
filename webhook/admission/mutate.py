"""The mutation: from an annotated pod to the JSONPatch that prepares it to keep its cores.

Pure: no I/O except the injected ``resolve_image`` (registry look-up of ENTRYPOINT/CMD for
containers without a command). The JSONPatch operations are built directly, one per change,
never by diffing whole pods (``jsonpatch.make_patch`` on a 7 KB pod costs milliseconds), and
the pod is never copied: every value put in the patch is a fresh object.

Steps (README, "The mutation, step by step"): pattern, targets, volume, wrapper, capability,
registration env and annotations. Refusals are returned as ``allowed=False`` with a message
naming the annotation and the reason; degraded choices become ``warnings`` (≤ 120 characters).
"""

from __future__ import annotations

import json
import posixpath
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import jsonpatch

from webhook import constants as C
from webhook.admission import podsecurity
from webhook.admission.settings import AdmissionSettings, VolumeSpecError, parse_volume_spec
from webhook.pattern import Pattern, PatternError, parse

#: kubectl prints warnings longer than this badly; the API advises keeping them short.
MAX_WARNING = 120
#: The capability that lets the wrapper raise the hard RLIMIT_CORE.
CAPABILITY = "SYS_RESOURCE"
#: Resources of the installer init container (it copies one small file and exits).
INSTALLER_RESOURCES = {
    "requests": {"cpu": "10m", "memory": "16Mi"},
    "limits": {"cpu": "100m", "memory": "32Mi"},
}
#: emptyDir holding the wrapper: one static binary, well under a megabyte.
WRAPPER_VOLUME_SIZE = "16Mi"
#: Bits of /proc/<pid>/coredump_filter the kernel defines (MMF_DUMP_FILTER_BITS = 9).
MAX_COREDUMP_FILTER = 0x1FF

_SIZE = re.compile(r"^([0-9]+)\s*([KMGTP]?)(I?B?)$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_HEX = re.compile(r"^(0[xX])?([0-9a-fA-F]{1,8})$")


class ImageConfig(Protocol):
    """What a registry resolver returns: the image's ENTRYPOINT and CMD (possibly empty)."""

    entrypoint: Sequence[str]
    cmd: Sequence[str]


#: ``resolve_image(image, namespace=..., pull_secrets=[...], deadline=...) -> ImageConfig``;
#: raises any exception when the image cannot be resolved (its text becomes a warning).
Resolver = Callable[..., ImageConfig]


@dataclass
class MutationResult:
    """The answer for one pod: a patch to apply, or a refusal, plus warnings for kubectl."""

    patch: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    allowed: bool = True
    message: str = ""
    #: The effective pattern when the pod asked for one (for logs and metrics).
    pattern: str | None = None
    #: Why a workload with this template must be refused although a bare pod is admitted
    #: (no core could ever be written): the workload check turns it into its refusal.
    workload_refusal: str | None = None


class _Refused(Exception):
    """Internal: stop the mutation and refuse the pod with ``message``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def escape_dollars(values: Sequence[str]) -> list[str]:
    """Image ENTRYPOINT/CMD as ``command``/``args``: Kubernetes expands ``$(VAR)`` and turns
    ``$$`` into ``$`` there (never in the image config), so every ``$`` is written ``$$``."""
    return [v.replace("$", "$$") for v in values]


def escape_pointer(token: str) -> str:
    """One JSON Pointer reference token (RFC 6901): '~' -> '~0', '/' -> '~1'."""
    return token.replace("~", "~0").replace("/", "~1")


def clip(text: str) -> str:
    """A warning as kubectl shows it best: at most MAX_WARNING characters."""
    return text if len(text) <= MAX_WARNING else text[: MAX_WARNING - 3] + "..."


def parse_size(text: str) -> int:
    """Bytes from "512M", "2G", "1Gi", "4096" (binary units). Raise ValueError."""
    m = _SIZE.match(text.strip()) if isinstance(text, str) else None
    if not m or (m.group(3) and not m.group(2)):
        raise ValueError(f"{text!r} is not a size (bytes, or a number with K, M, G or T)")
    value = int(m.group(1)) * _SIZE_UNITS[m.group(2).upper()]
    if value <= 0:
        raise ValueError(f"{text!r} must be more than zero")
    return value


def parse_coredump_filter(text: str) -> int:
    """The coredump_filter bit mask from hex ("0x33" or "33"). Raise ValueError."""
    m = _HEX.match(text.strip()) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"{text!r} is not a hexadecimal mask such as 0x33")
    value = int(m.group(2), 16)
    if value > MAX_COREDUMP_FILTER:
        raise ValueError(f"{text!r} sets bits the kernel does not define (at most 0x{MAX_COREDUMP_FILTER:x})")
    return value


def parse_compress(text: str) -> str:
    """"zstd" or "none". Raise ValueError."""
    value = text.strip().lower() if isinstance(text, str) else ""
    if value not in ("zstd", "none"):
        raise ValueError(f"{text!r} is not one of zstd, none")
    return value


def normalize_path(path: str) -> str:
    """A mount path compared the way the kubelet mounts it: no trailing or doubled '/'."""
    norm = posixpath.normpath(path)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    return norm


def covers(mount_path: str, directory: str) -> bool:
    """Whether a volume mounted at ``mount_path`` holds ``directory`` (same or a parent)."""
    mp = normalize_path(mount_path)
    return mp == directory or directory.startswith(mp.rstrip("/") + "/")


def _unique(base: str, taken: set[str]) -> str:
    """``base``, or ``base-2``, ``base-3``... whichever the user has not taken."""
    if base not in taken:
        return base
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


def _dicts(value: Any) -> list[dict[str, Any]]:
    """The dict items of a list field (the API server only sends dicts; tolerate the rest)."""
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, dict)]


def _names(value: str) -> list[str]:
    return [n.strip() for n in value.split(",") if n.strip()]


@dataclass
class _Target:
    """A container to prepare: where it sits in the pod and what it holds."""

    field: str  # "containers" or "initContainers"
    index: int
    container: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.container.get("name", ""))

    @property
    def path(self) -> str:
        return f"/spec/{self.field}/{self.index}"


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
    except _Refused as refused:
        return MutationResult(
            allowed=False, message=refused.message, warnings=mutation.warnings, pattern=mutation.raw
        )


class _Mutation:
    """One pod's mutation; the steps are methods sharing the patch and warnings being built."""

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
        self.workload_refusal: str | None = None
        self.unwritable: str | None = None
        self.annotations = annotations
        self.settings = settings
        self.namespace = namespace or ""
        self.resolve_image = resolve_image
        self.deadline = deadline
        self.patch: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self.raw: str | None = None

    def warn(self, text: str) -> None:
        text = clip(text)
        if text not in self.warnings:
            self.warnings.append(text)

    # -- the steps ------------------------------------------------------------------------

    def run(self) -> MutationResult:
        pattern = self.pattern()
        spec = self.pod.get("spec")
        if not isinstance(spec, dict):
            raise _Refused("the pod has no spec")
        self.spec = spec
        os_name = (spec.get("os") or {}).get("name") if isinstance(spec.get("os"), dict) else None
        if os_name == "windows":
            self.warn("Windows pod: core dumps are not prepared (Linux only)")
            return MutationResult(warnings=self.warnings, pattern=self.raw)
        self.containers = _dicts(spec.get("containers"))
        self.init_containers = _dicts(spec.get("initContainers"))
        if not self.containers:
            self.warn("pod has no containers: nothing prepared")
            return MutationResult(warnings=self.warnings, pattern=self.raw)
        options = self.registration_options()
        targets = self.targets()
        taken = self.reserved_path_user(targets)
        if taken is not None:
            self.warn(f"container {taken} mounts {C.WRAPPER_DIR}, reserved for the wrapper: pod not prepared")
            return MutationResult(warnings=self.warnings, pattern=self.raw)

        volume_names = {str(v.get("name")) for v in _dicts(spec.get("volumes"))}
        new_volumes: list[dict[str, Any]] = []
        mounts: dict[int, list[dict[str, Any]]] = {id(t.container): [] for t in targets}
        core_volume = self.volume(pattern, targets, volume_names, new_volumes, mounts)

        wrapper_volume = _unique(C.WRAPPER_VOLUME, volume_names | {v["name"] for v in new_volumes})
        new_volumes.append({"name": wrapper_volume, "emptyDir": {"sizeLimit": WRAPPER_VOLUME_SIZE}})
        for t in targets:
            mounts[id(t.container)].append({"name": wrapper_volume, "mountPath": C.WRAPPER_DIR, "readOnly": True})

        self.append_all("/spec/volumes", spec.get("volumes"), new_volumes)
        resolved = self.resolve_images(targets)
        for t in targets:
            self.append_all(t.path + "/volumeMounts", t.container.get("volumeMounts"), mounts[id(t.container)])
            self.wrap_command(t, resolved)
            skipped = self.capability_skip_reason(t)
            if skipped is None:
                self.add_capability(t)
            elif skipped not in podsecurity.USELESS:
                self.warn(f"SYS_RESOURCE not added ({skipped}): cores are still kept in full")
            self.registration_env(t, pattern, options)
        self.add_installer(wrapper_volume)
        self.add_annotations(pattern, targets, core_volume)
        return MutationResult(
            patch=self.patch, warnings=self.warnings, pattern=self.raw, workload_refusal=self.workload_refusal
        )

    def capability_skip_reason(self, t: _Target) -> str | None:
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
            raise _Refused(f"annotation {key}: {exc}") from None
        self.raw = pattern.raw
        for text in pattern.warnings:
            self.warn(text)
        return pattern

    def registration_options(self) -> dict[str, str]:
        """Step 5 (validation first): per-pod options copied into the environment, normalized."""
        out: dict[str, str] = {}
        checks: list[tuple[str, str, Callable[[str], str]]] = [
            (C.ANN_MAX_SIZE, C.ENV_MAX_SIZE, lambda v: str(parse_size(v))),
            (C.ANN_COMPRESS, C.ENV_COMPRESS, parse_compress),
            (C.ANN_COREDUMP_FILTER, C.ENV_COREDUMP_FILTER, lambda v: f"0x{parse_coredump_filter(v):x}"),
        ]
        for ann, env, check in checks:
            if ann not in self.annotations:
                continue
            try:
                out[env] = check(self.annotations[ann])
            except ValueError as exc:
                raise _Refused(f"annotation {ann}: {exc}") from None
        return out

    def targets(self) -> list[_Target]:
        """Step 6: the containers to prepare (init containers first, in pod order)."""
        regular = [_Target("containers", i, c) for i, c in enumerate(self.containers)]
        init = [_Target("initContainers", i, c) for i, c in enumerate(self.init_containers)]
        chosen = regular
        if C.ANN_CONTAINERS in self.annotations:
            value = self.annotations[C.ANN_CONTAINERS]
            names = _names(value) if isinstance(value, str) else []
            if not names:
                raise _Refused(f"annotation {C.ANN_CONTAINERS}: names no container")
            by_name = {t.name: t for t in regular}
            init_names = {t.name for t in init}
            for name in names:
                if name not in by_name:
                    hint = (
                        f" (it is an init container: use {C.ANN_INIT_CONTAINERS})"
                        if name in init_names
                        else f" (containers: {', '.join(by_name)})"
                    )
                    raise _Refused(f"annotation {C.ANN_CONTAINERS}: no container named {name!r}{hint}")
            wanted = set(names)
            chosen = [t for t in regular if t.name in wanted]
        init_chosen: list[_Target] = []
        if C.ANN_INIT_CONTAINERS in self.annotations:
            value = self.annotations[C.ANN_INIT_CONTAINERS]
            if not isinstance(value, str):
                raise _Refused(f"annotation {C.ANN_INIT_CONTAINERS}: must be 'true' or container names")
            if value.strip().lower() == "true":
                init_chosen = init
            elif value.strip().lower() not in ("", "false"):
                by_name = {t.name: t for t in init}
                for name in _names(value):
                    if name not in by_name:
                        known = ", ".join(by_name) or "none"
                        raise _Refused(
                            f"annotation {C.ANN_INIT_CONTAINERS}: no init container named {name!r} (init containers: {known})"
                        )
                wanted = set(_names(value))
                init_chosen = [t for t in init if t.name in wanted]
        return init_chosen + chosen

    def reserved_path_user(self, targets: list[_Target]) -> str | None:
        """The first target that mounts something at (or inside) the wrapper's directory."""
        for t in targets:
            for m in _dicts(t.container.get("volumeMounts")):
                mp = m.get("mountPath")
                if isinstance(mp, str) and mp and covers(C.WRAPPER_DIR, normalize_path(mp)):
                    return t.name
        return None

    def volume(
        self,
        pattern: Pattern,
        targets: list[_Target],
        volume_names: set[str],
        new_volumes: list[dict[str, Any]],
        mounts: dict[int, list[dict[str, Any]]],
    ) -> str:
        """Step 2: the volume that receives the cores. Returns "volume@mountPath" ("" if none)."""
        directory = pattern.directory
        if directory is not None:
            directory = normalize_path(directory)  # /data/./dump-a is where /data/dump-a is mounted
        override = self.annotations.get(C.ANN_VOLUME)
        if directory is None:
            self.warn("no core volume added for a relative pattern: use an absolute path to keep cores")
            return ""
        covering = {id(t.container): _covering_mount(t.container, directory) for t in targets}
        reference = _deepest(m for m in covering.values() if m is not None)
        if reference is None:
            others = [c for c in self.init_containers + self.containers if id(c) not in covering]
            reference = _deepest(m for m in (_covering_mount(c, directory) for c in others) if m is not None)
        if reference is not None:
            if override is not None:
                self.warn(f"{C.ANN_VOLUME} ignored: volume {reference['name']} already holds {directory}")
            mount = {"name": reference["name"], "mountPath": reference["mountPath"]}
            for key in ("subPath", "subPathExpr"):
                if isinstance(reference.get(key), str):
                    mount[key] = reference[key]
            for t in targets:
                own = covering[id(t.container)]
                if own is None:
                    mounts[id(t.container)].append(dict(mount))
                elif own.get("readOnly") is True:
                    self.read_only(t, own)
            return f"{reference['name']}@{normalize_path(reference['mountPath'])}"

        choice = self.settings.default_volume
        if override is not None:
            if self.settings.allow_pod_volume_override:
                choice = override
            else:
                self.warn(f"{C.ANN_VOLUME} ignored: the operator does not allow pods to choose their volume")
        try:
            source = parse_volume_spec(choice, empty_dir_size_limit=self.settings.empty_dir_size_limit)
        except VolumeSpecError as exc:
            raise _Refused(f"annotation {C.ANN_VOLUME}: {exc}") from None
        if not podsecurity.volume_allowed(source, self.level):
            kind = next(iter(source))
            self.warn(f"{kind} volume not allowed by Pod Security {self.level}: cores kept in an emptyDir")
            source = parse_volume_spec("emptyDir", empty_dir_size_limit=self.settings.empty_dir_size_limit)
        name = _unique(C.CORE_VOLUME, volume_names)
        new_volumes.append({"name": name, **source})
        for t in targets:
            mounts[id(t.container)].append({"name": name, "mountPath": directory})
        if "emptyDir" in source:
            self.warn(f"cores kept in emptyDir {name}: they outlive restarts, not the pod (see {C.ANN_VOLUME})")
        return f"{name}@{directory}"

    def read_only(self, t: _Target, mount: dict[str, Any]) -> None:
        """A read-only mount holds the pattern's directory: no core can ever be written there.

        A workload is refused at ``kubectl apply`` (its owner can fix the template); a bare pod
        is admitted with a warning and the reason recorded on it, for ``coredump list``.
        """
        where = normalize_path(mount["mountPath"])
        reason = f"container {t.name}: volume {mount['name']} is read-only at {where}"
        # one reason per container ("; "): the agent reads the crashed container's (podvolumes.py)
        self.unwritable = f"{self.unwritable}; {reason}" if self.unwritable else reason
        self.warn(f"container {t.name}: {mount['name']} is read-only at {where}: no core can be written")
        if self.workload_refusal is None:
            self.workload_refusal = (
                f"container {t.name!r} mounts volume {mount['name']!r} read-only at {where}, which holds the "
                f"core pattern's directory: no core could ever be written. Drop readOnly there, or point the "
                f"pattern at a directory outside that mount"
            )

    def resolve_images(self, targets: list[_Target]) -> dict[str, Any]:
        """Registry look-ups of every target without a command, all at once (see wrap_command)."""
        if not self.settings.resolve_entrypoints or self.resolve_image is None:
            return {}
        images: list[str] = []
        for t in targets:
            command, image = t.container.get("command"), t.container.get("image")
            if (not isinstance(command, list) or not command) and isinstance(image, str) and image:
                if image not in images:
                    images.append(image)
        if not images:
            return {}
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return {}
        many = getattr(self.resolve_image, "resolve_many", None)
        if many is None:
            return {}  # a plain callable: wrap_command asks it one image at a time
        try:
            outcomes = many(images, namespace=self.namespace, pull_secrets=self.pull_secrets(), deadline=self.deadline)
        except Exception as exc:  # noqa: BLE001 - the collaborator failing degrades every image
            return {image: exc for image in images}
        out: dict[str, Any] = {}
        for image, value in outcomes.items():
            if isinstance(value, Exception):
                out[image] = value
                continue
            try:
                out[image] = (_strings(value.entrypoint), _strings(value.cmd))
            except Exception as exc:  # noqa: BLE001
                out[image] = exc
        return out

    def wrap_command(self, t: _Target, resolved: dict[str, Any]) -> None:
        """Step 3: run the wrapper first, keeping Kubernetes' command/args semantics."""
        c = t.container
        command = c.get("command")
        if isinstance(command, list) and command:
            if command[0] != C.WRAPPER_PATH:
                self.patch.append({"op": "add", "path": t.path + "/command", "value": [C.WRAPPER_PATH, *command]})
            return
        # No command: the image's ENTRYPOINT runs, with args (or the image's CMD) after it.
        image = c.get("image")
        if not isinstance(image, str) or not image:
            self.warn(f"container {t.name}: no image, command not wrapped")
            return
        if not self.settings.resolve_entrypoints:
            self.warn(f"container {t.name}: no command and entrypoint look-up is off: core limit not raised")
            return
        if self.resolve_image is None:
            self.warn(f"container {t.name}: no command and no registry resolver: core limit not raised")
            return
        if image not in resolved:
            if self.deadline is not None and time.monotonic() >= self.deadline:
                self.warn(f"container {t.name}: not wrapped, could not resolve the image's entrypoint (time budget spent)")
                return
            try:
                config = self.resolve_image(
                    image, namespace=self.namespace, pull_secrets=self.pull_secrets(), deadline=self.deadline
                )
                resolved[image] = (_strings(config.entrypoint), _strings(config.cmd))
            except Exception as exc:  # any failure of the collaborator degrades to a warning
                resolved[image] = exc
        outcome = resolved[image]
        if isinstance(outcome, Exception):
            # A short reason class, never the raw error (it could map the webhook's network).
            reason = getattr(outcome, "reason", None) or "lookup failed"
            self.warn(f"container {t.name}: not wrapped, could not resolve the image's entrypoint ({reason})")
            return
        entrypoint, cmd = outcome
        if entrypoint == [""]:  # the image explicitly reset its ENTRYPOINT
            entrypoint = []
        args = c.get("args")
        has_args = isinstance(args, list) and bool(args)
        if not entrypoint and not has_args and not cmd:
            self.warn(f"container {t.name}: image {image} has no ENTRYPOINT or CMD: command not wrapped")
            return
        self.patch.append(
            {"op": "add", "path": t.path + "/command", "value": [C.WRAPPER_PATH, *escape_dollars(entrypoint)]}
        )
        if not has_args and cmd:
            # A container command makes the runtime drop the image's CMD: carry it over as args.
            self.patch.append({"op": "add", "path": t.path + "/args", "value": escape_dollars(cmd)})

    def pull_secrets(self) -> list[str]:
        return [
            s["name"] for s in _dicts(self.spec.get("imagePullSecrets")) if isinstance(s.get("name"), str)
        ]

    def add_capability(self, t: _Target) -> None:
        """Step 4: SYS_RESOURCE merged into securityContext.capabilities.add."""
        sc = t.container.get("securityContext")
        path = t.path + "/securityContext"
        if not isinstance(sc, dict):
            self.patch.append({"op": "add", "path": path, "value": {"capabilities": {"add": [CAPABILITY]}}})
            return
        if sc.get("privileged") is True:
            self.warn(f"container {t.name} is privileged: it has every capability, SYS_RESOURCE not added")
            return
        caps = sc.get("capabilities")
        if not isinstance(caps, dict):
            self.patch.append({"op": "add", "path": path + "/capabilities", "value": {"add": [CAPABILITY]}})
            return
        add = caps.get("add")
        if not isinstance(add, list):
            self.patch.append({"op": "add", "path": path + "/capabilities/add", "value": [CAPABILITY]})
        elif CAPABILITY not in add and "CAP_" + CAPABILITY not in add:
            self.patch.append({"op": "add", "path": path + "/capabilities/add/-", "value": CAPABILITY})

    def registration_env(self, t: _Target, pattern: Pattern, options: dict[str, str]) -> None:
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
            self.patch.append({"op": "add", "path": t.path + "/env", "value": wanted})
            return
        existing = {item.get("name"): i for i, item in enumerate(env) if isinstance(item, dict)}
        for var in wanted:
            i = existing.get(var["name"])
            if i is None:
                self.patch.append({"op": "add", "path": t.path + "/env/-", "value": var})
            else:
                self.warn(f"container {t.name}: {var['name']} is set by coredump-webhook, your value was replaced")
                self.patch.append({"op": "replace", "path": f"{t.path}/env/{i}", "value": var})

    def add_installer(self, wrapper_volume: str) -> None:
        """Step 3: the init container that installs the wrapper, first of all init containers."""
        taken = {
            str(c.get("name"))
            for c in self.containers + self.init_containers + _dicts(self.spec.get("ephemeralContainers"))
        }
        installer = {
            "name": _unique(C.INSTALLER_CONTAINER, taken),
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
            self.patch.append({"op": "add", "path": "/spec/initContainers/0", "value": installer})
        else:
            self.patch.append({"op": "add", "path": "/spec/initContainers", "value": [installer]})

    def add_annotations(self, pattern: Pattern, targets: list[_Target], core_volume: str) -> None:
        """Step 5 and 7: what the agent and the CLI read from the API, and the idempotence mark."""
        base = "/metadata/annotations/"
        for key, value in (
            (C.ANN_STATUS, C.STATUS_INJECTED),
            (C.ANN_EFFECTIVE_PATTERN, pattern.raw),
            (C.ANN_TARGETS, json.dumps([t.name for t in targets], separators=(",", ":"))),
            (C.ANN_CORE_VOLUME, core_volume),
            *([(C.ANN_UNWRITABLE, self.unwritable)] if self.unwritable else []),
        ):
            self.patch.append({"op": "add", "path": base + escape_pointer(key), "value": value})

    def append_all(self, path: str, current: Any, items: list[dict[str, Any]]) -> None:
        """Append ``items`` to the list at ``path``, creating it when absent."""
        if not items:
            return
        if isinstance(current, list):
            self.patch.extend({"op": "add", "path": path + "/-", "value": item} for item in items)
        else:
            self.patch.append({"op": "add", "path": path, "value": list(items)})


def is_prepared(pod: dict[str, Any]) -> bool:
    """Whether ``pod`` carries what the mutation injects: the installer init container and the
    wrapper's mount (the status annotation alone is only the pod's word)."""
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        return False
    def is_installer(c: dict[str, Any]) -> bool:
        command = c.get("command")
        return isinstance(command, list) and command[:2] == [C.IMAGE_WRAPPER_PATH, C.WRAPPER_INSTALL_FLAG]

    init = _dicts(spec.get("initContainers"))
    mounted = any(
        isinstance(m.get("mountPath"), str) and normalize_path(m["mountPath"]) == C.WRAPPER_DIR
        for c in init + _dicts(spec.get("containers"))
        if not is_installer(c)
        for m in _dicts(c.get("volumeMounts"))
    )
    return mounted and any(is_installer(c) for c in init)


def _field_env(name: str, field_path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": field_path}}}


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"resolver returned {value!r}, not a list of strings")
    return list(value)


def _covering_mount(container: dict[str, Any], directory: str) -> dict[str, Any] | None:
    """The deepest mount of ``container`` that holds ``directory``, if any."""
    return _deepest(
        m for m in _dicts(container.get("volumeMounts"))
        if isinstance(m.get("mountPath"), str) and isinstance(m.get("name"), str) and m["mountPath"]
        and covers(m["mountPath"], directory)
    )


def _deepest(mounts: Any) -> dict[str, Any] | None:
    """The mount with the longest (normalized) mountPath; the first of equals."""
    best: dict[str, Any] | None = None
    for m in mounts:
        if best is None or len(normalize_path(m["mountPath"])) > len(normalize_path(best["mountPath"])):
            best = m
    return best


def apply(pod: dict[str, Any], patch: list[dict[str, Any]]) -> dict[str, Any]:
    """The pod after ``patch`` (a new object; ``pod`` is untouched). For tests and summaries."""
    return jsonpatch.apply_patch(pod, patch)
