"""Step 2: the volume that receives the cores, and its mounts in the target containers.

A volume some container already mounts over the pattern's directory is shared (the deepest
such mount, a target's own first); otherwise a new volume is added there: the operator's
default, or the pod's own choice when the operator allows it, and an emptyDir when Pod
Security does not allow the chosen kind. A read-only mount over the directory is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from webhook import constants as C
from webhook.admission import podsecurity
from webhook.admission.patch import Draft, Refused
from webhook.admission.podspec import Target, covering_mount, deepest, normalize_path, unique
from webhook.admission.settings import AdmissionSettings, VolumeSpecError, parse_volume_spec
from webhook.pattern import Pattern


@dataclass
class Placement:
    """Where the cores go: the volume to add (if any) and each target's new mount."""

    #: "volume@mountPath" recorded on the pod ("" when the pattern is relative).
    label: str = ""
    volume: dict[str, Any] | None = None
    #: id(target container) -> the core mounts it gets (targets that already mount it: none).
    mounts: dict[int, list[dict[str, Any]]] = field(default_factory=dict)

    def mount(self, t: Target, mount: dict[str, Any]) -> None:
        self.mounts.setdefault(id(t.container), []).append(dict(mount))


def place_cores(
    draft: Draft,
    pattern: Pattern,
    targets: list[Target],
    *,
    annotations: dict[str, Any],
    settings: AdmissionSettings,
    level: str,
    containers: list[dict[str, Any]],
    volume_names: set[str],
) -> Placement:
    """Step 2 for ``targets``; ``containers`` are all of the pod's (init first)."""
    if pattern.directory is None:
        draft.warn("no core volume added for a relative pattern: use an absolute path to keep cores")
        return Placement()
    directory = normalize_path(pattern.directory)  # /data/./dump-a is where /data/dump-a is mounted
    override = annotations.get(C.ANN_VOLUME)
    covering = {id(t.container): covering_mount(t.container, directory) for t in targets}
    reference = _reference(covering, containers, directory)
    if reference is not None:
        if override is not None:
            draft.warn(f"{C.ANN_VOLUME} ignored: volume {reference['name']} already holds {directory}")
        return _share(draft, reference, covering, targets)
    source = _source(draft, override, settings, level)
    name = unique(C.CORE_VOLUME, volume_names)
    if "emptyDir" in source:
        draft.warn(f"cores kept in emptyDir {name}: they outlive restarts, not the pod (see {C.ANN_VOLUME})")
    placement = Placement(f"{name}@{directory}", {"name": name, **source})
    for t in targets:
        placement.mount(t, {"name": name, "mountPath": directory})
    return placement


def _reference(
    covering: dict[int, dict[str, Any] | None], containers: list[dict[str, Any]], directory: str
) -> dict[str, Any] | None:
    """The mount to share: the deepest of the targets', else the deepest of the other containers'."""
    reference = deepest(m for m in covering.values() if m is not None)
    if reference is not None:
        return reference
    others = [c for c in containers if id(c) not in covering]
    return deepest(m for m in (covering_mount(c, directory) for c in others) if m is not None)


def _share(
    draft: Draft, reference: dict[str, Any], covering: dict[int, dict[str, Any] | None], targets: list[Target]
) -> Placement:
    """Mount ``reference``'s volume, as it is mounted there, in every target that lacks it."""
    mount = {"name": reference["name"], "mountPath": reference["mountPath"]}
    for key in ("subPath", "subPathExpr"):
        if isinstance(reference.get(key), str):
            mount[key] = reference[key]
    placement = Placement(f"{reference['name']}@{normalize_path(reference['mountPath'])}")
    for t in targets:
        own = covering[id(t.container)]
        if own is None:
            placement.mount(t, mount)
        elif own.get("readOnly") is True:
            read_only(draft, t, own)
    return placement


def _source(draft: Draft, override: Any, settings: AdmissionSettings, level: str) -> dict[str, Any]:
    """The new volume's source: the pod's choice when allowed, else the operator's default."""
    choice = settings.default_volume
    if override is not None:
        if settings.allow_pod_volume_override:
            choice = override
        else:
            draft.warn(f"{C.ANN_VOLUME} ignored: the operator does not allow pods to choose their volume")
    try:
        source = parse_volume_spec(choice, empty_dir_size_limit=settings.empty_dir_size_limit)
    except VolumeSpecError as exc:
        raise Refused(f"annotation {C.ANN_VOLUME}: {exc}") from None
    if not podsecurity.volume_allowed(source, level):
        kind = next(iter(source))
        draft.warn(f"{kind} volume not allowed by Pod Security {level}: cores kept in an emptyDir")
        source = parse_volume_spec("emptyDir", empty_dir_size_limit=settings.empty_dir_size_limit)
    return source


def read_only(draft: Draft, t: Target, mount: dict[str, Any]) -> None:
    """A read-only mount holds the pattern's directory: no core can ever be written there.

    A workload is refused at ``kubectl apply`` (its owner can fix the template); a bare pod
    is admitted with a warning and the reason recorded on it, for ``coredump list``.
    """
    where = normalize_path(mount["mountPath"])
    reason = f"container {t.name}: volume {mount['name']} is read-only at {where}"
    # one reason per container ("; "): the agent reads the crashed container's (podvolumes.py)
    draft.unwritable = f"{draft.unwritable}; {reason}" if draft.unwritable else reason
    draft.warn(f"container {t.name}: {mount['name']} is read-only at {where}: no core can be written")
    if draft.workload_refusal is None:
        draft.workload_refusal = (
            f"container {t.name!r} mounts volume {mount['name']!r} read-only at {where}, which holds the "
            f"core pattern's directory: no core could ever be written. Drop readOnly there, or point the "
            f"pattern at a directory outside that mount"
        )
