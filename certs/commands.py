"""``coredump certs generate`` (files for local use and tests) and ``coredump certs bootstrap``
(the chart's Job: the serving Secret and the caBundle)."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from webhook import logs
from webhook.certs import generate as gen
from webhook.certs.settings import BootstrapSettings, GenerateSettings, RemoveSettings
from webhook.cli_options import settings_from, settings_options

log = logging.getLogger(__name__)


def _log(event: str, level: int = logging.INFO, **fields: object) -> None:
    """The command's result as one line of the one log schema (message = event)."""
    log.log(level, event, extra={"event": event, **fields})


@click.group()
def certs() -> None:
    """Certificates of the webhook: a private CA and the serving certificate."""
    logs.configure("info")


@certs.command()
@settings_options(GenerateSettings)
def generate(**params: Any) -> None:
    """Write a fresh CA and a serving certificate signed by it."""
    s = settings_from(GenerateSettings, params)
    out, service, namespace, days = s.out, s.service, s.namespace, s.days
    bundle = gen.generate(service, namespace, days)
    paths = gen.write_bundle(bundle, out)
    _log(
        "certs.generated",
        files={name: str(p) for name, p in paths.items()},
        sans=gen.dns_names(service, namespace) + [str(ip) for ip in gen.IP_SANS],
        notAfter=gen.not_after(bundle.tls_crt).isoformat(),
        sha256=gen.fingerprint(bundle.tls_crt),
    )


@certs.command()
@settings_options(BootstrapSettings)
def bootstrap(**params: Any) -> None:
    """Create, reuse or rotate the serving Secret, then patch every webhook's caBundle."""
    from webhook.certs import kube
    from webhook.kubeclient import ApiConfigError, api_client

    settings = settings_from(BootstrapSettings, params)
    if settings.renew_before_days >= settings.days:
        raise click.BadParameter(f"must be below --days ({settings.days}), or every run rotates",
                                 param_hint="--renew-before")
    try:
        with api_client(settings.kubeconfig) as api:
            result = kube.bootstrap(api, settings, secret_only=settings.secret_only)
    except (kube.KubeError, ApiConfigError) as exc:
        _log("certs.bootstrap.failed", logging.ERROR, error=str(exc))
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    _log("certs.bootstrap", namespace=settings.namespace, secretName=settings.secret,
         webhookConfig=settings.webhook_config, validatingWebhookConfig=settings.validating_webhook_config,
         **result.describe())


@certs.command()
@settings_options(RemoveSettings)
def remove(**params: Any) -> None:
    """Delete the webhook configuration, then the TLS Secret (the chart's pre-delete hook)."""
    from webhook.certs import teardown
    from webhook.certs.kube import KubeError
    from webhook.kubeclient import ApiConfigError, api_client

    s = settings_from(RemoveSettings, params)
    try:
        with api_client(s.kubeconfig) as api:
            result = teardown.remove(api, namespace=s.namespace, webhook_config=s.webhook_config, secret=s.secret,
                                     request_timeout=s.request_timeout)
    except (KubeError, ApiConfigError) as exc:
        _log("certs.remove.failed", logging.ERROR, error=str(exc))
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    _log("certs.remove", namespace=s.namespace, **result.describe())
