"""``coredump list / get / debug / gcore / page``: find cores, fetch them, debug next to them.

kubectl-style options everywhere (``-n``, ``-A``, ``--context``, ``--kubeconfig``, ``-o``); every
option also reads an env var. All access goes through the Kubernetes API with the user's own
credentials: what RBAC refuses is reported (or, with ``-A``, skipped with a warning).
"""

from __future__ import annotations

import json
import re
import secrets
import sys
import time
from dataclasses import replace
from typing import Any

import click
import yaml

from webhook import constants
from webhook.cli_options import settings_from, settings_options
from webhook.clock import SYSTEM_CLOCK, Clock
from webhook.inspect import ephemeral as eph
from webhook.inspect.listing import listing_command, parse_listing, wrapper_listing_command
from webhook.inspect.page_settings import PageSettings
from webhook.inspect.records import CoreRecord, find_record
from webhook.inspect.rendering import render
from webhook.inspect.settings import InspectSettings

#: The settings every inspection command offers (-n, --context, --kubeconfig).
KUBE_SETTINGS = ("namespace", "context", "kubeconfig")
#: --context/--kubeconfig/-n shared by every command.
kube_options = settings_options(InspectSettings, only=KUBE_SETTINGS, show_envvar=False)


def _settings(**kw: Any) -> InspectSettings:
    """The settings from a command's parsed values (None: the field's default)."""
    return settings_from(InspectSettings, {k: v for k, v in kw.items() if v is not None})


def _namespace(ns: str | None, s: InspectSettings) -> str:
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


def _clock() -> Clock:
    """The clock a command waits on: the system's, unless the caller put one in click's context
    object (``main(obj=clock)``, as the tests do)."""
    ctx = click.get_current_context(silent=True)
    obj = ctx.obj if ctx else None
    return obj if isinstance(obj, Clock) else SYSTEM_CLOCK


def _api(s: InspectSettings):
    from webhook.inspect import kube

    return kube.api_client(s.context, s.kubeconfig)


def _warn(msg: str) -> None:
    click.echo(f"warning: {msg}", err=True)


def _fail(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc))


# --- list ------------------------------------------------------------------------------------


def _prepared(pod: dict) -> bool:
    ann = (pod.get("metadata") or {}).get("annotations") or {}
    return ann.get(constants.ANN_STATUS) == constants.STATUS_INJECTED or bool(ann.get(constants.ANN_CORE_VOLUME))


def read_cores(api, pod: dict, container: str | None = None) -> tuple[list[CoreRecord], list[str], str]:
    """List the metadata files in a running pod's core directory through exec.

    A container the webhook prepared is read through the wrapper's list mode (argv exec'd
    directly: distroless and scratch images work); any other container, or a wrapper too old to
    have that mode, through the ``sh``/``find`` script. Returns the records, warnings, and the
    wrapper path to download through ("" = the shell tools: ``tail``).
    """
    from webhook.inspect import kube

    meta = pod.get("metadata") or {}
    ns, name = meta.get("namespace", "default"), meta.get("name", "?")
    loc = eph.core_location(pod, container)
    if (pod.get("status") or {}).get("phase") != "Running":
        return [], [f"{ns}/{name}: pod is {(pod.get('status') or {}).get('phase')}; for a claim use --claim"], ""
    wrapper_error = None
    if eph.has_wrapper(pod, loc.container):
        try:
            out = kube.exec_output(api, ns, name, loc.container, wrapper_listing_command([loc.directory]))
        except kube.Forbidden:
            raise
        except kube.KubeError as exc:  # e.g. a wrapper from before the list mode: try the shell
            wrapper_error = exc
        else:
            records, warnings = parse_listing(out, namespace=ns, pod=name)
            return records, warnings, constants.WRAPPER_PATH
    try:
        out = kube.exec_output(api, ns, name, loc.container, listing_command([loc.directory]))
    except kube.Forbidden:
        raise
    except kube.KubeError as exc:
        if wrapper_error is not None:
            return [], [f"{ns}/{name}: listing through {constants.WRAPPER_PATH} failed ({wrapper_error}), "
                        f"and through sh too ({exc})"], ""
        no_shell = "executable file not found" in str(exc) or "exit code 127" in str(exc)
        hint = (f" (container {loc.container} has no shell and was not prepared by coredump-webhook: "
                "choose a prepared one with -c, or run `coredump debug` and look in $COREDUMP_DIR)")
        return [], [f"{ns}/{name}: {exc}{hint if no_shell else ''}"], ""
    records, warnings = parse_listing(out, namespace=ns, pod=name)
    return records, warnings, ""


def cores_of_pod(api, pod: dict, container: str | None = None) -> tuple[list[CoreRecord], list[str]]:
    """:func:`read_cores` without the download route."""
    records, warnings, _ = read_cores(api, pod, container)
    return records, warnings


def _pods_to_scan(api, s: InspectSettings, pod: str | None, namespace: str | None, all_ns: bool) -> tuple[list[dict], list[str]]:
    from webhook.inspect import kube

    warnings: list[str] = []
    if pod:
        return [kube.read_pod(api, _namespace(namespace, s), pod)], warnings
    if not all_ns:
        return kube.list_pods(api, _namespace(namespace, s)), warnings
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
    from webhook.inspect import kube

    pods, warnings = _pods_to_scan(api, s, pod, namespace, all_ns)
    records: list[CoreRecord] = []
    for p in pods:
        if not _prepared(p):
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


def _with_reader(api, s: InspectSettings, namespace: str, claim: str):
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
    from webhook.inspect import kube

    out = kube.exec_output(api, namespace, reader, "reader", listing_command([eph.READER_MOUNT]))
    return parse_listing(out, namespace=namespace, pod=f"(claim {claim})")


@click.command("list")
@click.argument("pod", required=False)
@kube_options
@click.option("-A", "--all-namespaces", "all_ns", is_flag=True, help="every namespace you can read")
@click.option("-c", "--container", default=None, help="container to read the cores through")
@click.option("-o", "--output", type=click.Choice(["", "wide", "json", "yaml"]), default="", help="output format")
@settings_options(InspectSettings, only=("group",), show_envvar=False)
@click.option("--claim", default=None, help="list cores on a PVC (pod gone) through a short-lived reader pod")
@settings_options(InspectSettings, only=("reader_image", "reader_uid"), show_envvar=False)
@click.option("--from-pods", is_flag=True, help="read each pod's core directory (exec) instead of the CoreDump index")
def list_cores(pod, namespace, context, kubeconfig, all_ns, container, output, group, claim, reader_image, reader_uid,
               from_pods):
    """List cores of the pods you can see, newest first (from the CoreDump index: one API call)."""
    s = _settings(context=context, kubeconfig=kubeconfig, reader_image=reader_image, reader_uid=reader_uid)
    try:
        api = _api(s)
        records = None
        if not claim and not from_pods:
            records, warnings = _from_index(api, s, pod, namespace, all_ns)
        if records is not None:
            pass
        elif claim:
            ns = _namespace(namespace, s)
            reader, cleanup = _with_reader(api, s, ns, claim)
            try:
                records, warnings = claim_records(api, ns, claim, reader)
            finally:
                cleanup()
        else:
            records, warnings = collect(api, s, pod=pod, namespace=namespace, all_ns=all_ns, container=container)
    except eph.InspectError as exc:
        raise _fail(exc) from exc
    for w in warnings:
        _warn(w)
    if not records and output not in ("json", "yaml"):
        click.echo("No cores found.", err=True)
        return
    click.echo(render(records, output, group=group))


def _from_index(api, s: InspectSettings, pod: str | None, namespace: str | None,
                all_ns: bool) -> tuple[list[CoreRecord] | None, list[str]]:
    """The index's records, or (None, []) when it is not installed (then the pods are read)."""
    from webhook.inspect import index_view, kube

    try:
        return index_view.read_index(api, None if all_ns else _namespace(namespace, s), pod=pod)
    except kube.NotFound:
        _warn("the CoreDump index is not installed (no coredumps.coredump-webhook.io CRD): reading each pod")
        return None, []


# --- get -------------------------------------------------------------------------------------


@click.command("get")
@click.argument("pod")
@click.argument("core", required=False)
@kube_options
@click.option("-c", "--container", default=None)
@click.option("-o", "--output-file", "output", default=None, help="where to save (default: the core's name)")
@click.option("--claim", default=None, help="POD is then a label only: fetch from this PVC through a reader pod")
@settings_options(InspectSettings, only=("reader_image",), show_envvar=False)
def get_core(pod, core, namespace, context, kubeconfig, container, output, claim, reader_image):
    """Download CORE (name, path or digest prefix) from POD: resumable, verified by its digest.

    With one argument it is a CoreDump's name (`coredump list -o wide`): its pod and core."""
    from webhook.inspect import download as dl
    from webhook.inspect import kube

    s = _settings(context=context, kubeconfig=kubeconfig, reader_image=reader_image)
    cleanup = None
    try:
        api = _api(s)
        ns = _namespace(namespace, s)
        if not core:  # a CoreDump's name
            spec = kube.read_coredump(api, ns, pod).get("spec") or {}
            pod, core = str(spec.get("pod") or ""), str((spec.get("location") or {}).get("path") or "")
            if not pod or not core:
                raise eph.InspectError(f"CoreDump {ns}/{pod} names no pod or core path")
        if claim:
            reader, cleanup = _with_reader(api, s, ns, claim)
            records, _ = claim_records(api, ns, claim, reader)
            exec_pod, exec_container, wrapper = reader, "reader", ""
        else:
            p = kube.read_pod(api, ns, pod)
            records, warnings, wrapper = read_cores(api, p, container)
            exec_pod, exec_container = pod, eph.core_location(p, container).container
            if not records:
                for w in warnings:
                    _warn(w)
        rec = find_record(records, core)
        if rec is None:
            raise eph.InspectError(f"no core {core!r} in {ns}/{pod} (see `coredump list {pod} -n {ns}`)")
        dest = output or rec.name
        if not rec.digest:
            _warn("metadata has no digest: the download is checked by size only")
        bar = dl.ProgressBar(sys.stderr, rec.name)
        res = dl.download(kube.ExecSource(api, ns, exec_pod, exec_container, rec.location, wrapper), dest,
                          digest=rec.digest or None, size=rec.stored_size, progress=bar, compression=rec.compression)
    except (eph.InspectError, dl.DownloadError) as exc:
        raise _fail(exc) from exc
    finally:
        if cleanup:
            cleanup()
    state = "already there" if res.already_done else (f"resumed at {res.resumed_from}" if res.resumed_from else "downloaded")
    click.echo(f"{res.path}: {res.size} bytes, {res.digest} verified ({state})")


# --- debug: webhook/inspect/debug_command.py ------------------------------------------------


# --- gcore -----------------------------------------------------------------------------------


def gcore_request(pod: dict, container: str | None, pid: int | None) -> dict:
    """What the CLI asks the agent on the pod's node (see webhook/diagnose/gcore.py)."""
    name = eph.pick_container(pod, container)
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    cid = next((c.get("containerID", "") for c in status.get("containerStatuses") or [] if c.get("name") == name), "")
    return {
        "namespace": meta.get("namespace"), "pod": meta.get("name"), "pod_uid": meta.get("uid"),
        "container": name, "container_id": cid.split("://", 1)[-1], "node": (pod.get("spec") or {}).get("nodeName"),
        "pid": pid or 1,
    }


#: What the agent's CoreSnapshot Event says (webhook/agent/events.py build_event).
_GCORE_WRITTEN = re.compile(r"core written to (?P<path>\S+) \((?P<size>\d+) bytes\)")


def gcore_annotation(request_id: str, container: str, pid: int | None, now: float) -> str:
    """The value of ``coredump-webhook.io/gcore-request`` (pid None: the container's main process)."""
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    return json.dumps({"id": request_id, "container": container, "pid": pid, "requestedAt": at},
                      separators=(",", ":"))


def gcore_answer(events: list[dict], request_id: str) -> dict | None:
    """The agent's answer to ``request_id`` among CoreSnapshot Events: {path, size} or {error}."""
    for ev in events:
        msg = ev.get("message") or ""
        if f"gcore {request_id} " not in msg:
            continue
        if m := _GCORE_WRITTEN.search(msg):
            return {"path": m["path"], "size": int(m["size"]), "message": msg}
        return {"error": msg.split(": failed: ", 1)[-1], "message": msg}
    return None


def wait_gcore(api, namespace: str, pod: str, request_id: str, *, timeout: float, poll: float = 2.0,
               sleep=None, clock=None) -> dict:
    """Poll the pod's CoreSnapshot Events until the agent answers ``request_id``."""
    from webhook.inspect import kube

    sleep, clock = sleep or time.sleep, clock or time.monotonic

    selector = f"involvedObject.name={pod},reason={constants.EVENT_REASON_SNAPSHOT}"
    deadline = clock() + timeout
    while True:
        answer = gcore_answer(kube.list_events(api, namespace, selector), request_id)
        if answer is not None:
            return answer
        if clock() >= deadline:
            raise eph.InspectError(
                f"no answer from the node agent within {timeout:.0f}s for gcore request {request_id}: is the agent "
                "running on the pod's node with --watch-pods and --gcore-requests (and its API access)?")
        sleep(poll)


@click.command("gcore")
@click.argument("pod", required=False)
@kube_options
@click.option("-c", "--container", default=None, help="container (default: the first prepared one)")
@click.option("--pid", type=int, default=None, help="PID inside the container (default: its main process)")
@click.option("--dry-run", is_flag=True, help="print the request for the node agent and stop")
@click.option("-f", "--filename", "pod_file", type=click.Path(exists=True, dir_okay=False), default=None)
@settings_options(InspectSettings, only=("gcore_timeout", "gcore_request_id"), show_envvar=False)
def gcore(pod, namespace, context, kubeconfig, container, pid, dry_run, pod_file, gcore_timeout, gcore_request_id):
    """Core of a RUNNING process, without killing it (done by the agent on the pod's node).

    Sets the annotation coredump-webhook.io/gcore-request on the pod (RBAC: patch pods), then
    waits for the agent's CoreSnapshot Event (RBAC: list events) and prints the core's path.
    """
    s = _settings(context=context, kubeconfig=kubeconfig, gcore_timeout=gcore_timeout,
                  gcore_request_id=gcore_request_id)
    request_id = s.gcore_request_id or "gc-" + secrets.token_hex(4)
    try:
        if pod_file:
            with open(pod_file) as f:
                obj = yaml.safe_load(f)
        else:
            if not pod:
                raise eph.InspectError("POD is required (or -f POD_FILE)")
            from webhook.inspect import kube

            api = _api(s)
            obj = kube.read_pod(api, _namespace(namespace, s), pod)
        eph.core_location(obj, container)  # the pod must have a core volume to receive it
        req = gcore_request(obj, container, pid)
        value = gcore_annotation(request_id, req["container"], pid, time.time())
        req.update(id=request_id, annotation={constants.ANN_GCORE_REQUEST: value})
        if dry_run:
            click.echo(json.dumps(req, indent=2))
            return
        if pod_file:
            raise eph.InspectError("-f works with --dry-run only: the request goes through the API")
        kube.annotate_pod(api, req["namespace"], req["pod"], {constants.ANN_GCORE_REQUEST: value})
        click.echo(f"gcore {request_id} requested from the agent on node {req['node']}; waiting...", err=True)
        clock = _clock()
        answer = wait_gcore(api, req["namespace"], req["pod"], request_id, timeout=s.gcore_timeout,
                            sleep=clock.sleep, clock=clock.monotonic)
    except eph.InspectError as exc:
        raise _fail(exc) from exc
    if "error" in answer:
        raise click.ClickException(f"gcore {request_id} failed on node {req['node']}: {answer['error']}")
    click.echo(f"{answer['size']} bytes (container {req['container']}; `coredump get {req['pod']} "
               f"{answer['path'].rsplit('/', 1)[-1]}` downloads it)", err=True)
    click.echo(answer["path"])


# --- page ------------------------------------------------------------------------------------


@click.command("page")
@settings_options(PageSettings)
def page(**params: Any) -> None:
    """Serve the read-only page listing cores (RBAC: TokenReview + SubjectAccessReview), with gunicorn."""
    from webhook import logs
    from webhook.inspect import page_server
    from webhook.serving.tls import CertLoadError

    settings = settings_from(PageSettings, params)
    insecure_no_auth = settings.insecure_no_auth
    settings = replace(settings, insecure_no_auth=insecure_no_auth and not settings.index)
    try:
        settings.host_port()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--bind") from None
    if not insecure_no_auth:
        from webhook.inspect import kube

        try:
            kube.api_client()  # fail here, clearly, rather than in every worker
        except kube.KubeError as exc:
            raise click.ClickException(f"{exc} (the page needs API access for TokenReview and "
                                       "SubjectAccessReview; --insecure-no-auth for local use)") from None
    logs.configure(settings.log_level)
    try:
        page_server.run(settings)
    except CertLoadError as exc:
        raise click.ClickException(str(exc)) from None
