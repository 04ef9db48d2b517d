"""``coredump review [FILE|-]``: answer one AdmissionReview offline, for people and debugging."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from webhook.admission.review import ReviewError, decoded_patch, handle_review
from webhook.admission.settings import AdmissionSettings
from webhook.admission.summary import summarize
from webhook.cli_options import settings_from, settings_options
from webhook.registry.settings import RegistrySettings


@click.command("review")
@click.argument("file", default="-", required=False, metavar="[FILE|-]")
@click.option("--summary", is_flag=True, help="Describe what the pod gets instead of printing JSON.")
@click.option("--resolve", is_flag=True, help="Read ENTRYPOINT/CMD from the images' registries (see --registry-*).")
@settings_options(RegistrySettings)
@settings_options(AdmissionSettings)
def review(**params: Any) -> None:
    """Read an AdmissionReview v1 (JSON) from FILE or stdin and print the webhook's answer.

    The response is printed with its patch decoded (a JSON list instead of base64); ``--summary``
    prints what the pod gets in words instead. No registry is contacted unless ``--resolve`` is
    given; the resolver is then built from the --registry-* options (COREDUMP_REGISTRY_*), exactly
    as `coredump serve` builds it. Without it, containers without a command are reported as not
    wrapped.
    """
    source = params.pop("file")
    summary = params.pop("summary")
    resolve = params.pop("resolve")
    settings = settings_from(AdmissionSettings, params)
    resolver = _registry_resolver(params) if resolve and settings.resolve_entrypoints else None
    text = sys.stdin.read() if source == "-" else _read(source)
    try:
        body = json.loads(text)
        answer = handle_review(body, settings, resolve_image=resolver)
    except (ValueError, ReviewError) as exc:
        raise click.ClickException(f"not a valid AdmissionReview v1: {exc}") from None
    response = answer["response"]
    if summary:
        obj = body["request"].get("object") or {}
        status = response.get("status") or {}
        click.echo(
            summarize(
                obj, decoded_patch(answer), response.get("warnings", []),
                allowed=response["allowed"], message=status.get("message", ""),
            )
        )
        return
    if "patch" in response:
        response = {**response, "patch": decoded_patch(answer)}
    click.echo(json.dumps({**answer, "response": response}, indent=2))


def _registry_resolver(params: dict[str, Any]) -> Any:
    """The registry resolver from the --registry-* options (the server's settings, the same way)."""
    from webhook.registry.resolver import RegistryResolver

    settings = settings_from(RegistrySettings, params)
    reader = _pull_secret_reader() if settings.read_pull_secrets else None
    return RegistryResolver(settings, secret_reader=reader)


def _pull_secret_reader() -> Any:
    """Read imagePullSecrets through the API: the in-cluster account, else the kubeconfig
    (``coredump review`` also runs on a laptop). Asked for explicitly, so failing is an error."""
    from kubernetes import client as k8s

    from webhook.kubeclient import ApiConfigError, api_client
    from webhook.registry.secrets import secret_reader_for

    try:
        return secret_reader_for(k8s.CoreV1Api(api_client()))
    except ApiConfigError as exc:
        raise click.ClickException(f"--registry-read-pull-secrets: {exc}") from None


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror}") from None

