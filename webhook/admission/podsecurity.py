"""Pod Security Admission runs after the mutation: decide what the webhook may add.

The only thing the mutation adds that Pod Security cares about is ``SYS_RESOURCE`` (outside
baseline's list; restricted allows only ``NET_BIND_SERVICE``) and, with an operator's NFS
default volume, an ``nfs`` volume (outside restricted's volume types). The capability only
lets the wrapper raise the *hard* RLIMIT_CORE, which matters only to a root process, and the
node agent keeps a registered pod's core whatever the limit: so it is added only where it can
help and the namespace's enforced level allows it. Pure: the namespace's level comes from the
caller (the namespace watch, :mod:`webhook.admission.namespaces`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: The namespace label Pod Security Admission enforces (AdmissionReview does not carry it).
ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"
LEVELS = ("privileged", "baseline", "restricted")
#: ``namespace -> enforced level``; "restricted" whenever the answer is not known.
LevelLookup = Callable[[str], str]
#: The annotation that asks for SYS_RESOURCE explicitly ("true") or refuses it ("false").
ANN_ADD_CAPABILITY = "coredump-webhook.io/add-capability"


def level_of(labels: Any, default: str = "privileged") -> str:
    """The enforced level from a namespace's labels; an unknown value counts as restricted
    (Pod Security itself refuses every pod in a namespace whose label it cannot read)."""
    value = labels.get(ENFORCE_LABEL) if isinstance(labels, dict) else None
    if value is None:
        return default
    return value if value in LEVELS else "restricted"


def _security_context(obj: Any) -> dict[str, Any]:
    sc = obj.get("securityContext") if isinstance(obj, dict) else None
    return sc if isinstance(sc, dict) else {}


def runs_as_non_root(container: dict[str, Any], pod_spec: dict[str, Any]) -> bool:
    """Whether the container's process is known not to be root (container settings win)."""
    csc, psc = _security_context(container), _security_context(pod_spec)
    user = csc.get("runAsUser", psc.get("runAsUser"))
    if isinstance(user, int) and not isinstance(user, bool) and user != 0:
        return True
    return csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True


#: Skips that lose nothing, so no warning: a non-root process loses an added capability at
#: execve (Kubernetes sets no ambient capabilities), in a user namespace it does not reach the
#: host's limits, and a pod that declined it knows.
USELESS = ("runs as non-root", "hostUsers: false", "the pod asked not to")


def capability_skip_reason(
    container: dict[str, Any], pod_spec: dict[str, Any], namespace: str, level: str, explicit: str | None
) -> str | None:
    """Why SYS_RESOURCE is not added to ``container`` (None: add it).

    ``explicit`` is the pod's add-capability annotation: "true" adds it wherever it can help
    (the pod's owner accepts that Pod Security may refuse it), "false" never adds it.
    """
    if explicit == "false":
        return "the pod asked not to"
    if pod_spec.get("hostUsers") is False:
        return "hostUsers: false"
    if runs_as_non_root(container, pod_spec):
        return "runs as non-root"
    if explicit == "true":
        return None
    if level in ("baseline", "restricted"):
        return f"namespace {namespace} enforces Pod Security {level}"
    return None


def explicit_choice(annotations: dict[str, Any]) -> str | None:
    """The add-capability annotation as "true"/"false", or None when absent or unreadable."""
    value = annotations.get(ANN_ADD_CAPABILITY)
    if not isinstance(value, str):
        return None
    value = value.strip().lower()
    return value if value in ("true", "false") else None


def volume_allowed(source: dict[str, Any], level: str) -> bool:
    """Whether a volume source the webhook would add passes ``level`` (restricted limits types)."""
    if level != "restricted":
        return True
    return not ({"nfs", "hostPath"} & set(source))
