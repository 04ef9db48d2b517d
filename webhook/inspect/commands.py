"""``coredump list / get / debug / gcore / page``: find cores, fetch them, debug next to them.

kubectl-style options everywhere (``-n``, ``-A``, ``--context``, ``--kubeconfig``, ``-o``); every
option also reads an env var. All access goes through the Kubernetes API with the user's own
credentials: what RBAC refuses is reported (or, with ``-A``, skipped with a warning).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
import time
from dataclasses import dataclass

import click
import yaml

from webhook import DEFAULT_IMAGE, constants
from webhook.inspect import ephemeral as eph
from webhook.inspect.listing import (
    CoreRecord,
    find_record,
    listing_command,
    parse_listing,
    render,
    wrapper_listing_command,
)

DEFAULT_DEBUG_IMAGE = DEFAULT_IMAGE
DEFAULT_READER_IMAGE = "docker.io/library/busybox:1.36"


@dataclass(frozen=True)
class InspectSettings:
    """Settings of the inspection commands (filled from click options / env vars)."""

    #: kubeconfig context (--context); None = current context.
    context: str | None = None
    #: kubeconfig file (--kubeconfig); None = $KUBECONFIG or ~/.kube/config, else in-cluster.
    kubeconfig: str | None = None
    #: Image of the debug container: needs gdb and a shell. The project's own image carries gdb
    #: (the agent uses it for signatures and gcore), so it is the default.
    debug_image: str = DEFAULT_DEBUG_IMAGE
    #: imagePullPolicy of the debug container.
    pull_policy: str = "IfNotPresent"
    #: Seconds to wait for the debug container / reader pod to run.
    wait_timeout: float = 120.0
    #: Image of the reader pod that mounts a claim after the crashed pod is gone (needs sh,
    #: find, cat, tail, sleep: busybox is enough).
    reader_image: str = DEFAULT_READER_IMAGE
    #: runAsUser of the reader pod (the app's uid; lets it run under PSA "restricted").
    reader_uid: int | None = None


def _env(name: str) -> str:
    return "COREDUMP_" + name.upper().replace("-", "_")


def kube_options(f):
    """--context/--kubeconfig/-n shared by every command."""
    f = click.option("--kubeconfig", envvar="KUBECONFIG", default=None, help="kubeconfig file")(f)
    f = click.option("--context", envvar=_env("context"), default=None, help="kubeconfig context")(f)
    f = click.option("-n", "--namespace", envvar=_env("namespace"), default=None,
                     help="namespace (default: the context's)")(f)
    return f


def _settings(**kw) -> InspectSettings:
    return InspectSettings(**{k: v for k, v in kw.items() if v is not None})


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
@click.option("--group", is_flag=True, envvar=_env("group"), help="group by crash signature, with counts")
@click.option("--claim", default=None, help="list cores on a PVC (pod gone) through a short-lived reader pod")
@click.option("--reader-image", envvar=_env("reader_image"), default=DEFAULT_READER_IMAGE, show_default=True)
@click.option("--reader-uid", envvar=_env("reader_uid"), type=int, default=None, help="runAsUser of the reader pod")
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
@click.option("--reader-image", envvar=_env("reader_image"), default=DEFAULT_READER_IMAGE, show_default=True)
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
@click.option("--timeout", "wait_timeout", envvar=_env("gcore_timeout"), type=float, default=300.0,
              show_default=True, help="seconds to wait for the agent's answer")
@click.option("--request-id", envvar=_env("gcore_request_id"), default=None, hidden=True)
def gcore(pod, namespace, context, kubeconfig, container, pid, dry_run, pod_file, wait_timeout, request_id):
    """Core of a RUNNING process, without killing it (done by the agent on the pod's node).

    Sets the annotation coredump-webhook.io/gcore-request on the pod (RBAC: patch pods), then
    waits for the agent's CoreSnapshot Event (RBAC: list events) and prints the core's path.
    """
    s = _settings(context=context, kubeconfig=kubeconfig)
    request_id = request_id or "gc-" + secrets.token_hex(4)
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
        answer = wait_gcore(api, req["namespace"], req["pod"], request_id, timeout=wait_timeout)
    except eph.InspectError as exc:
        raise _fail(exc) from exc
    if "error" in answer:
        raise click.ClickException(f"gcore {request_id} failed on node {req['node']}: {answer['error']}")
    click.echo(f"{answer['size']} bytes (container {req['container']}; `coredump get {req['pod']} "
               f"{answer['path'].rsplit('/', 1)[-1]}` downloads it)", err=True)
    click.echo(answer["path"])


# --- page ------------------------------------------------------------------------------------


@click.command("page")
@click.option("--cores-root", envvar=_env("page_cores_root"), default=os.path.join(constants.DEFAULT_HOST_DIR, "cores"),
              show_default=True, show_envvar=True, help="directory holding cores and their .json metadata")
@click.option("--bind", envvar=_env("page_bind"), default=constants.PAGE_DEFAULT_BIND, show_default=True, show_envvar=True,
              help="HOST:PORT to listen on")
@click.option("--cert-dir", envvar=_env("page_cert_dir"), default=None, show_envvar=True,
              type=click.Path(exists=True, file_okay=False),
              help="directory with tls.crt and tls.key: serve HTTPS (reloaded when they change)")
@click.option("--insecure-no-auth", is_flag=True, envvar=_env("page_insecure_no_auth"), show_envvar=True,
              help="show every namespace to everyone, no token asked (local use only)")
@click.option("--workers", envvar=_env("page_workers"), default=1, show_default=True, show_envvar=True,
              type=click.IntRange(min=1), help="gunicorn worker processes")
@click.option("--threads", envvar=_env("page_threads"), default=8, show_default=True, show_envvar=True,
              type=click.IntRange(min=1), help="threads per worker (each download holds one)")
@click.option("--log-level", envvar=_env("page_log_level"), default="info", show_default=True, show_envvar=True,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))
@click.option("--index", "index", is_flag=True, envvar=_env("page_index"), show_envvar=True,
              help="list the cluster's CoreDump index with each user's own token (in-cluster)")
def page(cores_root, bind, cert_dir, insecure_no_auth, workers, threads, log_level, index):
    """Serve the read-only page listing cores (RBAC: TokenReview + SubjectAccessReview), with gunicorn."""
    from webhook import logs
    from webhook.inspect import page_server
    from webhook.serving.tls import CertLoadError

    settings = page_server.PageSettings(
        cores_root=cores_root, bind=bind, cert_dir=cert_dir, insecure_no_auth=insecure_no_auth and not index,
        workers=workers, threads=threads, log_level=log_level.lower(), index=index)
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
