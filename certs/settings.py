"""Settings of ``coredump certs generate``, ``bootstrap`` and ``remove``: one dataclass per
command, each field with its flag and ``COREDUMP_CERTS_*`` variable (the command fills it)."""

from __future__ import annotations

from dataclasses import dataclass

from webhook.certs import generate as gen
from webhook.settings_fields import setting


def _env(name: str) -> str:
    return "COREDUMP_CERTS_" + name.upper()


@dataclass(frozen=True)
class GenerateSettings:
    """Where ``coredump certs generate`` writes a fresh CA and serving certificate, and for whom."""

    out: str = setting(
        flag="--out", env=_env("out"), path="dir", help="Directory to write ca.crt, tls.crt and tls.key (0600) into.")
    service: str = setting(
        gen.DEFAULT_SERVICE, env=_env("service"),
        help="Service name; SANs: NAME, NAME.NS, NAME.NS.svc, NAME.NS.svc.cluster.local, localhost, 127.0.0.1.")
    namespace: str = setting(gen.DEFAULT_NAMESPACE, env=_env("namespace"), help="Namespace of the Service.")
    days: int = setting(gen.DEFAULT_DAYS, env=_env("days"), min=1, help="Validity in days.")


@dataclass(frozen=True)
class BootstrapSettings:
    """What ``coredump certs bootstrap`` manages."""

    #: Namespace of the webhook's Service and Secret.
    namespace: str = setting(env=_env("namespace"), help="Namespace of the Service and Secret.")
    #: Service name: the certificate's SANs are derived from it.
    service: str = setting(env=_env("service"), help="The webhook's Service name.")
    #: Name of the kubernetes.io/tls Secret mounted by the webhook pods.
    secret: str = setting(env=_env("secret"), help="The kubernetes.io/tls Secret to create or refresh.")
    #: MutatingWebhookConfiguration whose webhooks get the caBundle.
    webhook_config: str = setting(
        env=_env("webhook_config"), help="MutatingWebhookConfiguration whose webhooks get the caBundle.")
    #: Optional ValidatingWebhookConfiguration (the workload checks) patched the same way.
    validating_webhook_config: str | None = setting(
        None, env=_env("validating_webhook_config"), show_default=False,
        help="Also patch the caBundle of this ValidatingWebhookConfiguration (workload checks).")
    #: Validity of a newly generated certificate.
    days: int = setting(gen.DEFAULT_DAYS, env=_env("days"), min=1, help="Validity of a new certificate, in days.")
    #: A certificate expiring within this many days is replaced.
    renew_before_days: int = setting(
        30, flag="--renew-before", env=_env("renew_before"), min=0,
        help="Replace a certificate expiring within this many days.")
    #: The kubeconfig to use instead of the in-cluster service account (None: in-cluster).
    kubeconfig: str | None = setting(
        None, env="KUBECONFIG", path="file", show_default=False,
        help="Use this kubeconfig instead of the in-cluster service account.")
    #: Only create/reuse/rotate the Secret (e.g. a pre-install hook, before the webhook configuration exists).
    secret_only: bool = setting(
        False, env=_env("secret_only"), negatable=False, show_default=False,
        help="Only create/reuse/rotate the Secret (e.g. a pre-install hook, before the webhook configuration exists).")
    #: Seconds allowed for each API call.
    request_timeout: float = setting(
        15.0, flag="--timeout", env=_env("timeout"), min=0.1, help="Seconds allowed for each API call.")


@dataclass(frozen=True)
class RemoveSettings:
    """What ``coredump certs remove`` deletes (the chart's pre-delete hook)."""

    namespace: str = setting(env=_env("namespace"), help="Namespace of the Secret.")
    webhook_config: str = setting(env=_env("webhook_config"), help="The MutatingWebhookConfiguration to delete.")
    secret: str | None = setting(
        None, env=_env("secret"), show_default=False,
        help="The TLS Secret the bootstrap created, to delete (omit to keep it, e.g. cert-manager's).")
    kubeconfig: str | None = setting(
        None, env="KUBECONFIG", path="file", show_default=False, help="Outside a cluster: the kubeconfig to use.")
    request_timeout: float = setting(
        15.0, flag="--timeout", env=_env("timeout"), min=0.1, help="Seconds allowed for each API call.")
