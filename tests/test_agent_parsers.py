"""Pure parsers of the crash path: cgroup lines of every driver/runtime/version, environ,
status, the registration cross-check, the helper's argv, the chained helper's argv."""

from __future__ import annotations

import pytest

from webhook import constants
from webhook.agent import chain, metadata, notify
from webhook.agent.crash_request import HELPER_ARGS, CrashRequest
from webhook.agent.procinfo import CgroupIdentity, identify, parse_cgroup, parse_cgroup_path, parse_environ, strip_root
from webhook.agent.stream import parse_size
from webhook.diagnose.procstatus import parse_status
from webhook.pattern import CrashInfo

UID = "0c3a7f5e-9b1d-4e2a-8f6c-1234567890ab"
UID_ = UID.replace("-", "_")
CID = "4f1c2d3e5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d"

# Real-shaped /proc/<pid>/cgroup files (hybrid v1 + v2, and pure v2), per driver and runtime.
CGROUPFS_V1_CONTAINERD = f"""12:pids:/kubepods/besteffort/pod{UID}/{CID}
11:memory:/kubepods/besteffort/pod{UID}/{CID}
10:cpu,cpuacct:/kubepods/besteffort/pod{UID}/{CID}
1:name=systemd:/kubepods/besteffort/pod{UID}/{CID}
0::/
"""
SYSTEMD_V2_CONTAINERD = (f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
                         f"cri-containerd-{CID}.scope\n")
SYSTEMD_V2_CRIO_GUARANTEED = f"0::/kubepods.slice/kubepods-pod{UID_}.slice/crio-{CID}.scope\n"
SYSTEMD_V1_DOCKER = f"""9:memory:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/docker-{CID}.scope
1:name=systemd:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/docker-{CID}.scope
0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/docker-{CID}.scope
"""
CGROUPFS_V2_CRIO = f"0::/kubepods/burstable/pod{UID}/crio-{CID}\n"
# Read from inside a private cgroup namespace (the agent's own): the path climbs first.
CGROUPNS_RELATIVE = (f"0::/../../kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
                     f"cri-containerd-{CID}.scope\n")
KIND_NESTED = f"0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/" \
              f"kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope\n"
HOST_PROCESS = "0::/system.slice/sshd.service\n12:pids:/system.slice/sshd.service\n"
CGROUPFS_V2_PODMAN = f"0::/kubepods/besteffort/pod{UID}/libpod-{CID}\n"  # podman --cgroup-parent, cgroupfs
CONMON = f"0::/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{CID}.scope\n"


@pytest.mark.parametrize(
    "text,runtime,qos",
    [
        (CGROUPFS_V1_CONTAINERD, None, "besteffort"),
        (SYSTEMD_V2_CONTAINERD, "containerd", "burstable"),
        (SYSTEMD_V2_CRIO_GUARANTEED, "cri-o", "guaranteed"),
        (SYSTEMD_V1_DOCKER, "docker", "besteffort"),
        (CGROUPFS_V2_CRIO, "cri-o", "burstable"),
        (CGROUPNS_RELATIVE, "containerd", "besteffort"),
        (KIND_NESTED, "containerd", "besteffort"),
        (CGROUPFS_V2_PODMAN, "podman", "besteffort"),
    ],
    ids=["cgroupfs-v1-containerd", "systemd-v2-containerd", "systemd-v2-crio-guaranteed", "systemd-v1-docker",
         "cgroupfs-v2-crio", "cgroupns-relative", "kind-nested", "cgroupfs-v2-podman"],
)
def test_cgroup_drivers_and_runtimes(text, runtime, qos):
    ident = parse_cgroup(text)
    assert ident.pod_uid == UID
    assert ident.container_id == CID
    assert ident.runtime == runtime
    assert ident.qos == qos
    assert ident.in_kubernetes


def test_host_process_is_not_kubernetes():
    ident = parse_cgroup(HOST_PROCESS)
    assert not ident.in_kubernetes and ident.container_id is None


def test_conmon_and_pod_level_have_no_container():
    assert parse_cgroup(CONMON).container_id is None
    assert parse_cgroup(CONMON).pod_uid == UID
    pod_level = parse_cgroup_path(f"/kubepods/burstable/pod{UID}")
    assert pod_level.pod_uid == UID and pod_level.container_id is None


def test_line_with_container_beats_pod_level_line():
    text = f"3:cpu:/kubepods/burstable/pod{UID}\n0::/kubepods/burstable/pod{UID}/{CID}\n"
    assert parse_cgroup(text).container_id == CID


def test_garbage_cgroup_is_not_fatal():
    assert parse_cgroup("\x00garbage\n::\n1:x\n") == CgroupIdentity()
    # a "pod" directory a user made outside kubepods with a non-UID name
    assert not parse_cgroup("0::/user.slice/podman-1234.scope\n").in_kubernetes


def test_environ_and_status():
    env = parse_environ(b"PATH=/bin\0COREDUMP_PATTERN=/data/core-%p\0EMPTY=\0noequals\0BAD=\xff\0")
    assert env["COREDUMP_PATTERN"] == "/data/core-%p" and env["EMPTY"] == "" and "noequals" not in env
    assert env["BAD"] == "\ufffd"
    status = parse_status("Name:\tapp\nUid:\t1000\t1000\t1000\t1000\nGid:\t2000\t2000\t2000\t2000\n"
                          "NSpid:\t4321\t12\n")
    assert (status.name, status.uid, status.gid, status.nspid) == ("app", 1000, 2000, (4321, 12))


def _env(uid=UID, **extra):
    env = {
        constants.ENV_PATTERN: "/data/dump/core-eci",
        constants.ENV_POD_NAME: "web-7d9c-abcde",
        constants.ENV_POD_NAMESPACE: "shop",
        constants.ENV_POD_UID: uid,
        constants.ENV_CONTAINER_NAME: "app",
        constants.ENV_NODE_NAME: "node-1",
    }
    env.update(extra)
    return env


def test_identify_registered_and_mismatches():
    cg = parse_cgroup(SYSTEMD_V2_CONTAINERD)
    ok = identify(_env(), cg)
    assert ok.reason == "registered" and ok.registration.namespace == "shop" and ok.registration.container == "app"
    other = identify(_env(uid="11111111-2222-3333-4444-555555555555"), cg)
    assert other.registration is None and other.reason == "pod_uid_mismatch"
    assert identify(_env(), parse_cgroup(HOST_PROCESS)).reason == "registration_without_pod_cgroup"
    assert identify({"PATH": "/bin"}, cg).reason == "no_registration"
    assert identify({constants.ENV_PATTERN: "/x"}, cg).reason == "incomplete_registration"
    # the downward API gives lower case; be tolerant of an upper-case copy
    assert identify(_env(uid=UID.upper()), cg).reason == "registered"


def test_strip_root():
    assert strip_root("/app", "/") == "/app"
    assert strip_root("/var/lib/c/rootfs/app", "/var/lib/c/rootfs") == "/app"
    assert strip_root("/var/lib/c/rootfs", "/var/lib/c/rootfs") == "/"
    assert strip_root("/var/lib/c/rootfs2/app", "/var/lib/c/rootfs") is None
    assert strip_root("/tmp/x (deleted)", "/") == "/tmp/x"


def test_crash_request_from_argv():
    argv = ["4321", "12", "4322", "13", "11", "1700000000", "18446744073709551615", "1", "0", "1000", "2000",
            "web-7d9c-abcde", "my app"]
    assert len(argv) == len(HELPER_ARGS)
    r = CrashRequest.from_argv(argv)
    assert (r.global_pid, r.pid, r.global_tid, r.tid, r.signal) == (4321, 12, 4322, 13, 11)
    assert r.rlimit_core == 2**64 - 1 and r.uid == 1000 and r.gid == 2000
    assert r.hostname == "web-7d9c-abcde" and r.comm == "my app" and not r.spooled
    old_kernel = list(argv)
    old_kernel[8] = ""  # %C unknown before 6.2: the kernel drops it
    assert CrashRequest.from_argv(old_kernel).cpu == 0
    with pytest.raises(ValueError, match="expected 13"):
        CrashRequest.from_argv(argv[:-1])
    bad = list(argv)
    bad[4] = "SEGV"
    with pytest.raises(ValueError, match="%s is not a number"):
        CrashRequest.from_argv(bad)
    bad = list(argv)
    bad[0] = "0"
    with pytest.raises(ValueError, match="positive PID"):
        CrashRequest.from_argv(bad)


INFO = CrashInfo(pid=12, global_pid=4321, tid=13, global_tid=4322, uid=1000, gid=2000, signal=11, time=1700000000,
                 hostname="web/1", comm="app", exe="/usr/bin/app", rlimit_core=0, dump_mode=1, cpu=3)


def test_chain_args_like_the_kernel():
    systemd = "|/usr/lib/systemd/systemd-coredump %P %u %g %s %t %c %h"
    assert chain.is_pipe(systemd) and not chain.is_pipe("core") and not chain.is_pipe(None)
    assert chain.expand_args(systemd, INFO) == [
        "/usr/lib/systemd/systemd-coredump", "4321", "1000", "2000", "11", "1700000000", "0", "web!1"]
    apport = "|/usr/share/apport/apport -p%p -s%s -c%c -d%d -P%P -u%u -g%g -- %E"
    assert chain.expand_args(apport, INFO) == [
        "/usr/share/apport/apport", "-p12", "-s11", "-c0", "-d1", "-P4321", "-u1000", "-g2000", "--",
        "!usr!bin!app"]
    # %F becomes the pidfd number we pass; unknown specifiers are dropped; extra spaces collapse
    assert chain.expand_args("|/bin/h  %F %Z%% x%", INFO, pidfd=7) == ["/bin/h", "7", "%", "x"]
    assert chain.wants_pidfd("|/bin/h %F") and not chain.wants_pidfd("|/bin/h %P")
    with pytest.raises(chain.ChainError):
        chain.split_pipe("|   ")


@pytest.mark.parametrize("text,value", [("512M", 512 << 20), ("2G", 2 << 30), ("1048576", 1 << 20),
                                        ("1.5Gi", int(1.5 * (1 << 30))), ("64k", 64 << 10), ("", None),
                                        ("lots", None), ("-1", None), ("10MB", 10 << 20)])
def test_parse_size(text, value):
    assert parse_size(text) == value


def test_metadata_and_notification_shapes():
    doc = metadata.build(
        node="node-1", namespace="shop", pod="web", pod_uid=UID, container="app", container_id=CID, image=None,
        runtime="containerd", registered=True, identification="registered", destination="pod", pid=12,
        global_pid=4321, tid=12, global_tid=4321, uid=0, gid=0, signal=6, exe="/app", comm="app", hostname="web",
        time=1700000000, path="/data/core.12", file="core.12", size=10, stored_size=10, disk_size=4096,
        digest="xxh128:ab", compression="none", truncated=False, reason=None, pattern="/data/core", rlimit_core=0,
        dump_mode=1)
    assert doc["signal_name"] == "SIGABRT" and doc["time_iso"] == "2023-11-14T22:13:20Z"
    assert metadata.loads(metadata.dumps(doc)) == doc
    with pytest.raises(ValueError):
        metadata.loads(b"[1]")
    info = dict(doc, outcome="written")
    text = notify.summary_text(info)
    assert "shop/web container app" in text and "SIGABRT" in text and "/data/core.12" in text
    assert notify.message("slack", info) == {"text": text}
    assert notify.message("feishu", info) == {"msg_type": "text", "content": {"text": text}}
    assert notify.message("dingtalk", info) == {"msgtype": "text", "text": {"content": text}}
    generic = notify.message("json", info)
    assert generic["event"] == "CoreDumped" and generic["digest"] == "xxh128:ab"
    with pytest.raises(ValueError, match="unknown notification format"):
        notify.message("teams", info)
