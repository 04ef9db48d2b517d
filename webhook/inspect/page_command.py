"""``coredump page``: the read-only page listing cores, served with gunicorn."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import click

from webhook.cli_options import settings_from, settings_options
from webhook.inspect.page_settings import PageSettings


@click.command("page")
@settings_options(PageSettings)
def page(**params: Any) -> None:
    """Serve the read-only page listing cores (RBAC: TokenReview + SubjectAccessReview), with gunicorn."""
    from webhook import logs
    from webhook.inspect import page_server
    from webhook.serving.tls import CertLoadError

    settings = settings_from(PageSettings, params)
    insecure_no_auth = settings.insecure_no_auth
    settings = replace(settings, insecure_no_auth=insecure_no_auth and not settings.index)
    try:
        settings.host_port()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--bind") from None
    if not insecure_no_auth:
        from webhook.inspect import kube

        try:
            kube.api_client()  # fail here, clearly, rather than in every worker
        except kube.KubeError as exc:
            raise click.ClickException(f"{exc} (the page needs API access for TokenReview and "
                                       "SubjectAccessReview; --insecure-no-auth for local use)") from None
    logs.configure(settings.log_level)
    try:
        page_server.run(settings)
    except CertLoadError as exc:
        raise click.ClickException(str(exc)) from None
