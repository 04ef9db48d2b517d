"""``coredump review [FILE|-]``: answer one AdmissionReview offline, for people and debugging."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from webhook.admission.review import ReviewError, decoded_patch, handle_review
from webhook.admission.settings import ADMISSION_OPTIONS, settings_from_params
from webhook.admission.summary import summarize


def _review_command(**params: Any) -> None:
    """Read an AdmissionReview v1 (JSON) from FILE or stdin and print the webhook's answer.

    The response is printed with its patch decoded (a JSON list instead of base64); ``--summary``
    prints what the pod gets in words instead. No registry is contacted unless ``--resolve`` is
    given (anonymous pulls, the --platform image): without it, containers without a command are
    reported as not wrapped.
    """
    source = params.pop("file")
    summary = params.pop("summary")
    resolve = params.pop("resolve")
    settings = settings_from_params(params)
    text = sys.stdin.read() if source == "-" else _read(source)
    resolver = _registry_resolver(settings.platform) if resolve and settings.resolve_entrypoints else None
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


def _registry_resolver(platform: str) -> Any:
    try:
        from webhook.registry import RegistryResolver, RegistrySettings
    except ImportError:  # pragma: no cover - built without the resolver
        raise click.ClickException("--resolve needs webhook.registry, which this build lacks") from None
    return RegistryResolver(RegistrySettings(platform=platform))


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror}") from None


review = click.Command(
    "review",
    callback=_review_command,
    help=_review_command.__doc__,
    params=[
        click.Argument(["file"], default="-", required=False, metavar="[FILE|-]"),
        click.Option(["--summary"], is_flag=True, help="Describe what the pod gets instead of printing JSON."),
        click.Option(["--resolve"], is_flag=True, help="Read ENTRYPOINT/CMD from the images' registries (anonymously)."),
        *ADMISSION_OPTIONS,
    ],
)
