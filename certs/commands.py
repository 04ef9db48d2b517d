"""``coredump certs generate`` (files for local use and tests) and ``coredump certs bootstrap``
(the chart's Job: the serving Secret and the caBundle)."""

from __future__ import annotations

import json
import sys

import click

from webhook.certs import generate as gen


def _log(event: str, **fields: object) -> None:
    click.echo(json.dumps({"event": event, **fields}, sort_keys=True), err=True)


@click.group()
def certs() -> None:
    """Certificates of the webhook: a private CA and the serving certificate."""


@certs.command()
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), show_envvar=True, envvar="COREDUMP_CERTS_OUT",
              help="Directory to write ca.crt, tls.crt and tls.key (0600) into.")
@click.option("--service", default=gen.DEFAULT_SERVICE, show_default=True, show_envvar=True, envvar="COREDUMP_CERTS_SERVICE",
              help="Service name; SANs: NAME, NAME.NS, NAME.NS.svc, NAME.NS.svc.cluster.local, localhost, 127.0.0.1.")
@click.option("--namespace", default=gen.DEFAULT_NAMESPACE, show_default=True, show_envvar=True, envvar="COREDUMP_CERTS_NAMESPACE",
              help="Namespace of the Service.")
@click.option("--days", default=gen.DEFAULT_DAYS, show_default=True, type=click.IntRange(min=1),
              show_envvar=True, envvar="COREDUMP_CERTS_DAYS", help="Validity in days.")
def generate(out: str, service: str, namespace: str, days: int) -> None:
    """Write a fresh CA and a serving certificate signed by it."""
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
@click.option("--namespace", required=True, show_envvar=True, envvar="COREDUMP_CERTS_NAMESPACE", help="Namespace of the Service and Secret.")
@click.option("--service", required=True, show_envvar=True, envvar="COREDUMP_CERTS_SERVICE", help="The webhook's Service name.")
@click.option("--secret", required=True, show_envvar=True, envvar="COREDUMP_CERTS_SECRET", help="The kubernetes.io/tls Secret to create or refresh.")
@click.option("--webhook-config", required=True, show_envvar=True, envvar="COREDUMP_CERTS_WEBHOOK_CONFIG",
              help="MutatingWebhookConfiguration whose webhooks get the caBundle.")
@click.option("--validating-webhook-config", default=None, show_envvar=True, envvar="COREDUMP_CERTS_VALIDATING_WEBHOOK_CONFIG",
              help="Also patch the caBundle of this ValidatingWebhookConfiguration (workload checks).")
@click.option("--days", default=gen.DEFAULT_DAYS, show_default=True, type=click.IntRange(min=1),
              show_envvar=True, envvar="COREDUMP_CERTS_DAYS", help="Validity of a new certificate, in days.")
@click.option("--renew-before", "renew_before", default=30, show_default=True, type=click.IntRange(min=0),
              show_envvar=True, envvar="COREDUMP_CERTS_RENEW_BEFORE", help="Replace a certificate expiring within this many days.")
@click.option("--kubeconfig", default=None, show_envvar=True, envvar="KUBECONFIG", type=click.Path(dir_okay=False),
              help="Use this kubeconfig instead of the in-cluster service account.")
@click.option("--secret-only", is_flag=True, default=False, show_envvar=True, envvar="COREDUMP_CERTS_SECRET_ONLY",
              help="Only create/reuse/rotate the Secret (e.g. a pre-install hook, before the webhook configuration exists).")
@click.option("--timeout", "request_timeout", default=15.0, show_default=True, type=click.FloatRange(min=0.1),
              show_envvar=True, envvar="COREDUMP_CERTS_TIMEOUT", help="Seconds allowed for each API call.")
def bootstrap(namespace: str, service: str, secret: str, webhook_config: str,
              validating_webhook_config: str | None, days: int,
              renew_before: int, kubeconfig: str | None, secret_only: bool, request_timeout: float) -> None:
    """Create, reuse or rotate the serving Secret, then patch every webhook's caBundle."""
    from webhook.certs import kube
    from webhook.kubeclient import ApiConfigError, api_client

    if renew_before >= days:
        raise click.BadParameter(f"must be below --days ({days}), or every run rotates", param_hint="--renew-before")
    settings = kube.BootstrapSettings(
        namespace=namespace, service=service, secret=secret, webhook_config=webhook_config,
        validating_webhook_config=validating_webhook_config, days=days, renew_before_days=renew_before, request_timeout=request_timeout,
    )
    try:
        with api_client(kubeconfig) as api:
            result = kube.bootstrap(api, settings, secret_only=secret_only)
    except (kube.KubeError, ApiConfigError) as exc:
        _log("certs.bootstrap.failed", error=str(exc))
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    _log("certs.bootstrap", namespace=namespace, secretName=secret, webhookConfig=webhook_config,
         validatingWebhookConfig=validating_webhook_config, **result.describe())


@certs.command()
@click.option("--namespace", required=True, show_envvar=True, envvar="COREDUMP_CERTS_NAMESPACE", help="Namespace of the Secret.")
@click.option("--webhook-config", required=True, show_envvar=True, envvar="COREDUMP_CERTS_WEBHOOK_CONFIG",
              help="The MutatingWebhookConfiguration to delete.")
@click.option("--secret", default=None, show_envvar=True, envvar="COREDUMP_CERTS_SECRET",
              help="The TLS Secret the bootstrap created, to delete (omit to keep it, e.g. cert-manager's).")
@click.option("--kubeconfig", default=None, show_envvar=True, envvar="KUBECONFIG", type=click.Path(dir_okay=False),
              help="Outside a cluster: the kubeconfig to use.")
@click.option("--timeout", "request_timeout", default=15.0, show_default=True, type=click.FloatRange(min=0.1),
              show_envvar=True, envvar="COREDUMP_CERTS_TIMEOUT", help="Seconds allowed for each API call.")
def remove(namespace: str, webhook_config: str, secret: str | None, kubeconfig: str | None,
           request_timeout: float) -> None:
    """Delete the webhook configuration, then the TLS Secret (the chart's pre-delete hook)."""
    from webhook.certs import teardown
    from webhook.certs.kube import KubeError
    from webhook.kubeclient import ApiConfigError, api_client

    try:
        with api_client(kubeconfig) as api:
            result = teardown.remove(api, namespace=namespace, webhook_config=webhook_config, secret=secret,
                                     request_timeout=request_timeout)
    except (KubeError, ApiConfigError) as exc:
        _log("certs.remove.failed", error=str(exc))
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    _log("certs.remove", namespace=namespace, **result.describe())
