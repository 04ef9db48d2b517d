"""Can the kernel execute the helper from the host directory? Checked before anything changes.

``kernel.core_pattern = |<host dir>/coredump-helper ...`` makes the kernel *execute* the helper:
from a filesystem mounted ``noexec`` (COS mounts /var, /home and /tmp so; a hardened node may
mount /var/lib so) every exec fails and every core on the node is lost, silently, while the
agent looks healthy. The agent checks the mount flags the kernel itself applies (``statvfs``
``ST_NOEXEC``, which a hostPath bind mount inherits from the host's mount) and refuses to
install there, naming the chart overlay for the node's OS when it can tell (the host's
``/etc/os-release`` through ``/proc/1/root``, the agent running with hostPID).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

#: os-release ID -> (overlay file, its host directory) for the platforms whose writable places
#: are noexec.
OVERLAYS = {
    "cos": ("values-gke-cos.yaml", "/home/kubernetes/bin/coredump-webhook"),
    "bottlerocket": ("values-bottlerocket.yaml", "/opt/csi/coredump-webhook"),
}
CHART_DIR = "charts/coredump-webhook"


@dataclass(frozen=True)
class NotExecutable:
    """The host directory's filesystem is mounted noexec."""

    host_dir: str
    mount_point: str
    os_id: str

    def message(self) -> str:
        overlay = OVERLAYS.get(self.os_id)
        if overlay:
            fix = (f"this node runs {self.os_id!r}: install with -f {CHART_DIR}/{overlay[0]} "
                   f"(host dir {overlay[1]})")
        else:
            fix = ("choose a host directory on an executable filesystem (agent.hostDir, --host-dir); "
                   + "; ".join(f"on {os_id} nodes use -f {CHART_DIR}/{f} ({d})" for os_id, (f, d) in OVERLAYS.items()))
        return (f"host directory {self.host_dir} is on a noexec mount ({self.mount_point}): the kernel "
                f"cannot execute the helper from there and every core on this node would be lost. "
                f"Nothing was installed and the kernel settings are unchanged; {fix}")


def nearest_existing(path: str) -> str:
    """``path`` or its closest existing ancestor (where it would be created)."""
    p = os.path.abspath(path)
    while not os.path.exists(p) and p != "/":
        p = os.path.dirname(p)
    return p


def mount_point(path: str) -> str:
    p = os.path.realpath(path)
    while not os.path.ismount(p):
        p = os.path.dirname(p)
    return p


def parse_os_release(text: str) -> dict[str, str]:
    """KEY=value lines of os-release(5), quotes removed."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            out[key] = value.strip().strip("\"'")
    return out


def host_os_id(host_root: str = "/proc/1/root") -> str:
    """The node's os-release ID ("" when unreadable: no hostPID, or not root)."""
    for rel in ("etc/os-release", "usr/lib/os-release"):
        try:
            with open(os.path.join(host_root, rel), encoding="utf-8", errors="replace") as f:
                return parse_os_release(f.read(65536)).get("ID", "")
        except OSError:
            continue
    return ""


def check_executable(host_dir: str, host_root: str = "/proc/1/root") -> NotExecutable | None:
    """None when the kernel can execute from ``host_dir`` (or where it would be created)."""
    where = nearest_existing(host_dir)
    if not os.statvfs(where).f_flag & os.ST_NOEXEC:
        return None
    return NotExecutable(host_dir, mount_point(where), host_os_id(host_root))
