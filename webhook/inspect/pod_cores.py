"""Cores of pods, read through the Kubernetes API with the user's credentials.

Which pods to scan (one, a namespace, or every namespace the user may read), each prepared
pod's core directory listed by exec (the wrapper's list mode, else ``sh``), and a claim whose
pod is gone, listed through a short-lived reader pod. API modules are imported when used: the
CLI starts without the Kubernetes client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from webhook import constants
from webhook.inspect import ephemeral as eph
from webhook.inspect.listing import listing_command, parse_listing, wrapper_listing_command
from webhook.inspect.records import CoreRecord
from webhook.inspect.settings import InspectSettings

if TYPE_CHECKING:
    from webhook.inspect.kube import KubeError


def default_namespace(ns: str | None, s: InspectSettings) -> str:
    """``ns``, else the kubeconfig context's namespace, else "default"."""
    if ns:
        return ns
    try:
        from kubernetes import config

        contexts, active = config.list_kube_config_contexts(config_file=s.kubeconfig)
        if s.context:
            active = next((c for c in contexts if c["name"] == s.context), active)
        return (active or {}).get("context", {}).get("namespace") or "default"
    except Exception:
        return "default"


def prepared(pod: dict) -> bool:
    """Did the webhook prepare this pod (a core volume, the wrapper)?"""
    ann = (pod.get("metadata") or {}).get("annotations") or {}
    return ann.get(constants.ANN_STATUS) == constants.STATUS_INJECTED or bool(ann.get(constants.ANN_CORE_VOLUME))


def _try_exec(api, namespace: str, pod: str, container: str, command: list[str]) -> bytes | KubeError:
    """The command's output, or its failure (an RBAC refusal is raised: nothing else would work)."""
    from webhook.inspect import kube, pod_exec

    try:
        return pod_exec.exec_output(api, namespace, pod, container, command)
    except kube.Forbidden:
        raise
    except kube.KubeError as exc:
        return exc


def _listing_failure(ref: str, container: str, wrapper_error: Exception | None, exc: Exception) -> str:
    """Why a pod's cores could not be listed, and what to do about it."""
    if wrapper_error is not None:
        return (f"{ref}: listing through {constants.WRAPPER_PATH} failed ({wrapper_error}), "
                f"and through sh too ({exc})")
    no_shell = "executable file not found" in str(exc) or "exit code 127" in str(exc)
    hint = (f" (container {container} has no shell and was not prepared by coredump-webhook: "
            "choose a prepared one with -c, or run `coredump debug` and look in $COREDUMP_DIR)")
    return f"{ref}: {exc}{hint if no_shell else ''}"


def read_cores(api, pod: dict, container: str | None = None) -> tuple[list[CoreRecord], list[str], str]:
    """List the metadata files in a running pod's core directory through exec.

    A container the webhook prepared is read through the wrapper's list mode (argv exec'd
    directly: distroless and scratch images work); any other container, or a wrapper too old to
    have that mode, through the ``sh``/``find`` script. Returns the records, warnings, and the
    wrapper path to download through ("" = the shell tools: ``tail``).
    """
    meta = pod.get("metadata") or {}
    ns, name = meta.get("namespace", "default"), meta.get("name", "?")
    loc = eph.core_location(pod, container)
    if (pod.get("status") or {}).get("phase") != "Running":
        return [], [f"{ns}/{name}: pod is {(pod.get('status') or {}).get('phase')}; for a claim use --claim"], ""
    wrapper_error = None
    if eph.has_wrapper(pod, loc.container):
        out = _try_exec(api, ns, name, loc.container, wrapper_listing_command([loc.directory]))
        if not isinstance(out, Exception):
            records, warnings = parse_listing(out, namespace=ns, pod=name)
            return records, warnings, constants.WRAPPER_PATH
        wrapper_error = out  # e.g. a wrapper from before the list mode: try the shell
    out = _try_exec(api, ns, name, loc.container, listing_command([loc.directory]))
    if isinstance(out, Exception):
        return [], [_listing_failure(f"{ns}/{name}", loc.container, wrapper_error, out)], ""
    records, warnings = parse_listing(out, namespace=ns, pod=name)
    return records, warnings, ""


def cores_of_pod(api, pod: dict, container: str | None = None) -> tuple[list[CoreRecord], list[str]]:
    """:func:`read_cores` without the download route."""
    records, warnings, _ = read_cores(api, pod, container)
    return records, warnings


def pods_to_scan(api, s: InspectSettings, pod: str | None, namespace: str | None, all_ns: bool) -> tuple[list[dict], list[str]]:
    """One pod, a namespace's pods, or (``-A``) every pod the user may list, namespace by namespace
    when listing them cluster-wide is refused."""
    from webhook.inspect import kube

    warnings: list[str] = []
    if pod:
        return [kube.read_pod(api, default_namespace(namespace, s), pod)], warnings
    if not all_ns:
        return kube.list_pods(api, default_namespace(namespace, s)), warnings
    try:
        return kube.list_pods(api, None), warnings
    except kube.Forbidden:
        pass
    pods: list[dict] = []
    for ns in kube.list_namespaces(api):
        try:
            pods += kube.list_pods(api, ns)
        except kube.Forbidden:
            warnings.append(f"namespace {ns}: no access to its pods, skipped")
    return pods, warnings


def collect(api, s: InspectSettings, *, pod: str | None, namespace: str | None, all_ns: bool,
            container: str | None = None) -> tuple[list[CoreRecord], list[str]]:
    """The cores of every prepared pod in scope, read by exec; what cannot be read is a warning
    (RBAC refusals too, with ``-A``)."""
    from webhook.inspect import kube

    pods, warnings = pods_to_scan(api, s, pod, namespace, all_ns)
    records: list[CoreRecord] = []
    for p in pods:
        if not prepared(p):
            if pod:
                raise eph.NoCoreVolume(f"pod {eph.pod_ref(p)} was not prepared by coredump-webhook")
            continue
        unwritable = ((p.get("metadata") or {}).get("annotations") or {}).get(constants.ANN_UNWRITABLE)
        if unwritable:  # recorded by the webhook at admission: a read-only mount holds the directory
            warnings.append(f"{eph.pod_ref(p)}: no core can be written in the pod ({unwritable}); "
                            "its cores go to the node location")
        try:
            recs, warns = cores_of_pod(api, p, container)
        except kube.Forbidden as exc:
            if pod or not all_ns:
                raise
            warnings.append(str(exc))
            continue
        except eph.InspectError as exc:
            warnings.append(str(exc))
            continue
        records += recs
        warnings += warns
    return records, warnings


def with_reader(api, s: InspectSettings, namespace: str, claim: str):
    """Create a reader pod on a claim; returns (pod name, cleanup)."""
    from webhook.inspect import kube

    name = eph.unique_name({}, prefix=eph.READER_PREFIX)
    kube.create_pod(api, eph.reader_pod(namespace, claim, image=s.reader_image, name=name, run_as_user=s.reader_uid))
    try:
        kube.wait_pod_running(api, namespace, name, timeout=s.wait_timeout)
    except Exception:
        kube.delete_pod(api, namespace, name)
        raise
    return name, lambda: kube.delete_pod(api, namespace, name)


def claim_records(api, namespace: str, claim: str, reader: str) -> tuple[list[CoreRecord], list[str]]:
    """The cores on a claim, listed in its reader pod."""
    from webhook.inspect import pod_exec

    out = pod_exec.exec_output(api, namespace, reader, "reader", listing_command([eph.READER_MOUNT]))
    return parse_listing(out, namespace=namespace, pod=f"(claim {claim})")
