"""The Kubernetes edge of the resolver: reading a pod's imagePullSecrets through the API."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

#: ``reader(namespace, secret names)`` -> the Secrets as the API returns them (what the resolver takes).
SecretReader = Callable[[str, list[str]], list[dict]]


def read_pull_secrets(api: Any, namespace: str, names: list[str]) -> list[dict]:
    """The named Secrets as the API returns them (a missing one is skipped, as kubelet does).

    ``api`` is a ``kubernetes.client.CoreV1Api``; other API errors propagate to the resolver,
    which then tries anonymously and mentions the error if that fails.
    """
    from kubernetes.client.rest import ApiException

    out = []
    for name in names:
        try:
            resp = api.read_namespaced_secret(name, namespace, _preload_content=False)
        except ApiException as e:
            if e.status == 404:
                log.info("pull secret missing", extra={"event": "pull_secret_missing", "namespace": namespace, "secret": name})
                continue
            raise
        out.append(json.loads(resp.data))
    return out


def secret_reader_for(api: Any) -> SecretReader:
    """Bind ``read_pull_secrets`` to an API object: the ``secret_reader`` the resolver takes."""
    return lambda namespace, names: read_pull_secrets(api, namespace, names)
