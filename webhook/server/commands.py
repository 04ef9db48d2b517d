"""``coredump serve``: the admission webhook over TLS (gunicorn)."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click

from webhook.admission.settings import AdmissionSettings
from webhook.cli_options import settings_from, settings_options
from webhook.registry.settings import RegistrySettings
from webhook.server.settings import ServerSettings


@click.command()
@settings_options(ServerSettings)
@settings_options(RegistrySettings)
@settings_options(AdmissionSettings)
def serve(**params: Any) -> None:
    """Serve the admission webhook over TLS: POST /mutate (and /validate), GET /healthz,
    /readyz, /metrics."""
    from webhook import logs
    from webhook.serving.tls import CertLoadError

    settings = settings_from(
        ServerSettings, params,
        admission=settings_from(AdmissionSettings, params),
        registry=settings_from(RegistrySettings, params),
    )
    try:
        settings.host_port()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--bind") from None
    logs.configure(settings.log_level)
    log = logging.getLogger(__name__)
    log.info("starting", extra={"event": "serve.start", "settings": settings.describe()})

    from webhook.server.gunicorn_app import WebhookServer

    try:
        server = WebhookServer(settings)
    except CertLoadError as exc:
        click.echo(json.dumps({"event": "serve.failed", "error": str(exc)}), err=True)
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    server.run()
