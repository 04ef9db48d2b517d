"""Pure builders for the inspection side: where a pod's cores are, the debug container, the
reader pod.

Everything here takes and returns plain dicts shaped like the Kubernetes API's JSON, so it is
tested with golden files and ``kubernetes-validate`` and never needs a cluster.

Why a strategic merge patch on ``pods/ephemeralcontainers``: ``spec.ephemeralContainers`` is a
list merged by ``name``, so ``{"spec": {"ephemeralContainers": [NEW]}}`` adds one container
without resending the others and without a resourceVersion (no read-modify-write race); it is
what ``kubectl debug`` itself sends, and it works from 1.23 (beta) through GA (1.25) onwards. A
JSON patch ``add /spec/ephemeralContainers/-`` fails with 422 on a pod that has none yet (the
array must exist), so it would need a read and a branch for the same effect.
"""

from __future__ import annotations

import json
import random
import re
import string
from dataclasses import dataclass

from webhook import constants
from webhook.inspect.claim_pods import claim_pod
from webhook.pattern import PatternError, parse

#: Prefix of the debug containers we add.
DEBUG_PREFIX = "coredump-debug-"
#: Prefix of the reader pods that mount a claim after the crashed pod is gone.
READER_PREFIX = "coredump-reader-"
#: Where a reader pod mounts the claim.
READER_MOUNT = "/cores"
#: Label on reader pods (find and clean them up).
READER_LABEL = "app.kubernetes.io/name"
READER_LABEL_VALUE = "coredump-reader"


class InspectError(Exception):
    """A problem the user can act on; the message says what to do."""


class NoCoreVolume(InspectError):
    """The pod was not prepared by the webhook, or its core volume cannot be found."""


@dataclass(frozen=True)
class CoreLocation:
    """Where a pod's cores live."""

    #: The pod volume that holds them.
    volume: str
    #: Its mountPath in the target container (the debug container mounts it at the same path).
    mount_path: str
    #: The pattern's static directory (where to look for cores), inside mount_path.
    directory: str
    #: The container whose mount was used (the crashed container by default).
    container: str
    #: The target container's volumeMount entry, copied into the debug container.
    mount: dict
    #: The effective pattern, "" when unknown.
    pattern: str = ""


def _meta(pod: dict) -> dict:
    return pod.get("metadata") or {}


def pod_ref(pod: dict) -> str:
    m = _meta(pod)
    return f"{m.get('namespace', 'default')}/{m.get('name', '?')}"


def targets(pod: dict) -> list[str]:
    """The containers the webhook prepared (annotation), in order; [] when not annotated."""
    raw = (_meta(pod).get("annotations") or {}).get(constants.ANN_TARGETS)
    if not raw:
        return []
    try:
        value = json.loads(raw)
    except ValueError:
        return [t.strip() for t in raw.split(",") if t.strip()]
    return [str(v) for v in value] if isinstance(value, list) else []


def has_wrapper(pod: dict, container: str) -> bool:
    """True when the webhook put its static wrapper (with the read-only list and cat modes) at
    :data:`~webhook.constants.WRAPPER_PATH` in ``container``: then no shell is needed to read cores."""
    ann = _meta(pod).get("annotations") or {}
    return ann.get(constants.ANN_STATUS) == constants.STATUS_INJECTED and container in targets(pod)


def _containers(pod: dict) -> list[dict]:
    spec = pod.get("spec") or {}
    return list(spec.get("containers") or []) + list(spec.get("initContainers") or [])


def _container(pod: dict, name: str) -> dict | None:
    return next((c for c in _containers(pod) if c.get("name") == name), None)


def pick_container(pod: dict, requested: str | None) -> str:
    """The crashed container: the one asked for, else the first target, else the only one."""
    names = [str(c.get("name") or "") for c in _containers(pod)]
    if requested:
        if requested not in names:
            raise InspectError(f"pod {pod_ref(pod)} has no container {requested!r} (has: {', '.join(names)})")
        return requested
    tg = [t for t in targets(pod) if t in names]
    if tg:
        return tg[0]
    regular = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
    if len(regular) == 1:
        return regular[0]
    raise InspectError(f"pod {pod_ref(pod)} has several containers: choose one with -c ({', '.join(regular)})")


def effective_pattern(pod: dict) -> str:
    ann = _meta(pod).get("annotations") or {}
    for key in (constants.ANN_EFFECTIVE_PATTERN, *constants.PATTERN_ANNOTATIONS):
        if ann.get(key):
            return ann[key]
    return ""


def _within(path: str, root: str) -> bool:
    root = root.rstrip("/") or "/"
    return path == root or path.startswith(root + "/") or root == "/"


def _pattern_directory(pattern: str) -> str | None:
    """The directory of an effective core pattern (None when there is none or it does not parse)."""
    if not pattern:
        return None
    try:
        return parse(pattern).directory
    except PatternError:
        return None


def _annotated_mount(pod: dict, name: str, mounts: list[dict], raw: str) -> tuple[str, str, dict]:
    """(volume, mount path, mount) named by the ``core-volume`` annotation ("<volume>@<mountPath>")."""
    volume, _, mount_path = raw.partition("@")
    mount = next((m for m in mounts if m.get("name") == volume), None)
    if mount is None:
        raise NoCoreVolume(
            f"pod {pod_ref(pod)}: container {name!r} does not mount the core volume {volume!r}"
            f" (annotation {constants.ANN_CORE_VOLUME}={raw!r}); choose the crashed container with -c"
        )
    return volume, mount.get("mountPath") or mount_path, mount


def _mount_above(pod: dict, name: str, mounts: list[dict], directory: str) -> tuple[str, str, dict]:
    """(volume, mount path, mount) of the volume mounted at the longest prefix of ``directory``."""
    candidates = [m for m in mounts if m.get("mountPath") and _within(directory, m["mountPath"])]
    if not candidates:
        raise NoCoreVolume(
            f"pod {pod_ref(pod)}: no volume of container {name!r} is mounted at or above {directory}"
        )
    mount = max(candidates, key=lambda m: len(m["mountPath"]))
    return mount["name"], mount["mountPath"], mount


def _not_prepared(pod: dict, ann: dict) -> NoCoreVolume:
    status = ann.get(constants.ANN_STATUS)
    return NoCoreVolume(
        f"pod {pod_ref(pod)} has no core volume: it was not prepared by coredump-webhook "
        f"({constants.ANN_STATUS}={status or 'unset'}); annotate it with "
        f"{constants.ANN_PATTERN} and recreate it"
    )


def core_location(pod: dict, container: str | None = None) -> CoreLocation:
    """Find the core volume of a pod from the webhook's annotations.

    ``core-volume`` ("<volume>@<mountPath>") is authoritative; without it, the volume mounted at
    the longest prefix of the pattern's directory in the container is used.
    """
    ann = _meta(pod).get("annotations") or {}
    name = pick_container(pod, container)
    spec = _container(pod, name) or {}
    mounts = spec.get("volumeMounts") or []
    pattern = effective_pattern(pod)
    directory = _pattern_directory(pattern)
    raw = ann.get(constants.ANN_CORE_VOLUME, "")
    if raw and "@" in raw:
        volume, mount_path, mount = _annotated_mount(pod, name, mounts, raw)
    elif directory:
        volume, mount_path, mount = _mount_above(pod, name, mounts, directory)
    else:
        raise _not_prepared(pod, ann)
    if not directory or not _within(directory, mount_path):
        directory = mount_path
    return CoreLocation(volume, mount_path, directory, name, dict(mount), pattern)


def _random_suffix(rng: random.Random, n: int = 5) -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(rng.choice(alphabet) for _ in range(n))


def unique_name(pod: dict, prefix: str = DEBUG_PREFIX, rng: random.Random | None = None) -> str:
    """``<prefix><5 random>`` not used by any container, init or ephemeral container of the pod."""
    rng = rng or random.SystemRandom()
    spec = pod.get("spec") or {}
    used = {c.get("name") for key in ("containers", "initContainers", "ephemeralContainers") for c in spec.get(key) or []}
    for _ in range(1000):
        name = prefix + _random_suffix(rng)
        if name not in used:
            return name
    raise InspectError("could not find a free debug container name")  # pragma: no cover


def debug_container(
    pod: dict,
    *,
    image: str,
    name: str,
    container: str | None = None,
    pull_policy: str = "IfNotPresent",
    command: list[str] | None = None,
) -> dict:
    """The ephemeral container: the core volume at the same path, targeting the crashed container."""
    loc = core_location(pod, container)
    mount = {k: v for k, v in loc.mount.items() if k in ("name", "mountPath", "subPath", "subPathExpr", "readOnly")}
    # subPathExpr expands the *container's* env: carry the variables it names, or the debug
    # container would mount the volume's root instead of the crashed container's directory.
    referenced = set(re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", mount.get("subPathExpr", "")))
    target_env = (_container(pod, loc.container) or {}).get("env") or []
    carried = [dict(e) for e in target_env if e.get("name") in referenced]
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": pull_policy,
        "command": command or ["/bin/sh"],
        "stdin": True,
        "tty": True,
        "targetContainerName": loc.container,
        "workingDir": loc.mount_path,
        "env": [
            {"name": "COREDUMP_DIR", "value": loc.directory},
            {"name": constants.ENV_PATTERN, "value": loc.pattern},
            *carried,
        ],
        "volumeMounts": [mount],
        "terminationMessagePolicy": "File",
    }


def ephemeral_patch(container: dict) -> dict:
    """The strategic merge patch for ``pods/ephemeralcontainers`` (see the module docstring)."""
    return {"spec": {"ephemeralContainers": [container]}}


def with_ephemeral(pod: dict, container: dict) -> dict:
    """The pod as the API server will hold it after the patch (for validation and tests)."""
    out = json.loads(json.dumps(pod))
    spec = out.setdefault("spec", {})
    spec["ephemeralContainers"] = list(spec.get("ephemeralContainers") or []) + [container]
    return out


def ephemeral_state(pod: dict, name: str) -> tuple[str, str]:
    """("running"|"waiting"|"terminated"|"absent", reason/message) of an ephemeral container."""
    for st in (pod.get("status") or {}).get("ephemeralContainerStatuses") or []:
        if st.get("name") != name:
            continue
        state = st.get("state") or {}
        for key in ("running", "terminated", "waiting"):
            if key in state:
                detail = state[key] or {}
                return key, " ".join(x for x in (detail.get("reason", ""), detail.get("message", "")) if x)
        return "waiting", ""
    return "absent", ""


def reader_pod(
    namespace: str,
    claim: str,
    *,
    image: str,
    name: str,
    run_as_user: int | None = None,
    deadline_seconds: int = 900,
) -> dict:
    """A short-lived pod that mounts a claim read-only, to list and fetch cores of a gone pod.

    It sleeps (the CLI execs ``find``/``cat``/``tail`` into it, like into any pod) and is
    deleted by the CLI when done; ``activeDeadlineSeconds`` ends it if the CLI dies. Nothing
    is mounted writable and no service account token is given. ``run_as_user`` (the app's
    uid) lets it run under the ``restricted`` Pod Security level; the cores are owned by the
    crashing process's uid, so that uid can read them without extra capabilities.
    """
    security: dict = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True}
    pod_security: dict = {}
    if run_as_user is not None:
        security.update({"runAsNonRoot": run_as_user != 0, "runAsUser": run_as_user, "capabilities": {"drop": ["ALL"]}})
        pod_security = {"seccompProfile": {"type": "RuntimeDefault"}}
    container = {
        "name": "reader",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["sleep", str(deadline_seconds)],
        "volumeMounts": [{"name": "cores", "mountPath": READER_MOUNT, "readOnly": True}],
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
        "securityContext": security,
    }
    pod = claim_pod(namespace, name, claim, labels={READER_LABEL: READER_LABEL_VALUE}, container=container,
                    deadline_seconds=deadline_seconds)
    if pod_security:
        pod["spec"]["securityContext"] = pod_security
    return pod


def attach_command(namespace: str, pod: str, container: str, *, context: str | None = None, kubeconfig: str | None = None) -> list[str]:
    """The exact kubectl line that attaches to the debug container."""
    cmd = ["kubectl"]
    if kubeconfig:
        cmd += ["--kubeconfig", kubeconfig]
    if context:
        cmd += ["--context", context]
    return cmd + ["attach", "-it", "-n", namespace, pod, "-c", container]
