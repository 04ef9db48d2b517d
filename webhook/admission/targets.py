"""Step 6: which containers the mutation prepares, from the pod's annotations.

Regular containers all, or those ``coredump-webhook.io/containers`` names; init containers
only when ``coredump-webhook.io/init-containers`` says "true" or names them. A name that is
not in the pod refuses the pod, with the names it has (a typo must not silently keep no core).
"""

from __future__ import annotations

from typing import Any

from webhook import constants as C
from webhook.admission.patch import Refused
from webhook.admission.podspec import Target, covers, dicts, names, normalize_path


def select_targets(
    annotations: dict[str, Any], containers: list[dict[str, Any]], init_containers: list[dict[str, Any]]
) -> list[Target]:
    """The containers to prepare: chosen init containers first, then regular ones, in pod order."""
    regular = [Target("containers", i, c) for i, c in enumerate(containers)]
    init = [Target("initContainers", i, c) for i, c in enumerate(init_containers)]
    chosen = _chosen_regular(annotations, regular, init)  # its refusal comes first
    return _chosen_init(annotations, init) + chosen


def _chosen_regular(annotations: dict[str, Any], regular: list[Target], init: list[Target]) -> list[Target]:
    if C.ANN_CONTAINERS not in annotations:
        return regular
    value = annotations[C.ANN_CONTAINERS]
    wanted = names(value) if isinstance(value, str) else []
    if not wanted:
        raise Refused(f"annotation {C.ANN_CONTAINERS}: names no container")
    by_name = {t.name: t for t in regular}
    missing = _first_missing(wanted, by_name)
    if missing is not None:
        hint = (
            f" (it is an init container: use {C.ANN_INIT_CONTAINERS})"
            if missing in {t.name for t in init}
            else f" (containers: {', '.join(by_name)})"
        )
        raise Refused(f"annotation {C.ANN_CONTAINERS}: no container named {missing!r}{hint}")
    return _named(regular, wanted)


def _chosen_init(annotations: dict[str, Any], init: list[Target]) -> list[Target]:
    if C.ANN_INIT_CONTAINERS not in annotations:
        return []
    value = annotations[C.ANN_INIT_CONTAINERS]
    if not isinstance(value, str):
        raise Refused(f"annotation {C.ANN_INIT_CONTAINERS}: must be 'true' or container names")
    flag = value.strip().lower()
    if flag == "true":
        return init
    if flag in ("", "false"):
        return []
    wanted = names(value)
    by_name = {t.name: t for t in init}
    missing = _first_missing(wanted, by_name)
    if missing is not None:
        known = ", ".join(by_name) or "none"
        raise Refused(f"annotation {C.ANN_INIT_CONTAINERS}: no init container named {missing!r} (init containers: {known})")
    return _named(init, wanted)


def _first_missing(wanted: list[str], by_name: dict[str, Target]) -> str | None:
    return next((name for name in wanted if name not in by_name), None)


def _named(targets: list[Target], wanted: list[str]) -> list[Target]:
    """The targets ``wanted`` names, in pod order (a name given twice counts once)."""
    chosen = set(wanted)
    return [t for t in targets if t.name in chosen]


def reserved_path_user(targets: list[Target]) -> str | None:
    """The first target that mounts something at (or inside) the wrapper's directory."""
    for t in targets:
        for m in dicts(t.container.get("volumeMounts")):
            mp = m.get("mountPath")
            if isinstance(mp, str) and mp and covers(C.WRAPPER_DIR, normalize_path(mp)):
                return t.name
    return None
