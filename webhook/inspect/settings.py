"""Settings of the inspection commands (``list``, ``get``, ``debug``, ``gcore``): one dataclass
whose fields carry their flags and environment variables; each command offers the ones it uses."""

from __future__ import annotations

from dataclasses import dataclass

from webhook import DEFAULT_IMAGE
from webhook.settings_fields import setting

DEFAULT_DEBUG_IMAGE = DEFAULT_IMAGE
DEFAULT_READER_IMAGE = "docker.io/library/busybox:1.36"


def _env(name: str) -> str:
    return "COREDUMP_" + name.upper().replace("-", "_")


@dataclass(frozen=True)
class InspectSettings:
    """Settings of the inspection commands (filled from click options / env vars)."""

    #: Namespace of the pod (-n); None = the context's.
    namespace: str | None = setting(
        None, short="-n", env=_env("namespace"), show_default=False, help="namespace (default: the context's)")
    #: kubeconfig context (--context); None = current context.
    context: str | None = setting(None, env=_env("context"), show_default=False, help="kubeconfig context")
    #: kubeconfig file (--kubeconfig); None = $KUBECONFIG or ~/.kube/config, else in-cluster.
    kubeconfig: str | None = setting(None, env="KUBECONFIG", show_default=False, help="kubeconfig file")
    #: Image of the debug container: needs gdb and a shell. The project's own image carries gdb
    #: (the agent uses it for signatures and gcore), so it is the default.
    debug_image: str = setting(
        DEFAULT_DEBUG_IMAGE, flag="--image", env=_env("debug_image"),
        help="debug image (needs gdb with debuginfod support and a shell)")
    #: imagePullPolicy of the debug container.
    pull_policy: str = setting("IfNotPresent", env=_env("debug_pull_policy"), help="")
    #: Seconds to wait for the debug container / reader pod to run.
    wait_timeout: float = setting(120.0, flag="--timeout", env=_env("debug_timeout"), help="")
    #: Image of the reader pod that mounts a claim after the crashed pod is gone (needs sh,
    #: find, cat, tail, sleep: busybox is enough).
    reader_image: str = setting(DEFAULT_READER_IMAGE, env=_env("reader_image"), help="")
    #: runAsUser of the reader pod (the app's uid; lets it run under PSA "restricted").
    reader_uid: int | None = setting(
        None, env=_env("reader_uid"), show_default=False, help="runAsUser of the reader pod")
    #: ``coredump list``: group the cores by crash signature, with counts.
    group: bool = setting(
        False, env=_env("group"), negatable=False, show_default=False, help="group by crash signature, with counts")
    #: ``coredump gcore``: seconds to wait for the node agent's answer.
    gcore_timeout: float = setting(
        300.0, flag="--timeout", env=_env("gcore_timeout"), help="seconds to wait for the agent's answer")
    #: ``coredump gcore``: the request's id (default: a random one; tests set it).
    gcore_request_id: str | None = setting(
        None, flag="--request-id", env=_env("gcore_request_id"), hidden=True, show_default=False, help="")
