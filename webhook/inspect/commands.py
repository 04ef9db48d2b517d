"""``coredump list / get``: find cores and fetch them; what every inspection command shares.

kubectl-style options everywhere (``-n``, ``-A``, ``--context``, ``--kubeconfig``, ``-o``); every
option also reads an env var. All access goes through the Kubernetes API with the user's own
credentials: what RBAC refuses is reported (or, with ``-A``, skipped with a warning). The other
commands are ``debug_command.py``, ``gcore_command.py`` and ``page_command.py``; reading pods'
cores is ``pod_cores.py``.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from webhook.cli_options import settings_from, settings_options
from webhook.clock import SYSTEM_CLOCK, Clock
from webhook.inspect import ephemeral as eph
from webhook.inspect.pod_cores import claim_records, collect, default_namespace, read_cores, with_reader
from webhook.inspect.records import CoreRecord, find_record
from webhook.inspect.rendering import render
from webhook.inspect.settings import InspectSettings

if TYPE_CHECKING:
    from webhook.inspect.download import Result

#: The settings every inspection command offers (-n, --context, --kubeconfig).
KUBE_SETTINGS = ("namespace", "context", "kubeconfig")
#: --context/--kubeconfig/-n shared by every command.
kube_options = settings_options(InspectSettings, only=KUBE_SETTINGS, show_envvar=False)


def inspect_settings(**kw: Any) -> InspectSettings:
    """The settings from a command's parsed values (None: the field's default)."""
    return settings_from(InspectSettings, {k: v for k, v in kw.items() if v is not None})


def command_clock() -> Clock:
    """The clock a command waits on: the system's, unless the caller put one in click's context
    object (``main(obj=clock)``, as the tests do)."""
    ctx = click.get_current_context(silent=True)
    obj = ctx.obj if ctx else None
    return obj if isinstance(obj, Clock) else SYSTEM_CLOCK


def api_from(s: InspectSettings):
    from webhook.inspect import kube

    return kube.api_client(s.context, s.kubeconfig)


def warn_user(msg: str) -> None:
    click.echo(f"warning: {msg}", err=True)


def fail_with(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc))


# --- list ------------------------------------------------------------------------------------


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
    s = inspect_settings(context=context, kubeconfig=kubeconfig, reader_image=reader_image, reader_uid=reader_uid)
    try:
        api = api_from(s)
        records = None
        if not claim and not from_pods:
            records, warnings = _from_index(api, s, pod, namespace, all_ns)
        if records is not None:
            pass
        elif claim:
            ns = default_namespace(namespace, s)
            reader, cleanup = with_reader(api, s, ns, claim)
            try:
                records, warnings = claim_records(api, ns, claim, reader)
            finally:
                cleanup()
        else:
            records, warnings = collect(api, s, pod=pod, namespace=namespace, all_ns=all_ns, container=container)
    except eph.InspectError as exc:
        raise fail_with(exc) from exc
    for w in warnings:
        warn_user(w)
    if not records and output not in ("json", "yaml"):
        click.echo("No cores found.", err=True)
        return
    click.echo(render(records, output, group=group))


def _from_index(api, s: InspectSettings, pod: str | None, namespace: str | None,
                all_ns: bool) -> tuple[list[CoreRecord] | None, list[str]]:
    """The index's records, or (None, []) when it is not installed (then the pods are read)."""
    from webhook.inspect import index_view, kube

    try:
        return index_view.read_index(api, None if all_ns else default_namespace(namespace, s), pod=pod)
    except kube.NotFound:
        warn_user("the CoreDump index is not installed (no coredumps.coredump-webhook.io CRD): reading each pod")
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

    s = inspect_settings(context=context, kubeconfig=kubeconfig, reader_image=reader_image)
    cleanup = None
    try:
        api = api_from(s)
        ns = default_namespace(namespace, s)
        if not core:  # a CoreDump's name
            pod, core = _coredump_target(api, ns, pod)
        if claim:
            reader, cleanup = with_reader(api, s, ns, claim)
            records, _ = claim_records(api, ns, claim, reader)
            exec_pod, exec_container, wrapper = reader, "reader", ""
        else:
            records, exec_pod, exec_container, wrapper = _pod_source(api, ns, pod, container)
        rec = find_record(records, core)
        if rec is None:
            raise eph.InspectError(f"no core {core!r} in {ns}/{pod} (see `coredump list {pod} -n {ns}`)")
        res = _download(api, ns, exec_pod, exec_container, wrapper, rec, output)
    except (eph.InspectError, dl.DownloadError) as exc:
        raise fail_with(exc) from exc
    finally:
        if cleanup:
            cleanup()
    click.echo(f"{res.path}: {res.size} bytes, {res.digest} verified ({_download_state(res)})")


def _coredump_target(api, ns: str, name: str) -> tuple[str, str]:
    """The pod and core path a CoreDump names."""
    from webhook.inspect import kube

    spec = kube.read_coredump(api, ns, name).get("spec") or {}
    pod, core = str(spec.get("pod") or ""), str((spec.get("location") or {}).get("path") or "")
    if not pod or not core:
        raise eph.InspectError(f"CoreDump {ns}/{pod} names no pod or core path")
    return pod, core


def _pod_source(api, ns: str, pod: str, container: str | None) -> tuple[list[CoreRecord], str, str, str]:
    """A running pod's cores and where to exec to read them: (records, pod, container, wrapper)."""
    from webhook.inspect import kube

    p = kube.read_pod(api, ns, pod)
    records, warnings, wrapper = read_cores(api, p, container)
    exec_container = eph.core_location(p, container).container
    if not records:
        for w in warnings:
            warn_user(w)
    return records, pod, exec_container, wrapper


def _download(api, ns: str, exec_pod: str, exec_container: str, wrapper: str, rec: CoreRecord,
              output: str | None) -> Result:
    """Fetch ``rec`` through exec in ``exec_pod`` to ``output`` (default: the core's name)."""
    from webhook.inspect import download as dl
    from webhook.inspect import pod_exec

    dest = output or rec.name
    if not rec.digest:
        warn_user("metadata has no digest: the download is checked by size only")
    bar = dl.ProgressBar(sys.stderr, rec.name)
    return dl.download(pod_exec.ExecSource(api, ns, exec_pod, exec_container, rec.location, wrapper), dest,
                       digest=rec.digest or None, size=rec.stored_size, progress=bar, compression=rec.compression)


def _download_state(res: Result) -> str:
    """How the file came to be there, for the closing line."""
    if res.already_done:
        return "already there"
    return f"resumed at {res.resumed_from}" if res.resumed_from else "downloaded"
