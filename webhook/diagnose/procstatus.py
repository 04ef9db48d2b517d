"""The fields of ``/proc/<pid>/status`` both the agent and a gcore snapshot need (pure parsing)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Status:
    """The fields of ``/proc/<pid>/status`` the agent uses."""

    name: str = ""
    uid: int | None = None  # real
    gid: int | None = None  # real
    nspid: tuple[int, ...] = ()  # outermost first; the last one is the PID in its own namespace


def parse_status(text: str) -> Status:
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            values[key] = value.strip()

    def first_int(key: str) -> int | None:
        try:
            return int(values[key].split()[0])
        except (KeyError, IndexError, ValueError):
            return None

    nspid: tuple[int, ...] = ()
    try:
        nspid = tuple(int(v) for v in values.get("NSpid", "").split())
    except ValueError:
        nspid = ()
    return Status(name=values.get("Name", ""), uid=first_int("Uid"), gid=first_int("Gid"), nspid=nspid)
