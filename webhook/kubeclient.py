"""One way to reach the Kubernetes API from wherever we run: in-cluster, else the kubeconfig.

Every API user builds its client here: ``api_client`` for commands that need the API (a clear
:class:`ApiConfigError` when there is none), ``api_client_or_none`` for optional users (the
agent's Events and pod watch), which are simply off without any configuration. Neither touches
the client library's default configuration.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the client is imported when a client is made, not with this module
    from kubernetes.client import ApiClient

log = logging.getLogger(__name__)


class ApiConfigError(RuntimeError):
    """No usable API configuration (not in a cluster, and no usable kubeconfig)."""


def api_client(kubeconfig: str | None = None, context: str | None = None, *,
               kubeconfig_first: bool = False) -> ApiClient:
    """An ApiClient from the in-cluster ServiceAccount, else from a kubeconfig.

    ``kubeconfig_first`` (the user's CLI): the kubeconfig first, the in-cluster account only
    when there is no kubeconfig and none was named. An explicit ``kubeconfig`` is always used
    as named (never replaced by the in-cluster account).
    """
    from kubernetes import client, config

    configuration = client.Configuration()
    if kubeconfig_first:
        try:
            config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
            return client.ApiClient(configuration)
        except (config.ConfigException, OSError) as exc:
            if kubeconfig or context:
                raise ApiConfigError(f"kubeconfig: {exc}") from exc
            try:
                config.load_incluster_config(client_configuration=configuration)
            except config.ConfigException:
                raise ApiConfigError(f"no kubeconfig and not in a cluster: {exc}") from exc
            return client.ApiClient(configuration)
    if kubeconfig is None:
        try:
            config.load_incluster_config(client_configuration=configuration)
            return client.ApiClient(configuration)
        except config.ConfigException:
            pass
    try:
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
    except (config.ConfigException, OSError) as exc:
        raise ApiConfigError(f"no in-cluster service account and no usable kubeconfig: {exc}") from exc
    return client.ApiClient(configuration)


def api_client_or_none(purpose: str) -> ApiClient | None:
    """:func:`api_client`, or None (logged as "``purpose`` off") when there is no API."""
    try:
        return api_client()
    except Exception as exc:  # noqa: BLE001 - ApiConfigError, or a kubeconfig that is not even YAML
        log.info("no Kubernetes API configuration: %s off", purpose, extra={"detail": str(exc)})
        return None
