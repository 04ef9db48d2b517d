"""``coredump debug POD [CORE]`` and ``coredump debug --claim CLAIM [CORE]``: gdb on the core.

The ephemeral container (or, for a deleted pod, a short-lived pod on the claim) runs as the
core's owner, mounts the core volume at the crashed container's path, and starts gdb on the core
with its binaries found by build-id (:mod:`webhook.inspect.debugging`). Which core and whose:
``CORE`` (a name, path or digest prefix) or the newest, looked up in the pod's listing when the
container runs; in a crash-looping pod (nothing to exec into) the debug container picks the
newest core itself and the owner comes from the pod's securityContext (``--uid``/``--gid``
override both).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any

import click
import yaml

from webhook.cli_options import settings_options
from webhook.inspect import debugging as dbg
from webhook.inspect import ephemeral as eph
from webhook.inspect.commands import api_from, command_clock, fail_with, inspect_settings, kube_options, warn_user
from webhook.inspect.pod_cores import cores_of_pod, default_namespace
from webhook.inspect.records import CoreRecord, find_record, newest_first
from webhook.inspect.settings import InspectSettings


def _read_pod_file(pod_file: str, pod: str | None, namespace: str | None, s: InspectSettings) -> tuple[str, str, dict]:
    with open(pod_file) as f:
        obj = yaml.safe_load(f)
    if not isinstance(obj, dict) or obj.get("kind", "Pod") != "Pod":
        raise eph.InspectError(f"{pod_file} does not hold a Pod")
    meta = obj.setdefault("metadata", {})
    if pod and meta.get("name") and pod != meta["name"]:
        raise eph.InspectError(f"{pod_file} holds pod {meta['name']}, not {pod}")
    ns = namespace or meta.get("namespace") or default_namespace(None, s)
    meta.setdefault("namespace", ns)
    return ns, meta.get("name") or pod or "", obj


def choose_core(records: list[CoreRecord], core: str | None) -> CoreRecord | None:
    """The record for ``core`` (name, path or digest prefix), else the newest present one."""
    if core:
        return next((r for r in records if r.coredump == core), None) or find_record(records, core)
    present = [r for r in newest_first(records) if r.present]
    return present[0] if present else None


def owner(record: CoreRecord | None, pod: dict, container: str, uid: int | None,
          gid: int | None) -> tuple[int | None, int | None]:
    """Whose the core is: the flags, else the core's metadata, else the container's securityContext."""
    if record is not None:
        meta = record.metadata
        uid = uid if uid is not None else (meta.get("uid") if isinstance(meta.get("uid"), int) else None)
        gid = gid if gid is not None else (meta.get("gid") if isinstance(meta.get("gid"), int) else None)
    if uid is None or gid is None:
        puid, pgid = dbg.owner_from_pod(pod, container)
        uid = puid if uid is None else uid
        gid = pgid if gid is None else gid
    return uid, gid


def _pod_or_coredump(api, ns: str, name: str, core: str | None) -> tuple[str, str | None, dict]:
    """NAME is a pod, else a CoreDump (then its pod and its core); the pod itself is read."""
    from webhook.inspect import kube

    try:
        return name, core, kube.read_pod(api, ns, name)
    except kube.NotFound:
        if core:
            raise
        try:
            cd = kube.read_coredump(api, ns, name)
        except kube.KubeError:
            raise kube.NotFound(f"pod {ns}/{name} not found (nor a CoreDump of that name)", 404, "NotFound") from None
    spec = cd.get("spec") or {}
    pod, path = str(spec.get("pod") or ""), str((spec.get("location") or {}).get("path") or "")
    try:
        return pod, path or None, kube.read_pod(api, ns, pod)
    except kube.NotFound:
        raise eph.InspectError(f"CoreDump {ns}/{name}: its pod {pod} is gone; if its cores are on a claim, use "
                               f"`coredump debug --claim CLAIM {path.rsplit('/', 1)[-1]}`") from None


def _records(api, pod: dict, ns: str, name: str, container: str) -> tuple[list[CoreRecord], list[str]]:
    """The pod's cores: from the CoreDump index (one call, also in a crash loop), else by exec."""
    from webhook.inspect import index_view, kube

    try:
        records, warnings = index_view.read_index(api, ns, pod=name)
        if records:
            return records, warnings
    except kube.KubeError:
        pass  # no index (or no right to read it): the pod itself
    try:
        return cores_of_pod(api, pod, container)
    except kube.KubeError as exc:  # e.g. nothing to exec into: the container picks
        return [], [str(exc)]


def _attach(line: list[str]) -> None:
    kubectl = shutil.which("kubectl")
    if sys.stdout.isatty() and sys.stdin.isatty() and kubectl:
        os.execvp(kubectl, [kubectl, *line[1:]])
    click.echo(" ".join(line))


@click.command("debug")
@click.argument("pod", required=False)
@click.argument("core", required=False)
@kube_options
@click.option("-c", "--container", default=None, help="the crashed container (default: the first target)")
@settings_options(InspectSettings, only=("debug_image", "pull_policy"), show_envvar=False)
@click.option("--claim", default=None, help="the pod is gone: run gdb in a short-lived pod that mounts this PVC")
@click.option("--uid", type=int, default=None, help="run as this uid (default: the core's owner)")
@click.option("--gid", type=int, default=None, help="run as this gid (default: the core's group)")
@click.option("--shell", is_flag=True, help="a shell next to the cores instead of gdb")
@click.option("--dry-run", is_flag=True, help="print the request body and call nothing")
@click.option("-f", "--filename", "pod_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="read the pod from this file (JSON or YAML) instead of the API")
@settings_options(InspectSettings, only=("wait_timeout",), show_envvar=False)
def debug(pod, core, namespace, context, kubeconfig, container, debug_image, pull_policy, claim, uid, gid, shell,
          dry_run, pod_file, wait_timeout):
    """Open gdb on POD's newest core (or CORE), binaries found by build-id, as the core's owner."""
    s = inspect_settings(context=context, kubeconfig=kubeconfig, debug_image=debug_image, pull_policy=pull_policy,
                  wait_timeout=wait_timeout)
    if claim:
        return _debug_claim(s, claim, namespace, core or pod, uid, gid, dry_run)
    try:
        ns, name, core, obj, api = _target_pod(s, pod_file, pod, namespace, core)
        loc = eph.core_location(obj, container)
        record = _pick_record(api, obj, ns, name, loc.container, core) if api is not None and not shell else None
        ec, body, target = _debug_container(s, obj, loc.container, record, core, shell, uid, gid)
        if dry_run:
            click.echo(json.dumps(body, indent=2))
            return
        what = f"gdb on {target or 'the newest core'}" if not shell else "a shell"
        _add_and_wait(s, api_from(s) if api is None else api, ns, name, ec, body, what)
    except eph.InspectError as exc:
        raise fail_with(exc) from exc
    _attach(eph.attach_command(ns, name, ec["name"], context=s.context, kubeconfig=s.kubeconfig))


def _target_pod(s: InspectSettings, pod_file: str | None, pod: str | None, namespace: str | None,
                core: str | None) -> tuple[str, str, str | None, dict, Any]:
    """(namespace, pod name, core, pod, API client or None) from -f POD_FILE, else the API (POD
    may name a CoreDump: then its pod and core)."""
    if pod_file:
        ns, name, obj = _read_pod_file(pod_file, pod, namespace, s)
        return ns, name, core, obj, None
    if not pod:
        raise eph.InspectError("POD is required (or -f POD_FILE, or --claim CLAIM)")
    ns = default_namespace(namespace, s)
    api = api_from(s)
    name, core, obj = _pod_or_coredump(api, ns, pod, core)
    return ns, name, core, obj, api


def _pick_record(api: Any, obj: dict, ns: str, name: str, container: str, core: str | None) -> CoreRecord | None:
    """The core to debug (None: the newest, picked inside the debug container)."""
    records, warnings = _records(api, obj, ns, name, container)
    record = choose_core(records, core)
    if record is None and core and records:
        raise eph.InspectError(f"no core {core!r} in {ns}/{name} (see `coredump list {name}`)")
    if record is None and not core:
        for w in warnings:
            warn_user(w)
        warn_user("the newest core is picked inside the debug container")
    return record


def _debug_container(s: InspectSettings, obj: dict, container: str, record: CoreRecord | None, core: str | None,
                     shell: bool, uid: int | None, gid: int | None) -> tuple[dict, dict, str]:
    """The ephemeral container (gdb on the core, or a shell) run as the core's owner, its PATCH
    body, and the core it opens."""
    run_uid, run_gid = owner(record, obj, container, uid, gid)
    if run_uid is None:
        warn_user("the core's owner is unknown (no metadata, no runAsUser): the image's user runs gdb; "
              "pass --uid/--gid if it cannot read the core")
    target = record.path if record is not None else (core or "")
    command = None if shell else dbg.gdb_command(target)
    ec = eph.debug_container(obj, image=s.debug_image, name=eph.unique_name(obj), container=container,
                             pull_policy=s.pull_policy, command=command)
    ec["securityContext"] = dbg.security_context(run_uid, run_gid)
    return ec, eph.ephemeral_patch(ec), target


def _add_and_wait(s: InspectSettings, api: Any, ns: str, name: str, ec: dict, body: dict, what: str) -> None:
    """Add the debug container to the pod and wait until it runs."""
    from webhook.inspect import ephemeral_api

    ephemeral_api.patch_ephemeral(api, ns, name, body)
    click.echo(f"debug container {ec['name']} ({what}) added to {ns}/{name}; waiting for it to run...", err=True)
    clock = command_clock()
    ephemeral_api.wait_ephemeral(api, ns, name, ec["name"], timeout=s.wait_timeout, sleep=clock.sleep, clock=clock.monotonic)


def claim_core(api, ns: str, claim: str, core: str | None) -> CoreRecord | None:
    """The CoreDump of ``core`` (or the newest present core) on ``claim``: one list call; None
    when the index has none (not installed, no right to read it, or no core of that claim)."""
    from webhook.inspect import index_view, kube

    try:
        items = kube.list_coredumps(api, ns)
    except kube.KubeError as exc:
        warn_user(f"the CoreDump index cannot tell whose the cores of claim {claim} are: {exc}")
        return None
    on_claim = [o for o in items if isinstance(o, dict) and isinstance(o.get("spec"), dict)
                and ((o["spec"].get("location") or {}).get("claim") == claim)]
    found = _claim_record(index_view.records_from_coredumps(on_claim), core)
    if found is None:
        warn_user(f"no CoreDump of claim {claim} in {ns}{' for ' + core if core else ''}: pass --uid/--gid if needed")
    return found


def _claim_record(records: list[CoreRecord], core: str | None) -> CoreRecord | None:
    """``core`` among a claim's records (also by file name alone), else the newest present one."""
    if core:
        name = core.rsplit("/", 1)[-1]
        return choose_core(records, core) or next((r for r in records if r.path.rsplit("/", 1)[-1] == name), None)
    return choose_core([r for r in records if r.metadata.get("state") in (None, "Present")], None)


def _debug_claim(s: InspectSettings, claim: str, namespace: str | None, core: str | None, uid: int | None,
                 gid: int | None, dry_run: bool) -> None:
    ns = default_namespace(namespace, s)
    name = eph.unique_name({}, prefix="coredump-debug-")
    target = core or ""
    if not dry_run and (uid is None or gid is None or not target):
        target, uid, gid = _claim_owner(s, ns, claim, core, uid, gid)
    if target and not target.startswith("/"):
        target = f"{dbg.DEBUG_POD_MOUNT}/{target}"
    pod = dbg.debug_pod(ns, claim, image=s.debug_image, name=name, uid=uid, gid=gid, core=target,
                        pull_policy=s.pull_policy)
    if dry_run:
        click.echo(json.dumps(pod, indent=2))
        return
    if uid is None:
        warn_user("pass --uid/--gid (the app's) so the pod can read 0600 cores and passes Pod Security 'restricted'")
    _start_debug_pod(s, ns, name, claim, pod)
    click.echo(f"it ends with gdb (or after an hour); remove it with: kubectl delete pod -n {ns} {name}", err=True)
    _attach(eph.attach_command(ns, name, "debug", context=s.context, kubeconfig=s.kubeconfig))


def _claim_owner(s: InspectSettings, ns: str, claim: str, core: str | None, uid: int | None,
                 gid: int | None) -> tuple[str, int | None, int | None]:
    """The core's path and owner from the index, where the arguments leave them open."""
    target = core or ""
    try:
        record = claim_core(api_from(s), ns, claim, core)
    except eph.InspectError as exc:
        raise fail_with(exc) from exc
    if record is not None:
        # the path the crashed container saw: the script finds that name on the claim
        target = target or record.path
        uid = uid if uid is not None else record.metadata.get("uid")
        gid = gid if gid is not None else record.metadata.get("gid")
    return target, uid, gid


def _start_debug_pod(s: InspectSettings, ns: str, name: str, claim: str, pod: dict) -> None:
    """Create the pod that mounts the claim and wait until it runs (deleted when it does not)."""
    from webhook.inspect import kube

    try:
        api = api_from(s)
        kube.create_pod(api, pod)
        click.echo(f"pod {ns}/{name} mounts claim {claim}; waiting for it to run...", err=True)
        try:
            kube.wait_pod_running(api, ns, name, timeout=s.wait_timeout)
        except Exception:
            kube.delete_pod(api, ns, name)
            raise
    except eph.InspectError as exc:
        raise fail_with(exc) from exc
