"""Step 3: run the wrapper first in every target, keeping Kubernetes' command/args semantics.

A container with a ``command`` gets the wrapper put before it. Without one, the image's
ENTRYPOINT runs, so its config is looked up in the registry through the injected
``resolve_image`` (all of a pod's images at once when it offers ``resolve_many``, within the
admission's time budget); a look-up that fails leaves the container unwrapped, with a warning.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from webhook import constants as C
from webhook.admission.patch import Draft
from webhook.admission.podspec import Target, dicts

#: An image's (ENTRYPOINT, CMD), or why it could not be looked up.
Outcome = tuple[list[str], list[str]] | Exception


class ImageConfig(Protocol):
    """What a registry resolver returns: the image's ENTRYPOINT and CMD (possibly empty)."""

    entrypoint: Sequence[str]
    cmd: Sequence[str]


#: ``resolve_image(image, namespace=..., pull_secrets=[...], deadline=...) -> ImageConfig``;
#: raises any exception when the image cannot be resolved (its text becomes a warning).
Resolver = Callable[..., ImageConfig]


def escape_dollars(values: Sequence[str]) -> list[str]:
    """Image ENTRYPOINT/CMD as ``command``/``args``: Kubernetes expands ``$(VAR)`` and turns
    ``$$`` into ``$`` there (never in the image config), so every ``$`` is written ``$$``."""
    return [v.replace("$", "$$") for v in values]


class ImageLookup:
    """The registry look-ups of one pod: its namespace, pull secrets and time budget."""

    def __init__(
        self,
        resolve_image: Resolver | None,
        *,
        enabled: bool,
        namespace: str,
        spec: dict[str, Any],
        deadline: float | None,
    ) -> None:
        self.resolve_image = resolve_image
        self.enabled = enabled
        self.namespace = namespace
        self.spec = spec
        self.deadline = deadline

    def pull_secrets(self) -> list[str]:
        return [s["name"] for s in dicts(self.spec.get("imagePullSecrets")) if isinstance(s.get("name"), str)]

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def resolve_all(self, targets: list[Target]) -> dict[str, Outcome]:
        """Every target without a command, looked up at once (a plain callable: none here)."""
        if not self.enabled or self.resolve_image is None:
            return {}
        images = _images_to_resolve(targets)
        if not images or self.expired():
            return {}
        many = getattr(self.resolve_image, "resolve_many", None)
        if many is None:
            return {}  # a plain callable: wrap_command asks it one image at a time
        try:
            outcomes = many(images, namespace=self.namespace, pull_secrets=self.pull_secrets(), deadline=self.deadline)
        except Exception as exc:  # noqa: BLE001 - the collaborator failing degrades every image
            return {image: exc for image in images}
        return {image: value if isinstance(value, Exception) else _outcome(value) for image, value in outcomes.items()}

    def config(self, image: str, resolved: dict[str, Outcome]) -> tuple[list[str], list[str]] | str:
        """``image``'s (ENTRYPOINT, CMD), or what the container's warning says instead."""
        if not self.enabled:
            return "no command and entrypoint look-up is off: core limit not raised"
        if self.resolve_image is None:
            return "no command and no registry resolver: core limit not raised"
        if image not in resolved:
            if self.expired():
                return "not wrapped, could not resolve the image's entrypoint (time budget spent)"
            resolved[image] = self._resolve_one(self.resolve_image, image)
        outcome = resolved[image]
        if isinstance(outcome, Exception):
            # A short reason class, never the raw error (it could map the webhook's network).
            reason = getattr(outcome, "reason", None) or "lookup failed"
            return f"not wrapped, could not resolve the image's entrypoint ({reason})"
        return outcome

    def _resolve_one(self, resolve: Resolver, image: str) -> Outcome:
        try:
            config = resolve(image, namespace=self.namespace, pull_secrets=self.pull_secrets(), deadline=self.deadline)
        except Exception as exc:  # noqa: BLE001 - any failure of the collaborator degrades to a warning
            return exc
        return _outcome(config)


def wrap_command(draft: Draft, t: Target, lookup: ImageLookup, resolved: dict[str, Outcome]) -> None:
    """Step 3 for one target; ``resolved`` holds the pod's look-ups so far (see resolve_all)."""
    command = t.container.get("command")
    if isinstance(command, list) and command:
        if command[0] != C.WRAPPER_PATH:
            draft.add(t.path + "/command", [C.WRAPPER_PATH, *command])
        return
    # No command: the image's ENTRYPOINT runs, with args (or the image's CMD) after it.
    image = t.container.get("image")
    if not isinstance(image, str) or not image:
        draft.warn(f"container {t.name}: no image, command not wrapped")
        return
    config = lookup.config(image, resolved)
    if isinstance(config, str):
        draft.warn(f"container {t.name}: {config}")
        return
    _wrap_entrypoint(draft, t, image, *config)


def _wrap_entrypoint(draft: Draft, t: Target, image: str, entrypoint: list[str], cmd: list[str]) -> None:
    """The image's ENTRYPOINT after the wrapper as ``command``; its CMD as ``args`` if none."""
    if entrypoint == [""]:  # the image explicitly reset its ENTRYPOINT
        entrypoint = []
    args = t.container.get("args")
    has_args = isinstance(args, list) and bool(args)
    if not entrypoint and not has_args and not cmd:
        draft.warn(f"container {t.name}: image {image} has no ENTRYPOINT or CMD: command not wrapped")
        return
    draft.add(t.path + "/command", [C.WRAPPER_PATH, *escape_dollars(entrypoint)])
    if not has_args and cmd:
        # A container command makes the runtime drop the image's CMD: carry it over as args.
        draft.add(t.path + "/args", escape_dollars(cmd))


def _images_to_resolve(targets: list[Target]) -> list[str]:
    """The distinct images of targets without a command, in target order."""
    images: list[str] = []
    for t in targets:
        command, image = t.container.get("command"), t.container.get("image")
        if (not isinstance(command, list) or not command) and isinstance(image, str) and image:
            if image not in images:
                images.append(image)
    return images


def _outcome(config: Any) -> Outcome:
    """A resolver's answer as (ENTRYPOINT, CMD), or the error of a malformed answer."""
    try:
        return (_strings(config.entrypoint), _strings(config.cmd))
    except Exception as exc:  # noqa: BLE001
        return exc


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"resolver returned {value!r}, not a list of strings")
    return list(value)
