"""The JSONPatch being assembled for one pod, with the warnings and refusals that go with it.

The operations are built directly, one per change, never by diffing whole pods
(``jsonpatch.make_patch`` on a 7 KB pod costs milliseconds), and the pod is never copied: every
value put in the patch is a fresh object. Every step of the mutation writes into one
:class:`Draft`; :class:`Refused` stops the mutation with the message the API server shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jsonpatch

#: kubectl prints warnings longer than this badly; the API advises keeping them short.
MAX_WARNING = 120


@dataclass
class MutationResult:
    """The answer for one pod: a patch to apply, or a refusal, plus warnings for kubectl."""

    patch: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    allowed: bool = True
    message: str = ""
    #: The effective pattern when the pod asked for one (for logs and metrics).
    pattern: str | None = None
    #: Why a workload with this template must be refused although a bare pod is admitted
    #: (no core could ever be written): the workload check turns it into its refusal.
    workload_refusal: str | None = None


class Refused(Exception):
    """Stop the mutation and refuse the pod with ``message`` (naming the annotation and why)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def clip(text: str) -> str:
    """A warning as kubectl shows it best: at most MAX_WARNING characters."""
    return text if len(text) <= MAX_WARNING else text[: MAX_WARNING - 3] + "..."


def escape_pointer(token: str) -> str:
    """One JSON Pointer reference token (RFC 6901): '~' -> '~0', '/' -> '~1'."""
    return token.replace("~", "~0").replace("/", "~1")


class Draft:
    """What one mutation has built so far: operations, warnings, and why cores cannot be written."""

    def __init__(self) -> None:
        self.ops: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        #: "; "-joined reasons a target's core directory is read-only (recorded on the pod).
        self.unwritable: str | None = None
        #: The refusal a workload with this template gets (see MutationResult).
        self.workload_refusal: str | None = None

    def warn(self, text: str) -> None:
        """One warning for kubectl, clipped, each text once."""
        text = clip(text)
        if text not in self.warnings:
            self.warnings.append(text)

    def add(self, path: str, value: Any) -> None:
        self.ops.append({"op": "add", "path": path, "value": value})

    def replace(self, path: str, value: Any) -> None:
        self.ops.append({"op": "replace", "path": path, "value": value})

    def append_all(self, path: str, current: Any, items: list[dict[str, Any]]) -> None:
        """Append ``items`` to the list at ``path``, creating it when absent."""
        if not items:
            return
        if isinstance(current, list):
            self.ops.extend({"op": "add", "path": path + "/-", "value": item} for item in items)
        else:
            self.add(path, list(items))

    def result(self, pattern: str | None) -> MutationResult:
        """The admitted answer: every operation and warning built so far."""
        return MutationResult(
            patch=self.ops, warnings=self.warnings, pattern=pattern, workload_refusal=self.workload_refusal
        )

    def warned(self, pattern: str | None) -> MutationResult:
        """Admitted unchanged: the pod is left as it is, with the warnings that say why."""
        return MutationResult(warnings=self.warnings, pattern=pattern)

    def refused(self, message: str, pattern: str | None) -> MutationResult:
        return MutationResult(allowed=False, message=message, warnings=self.warnings, pattern=pattern)


def apply(pod: dict[str, Any], patch: list[dict[str, Any]]) -> dict[str, Any]:
    """The pod after ``patch`` (a new object; ``pod`` is untouched). For tests and summaries."""
    return jsonpatch.apply_patch(pod, patch)
