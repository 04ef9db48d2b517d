"""The Pod Security Standards (Kubernetes v1.31), baseline and restricted, as a checker for tests.

Written from the published policy (https://kubernetes.io/docs/concepts/security/pod-security-standards/),
one function per control, each returning the violations it finds in a Pod's spec and metadata.
Windows-only and Windows-exempt details follow the standard: the restricted controls that do
not apply to ``spec.os.name: windows`` are skipped for such pods.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

BASELINE_CAPABILITIES = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
    "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
}


def _containers(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for c in spec.get(field) or []:
            yield f"{field}[{c.get('name')}]", c


def _sc(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("securityContext") or {}


def _strip_cap(name: str) -> str:
    return name[4:] if name.upper().startswith("CAP_") else name


def baseline(pod: dict[str, Any]) -> list[str]:
    """Violations of the baseline level."""
    spec, meta = pod.get("spec") or {}, pod.get("metadata") or {}
    psc = _sc(spec)
    out: list[str] = []
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        out.append("hostProcess")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            out.append(key)
    for v in spec.get("volumes") or []:
        if "hostPath" in v:
            out.append(f"hostPath volume {v.get('name')}")
    for key, value in (meta.get("annotations") or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/"):
            if value != "runtime/default" and not value.startswith("localhost/"):
                out.append(f"AppArmor annotation {key}={value}")
    out += _selinux("pod", psc)
    out += _seccomp_not_unconfined("pod", psc)
    out += _apparmor_field("pod", psc)
    for s in psc.get("sysctls") or []:
        if s.get("name") not in SAFE_SYSCTLS:
            out.append(f"sysctl {s.get('name')}")
    for where, c in _containers(spec):
        sc = _sc(c)
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"{where} hostProcess")
        if sc.get("privileged"):
            out.append(f"{where} privileged")
        for cap in (sc.get("capabilities") or {}).get("add") or []:
            if _strip_cap(cap) not in BASELINE_CAPABILITIES:
                out.append(f"{where} adds capability {cap}")
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                out.append(f"{where} hostPort {p['hostPort']}")
        out += _selinux(where, sc)
        if sc.get("procMount") not in (None, "Default"):
            out.append(f"{where} procMount {sc['procMount']}")
        out += _seccomp_not_unconfined(where, sc)
        out += _apparmor_field(where, sc)
    return out


def _selinux(where: str, sc: dict[str, Any]) -> list[str]:
    opts = sc.get("seLinuxOptions") or {}
    out = []
    if opts.get("type", "") not in SELINUX_TYPES:
        out.append(f"{where} seLinux type {opts['type']}")
    for key in ("user", "role"):
        if opts.get(key):
            out.append(f"{where} seLinux {key}")
    return out


def _seccomp_not_unconfined(where: str, sc: dict[str, Any]) -> list[str]:
    kind = (sc.get("seccompProfile") or {}).get("type")
    return [f"{where} seccomp Unconfined"] if kind == "Unconfined" else []


def _apparmor_field(where: str, sc: dict[str, Any]) -> list[str]:
    kind = (sc.get("appArmorProfile") or {}).get("type")
    return [f"{where} appArmor {kind}"] if kind not in (None, "RuntimeDefault", "Localhost") else []


def restricted(pod: dict[str, Any]) -> list[str]:
    """Violations of the restricted level (baseline's included)."""
    out = baseline(pod)
    spec = pod.get("spec") or {}
    psc = _sc(spec)
    windows = (spec.get("os") or {}).get("name") == "windows"
    for v in spec.get("volumes") or []:
        kinds = [k for k in v if k != "name"]
        if not kinds or kinds[0] not in RESTRICTED_VOLUMES:
            out.append(f"volume {v.get('name')} of type {kinds[0] if kinds else '?'}")
    if psc.get("runAsNonRoot") is False:
        out.append("pod runAsNonRoot false")
    if psc.get("runAsUser") == 0:
        out.append("pod runAsUser 0")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    for where, c in _containers(spec):
        sc = _sc(c)
        if not windows and sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{where} allowPrivilegeEscalation not false")
        non_root = sc.get("runAsNonRoot")
        if non_root is False or (non_root is None and psc.get("runAsNonRoot") is not True):
            out.append(f"{where} runAsNonRoot not true")
        if sc.get("runAsUser") == 0:
            out.append(f"{where} runAsUser 0")
        if not windows:
            kind = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
            if kind not in ("RuntimeDefault", "Localhost"):
                out.append(f"{where} seccomp {kind or 'unset'}")
            caps = sc.get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or []):
                out.append(f"{where} does not drop ALL capabilities")
            for cap in caps.get("add") or []:
                if _strip_cap(cap) != "NET_BIND_SERVICE":
                    out.append(f"{where} adds capability {cap} (restricted)")
    return out


LEVELS = {"baseline": baseline, "restricted": restricted}


def violations(pod: dict[str, Any], level: str) -> list[str]:
    """Violations of ``level`` ("privileged" has none)."""
    return [] if level == "privileged" else LEVELS[level](pod)
