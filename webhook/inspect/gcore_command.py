"""``coredump gcore``: core of a running process, taken by the agent on the pod's node."""

from __future__ import annotations

import json
import secrets
import time

import click
import yaml

from webhook import constants
from webhook.cli_options import settings_options
from webhook.inspect import ephemeral as eph
from webhook.inspect.commands import api_from, command_clock, fail_with, inspect_settings, kube_options
from webhook.inspect.gcore_request import gcore_annotation, gcore_request, wait_gcore
from webhook.inspect.pod_cores import default_namespace
from webhook.inspect.settings import InspectSettings


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
    s = inspect_settings(context=context, kubeconfig=kubeconfig, gcore_timeout=gcore_timeout,
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

            api = api_from(s)
            obj = kube.read_pod(api, default_namespace(namespace, s), pod)
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
        clock = command_clock()
        answer = wait_gcore(api, req["namespace"], req["pod"], request_id, timeout=s.gcore_timeout,
                            sleep=clock.sleep, clock=clock.monotonic)
    except eph.InspectError as exc:
        raise fail_with(exc) from exc
    if "error" in answer:
        raise click.ClickException(f"gcore {request_id} failed on node {req['node']}: {answer['error']}")
    click.echo(f"{answer['size']} bytes (container {req['container']}; `coredump get {req['pod']} "
               f"{answer['path'].rsplit('/', 1)[-1]}` downloads it)", err=True)
    click.echo(answer["path"])
