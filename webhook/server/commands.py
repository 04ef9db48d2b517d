"""``coredump serve``: the admission webhook over TLS (gunicorn)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from webhook.admission.settings import ADMISSION_OPTIONS, settings_from_params
from webhook.registry import registry_options
from webhook.registry import settings_from_options as registry_settings_from
from webhook.server.settings import DEFAULT_BIND, DEFAULT_MAX_BODY_BYTES, ServerSettings


def _env(name: str) -> str:
    return "COREDUMP_WEBHOOK_" + name.upper()


@click.command()
@click.option("--cert-dir", required=True, show_envvar=True, envvar=_env("cert_dir"),
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Directory with tls.crt and tls.key (the mounted Secret); reloaded when they change.")
@click.option("--bind", default=DEFAULT_BIND, show_default=True, show_envvar=True, envvar=_env("bind"), help="HOST:PORT to listen on.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1), show_envvar=True, envvar=_env("workers"),
              help="gunicorn worker processes.")
@click.option("--threads", default=4, show_default=True, type=click.IntRange(min=1), show_envvar=True, envvar=_env("threads"),
              help="Threads per worker.")
@click.option("--lookup-threads", default=8, show_default=True, type=click.IntRange(min=1), show_envvar=True,
              envvar=_env("lookup_threads"), help="Extra threads per worker for requests waiting on registry look-ups.")
@click.option("--timeout", default=30, show_default=True, type=click.IntRange(min=1), show_envvar=True, envvar=_env("timeout"),
              help="Seconds before a silent worker is restarted.")
@click.option("--keepalive", default=60, show_default=True, type=click.IntRange(min=0), show_envvar=True, envvar=_env("keepalive"),
              help="Seconds an idle keep-alive connection stays open.")
@click.option("--graceful-timeout", default=10, show_default=True, type=click.IntRange(min=0),
              show_envvar=True, envvar=_env("graceful_timeout"), help="Seconds in-flight requests get on SIGTERM.")
@click.option("--max-body-bytes", default=DEFAULT_MAX_BODY_BYTES, show_default=True, type=click.IntRange(min=1024),
              show_envvar=True, envvar=_env("max_body_bytes"), help="Largest request body; bigger ones get HTTP 413.")
@click.option("--log-level", default="info", show_default=True, show_envvar=True, envvar=_env("log_level"),
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False), help="Log level.")
@click.option("--cert-reload-interval", default=1.0, show_default=True, type=click.FloatRange(min=0.0),
              show_envvar=True, envvar=_env("cert_reload_interval"), help="Seconds between checks of the certificate files.")
@registry_options
def serve(**params: Any) -> None:
    """Serve the admission webhook over TLS: POST /mutate (and /validate), GET /healthz,
    /readyz, /metrics."""
    from webhook import logs
    from webhook.serving.tls import CertLoadError

    admission = settings_from_params(params)
    try:
        registry = registry_settings_from(params)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    settings = ServerSettings(
        cert_dir=params["cert_dir"],
        admission=admission,
        bind=params["bind"],
        workers=params["workers"],
        threads=params["threads"],
        lookup_threads=params["lookup_threads"],
        timeout=params["timeout"],
        keepalive=params["keepalive"],
        graceful_timeout=params["graceful_timeout"],
        max_body_bytes=params["max_body_bytes"],
        log_level=params["log_level"].lower(),
        cert_reload_interval=params["cert_reload_interval"],
        registry=registry,
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


for _option in ADMISSION_OPTIONS:
    serve.params.append(_option)
