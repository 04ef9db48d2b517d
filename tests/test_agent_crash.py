"""CrashProcessor.handle end to end below the kernel pipe: real processes in real namespaces and
real runc containers (paused with SIGSTOP while their core is fed from a pipe), the node
location, %c, chaining, vanished and spooled processes, ENOSPC, the size cap, the rate limit."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import xxhash
import zstandard

from tests.agent_support import (
    handle_bytes,
    kill_cgroup,
    known_pod,
    make_processor,
    make_settings,
    nspid_of,
    read_meta,
    request_for,
    start_namespace_app,
    synthetic_core,
    webhook_env,
)
from tests.runc_support import busybox_rootfs, cgroups_path, remove_cgroup_dirs

pytestmark = pytest.mark.timeout(120)


# --- no privileges needed: processes of our own ---------------------------------------------------
@pytest.fixture
def sleeper():
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def test_unregistered_host_process_goes_to_the_node_location(tmp_path, sleeper):
    settings = make_settings(tmp_path)
    data = synthetic_core(2)
    out = handle_bytes(make_processor(settings), request_for(sleeper.pid), data)
    assert out.outcome == "written" and out.reason == "no_registration" and out.destination == "node"
    core = Path(out.path)
    assert core.parent == Path(settings.node_cores_dir) / "host"
    assert core.name == f"core.sleep.{sleeper.pid}.1700000000"
    assert core.read_bytes() == data
    meta = read_meta(core)
    assert meta["digest"] == "xxh128:" + xxhash.xxh3_128(data).hexdigest() == out.digest
    assert meta["size"] == len(data) and meta["registered"] is False and meta["destination"] == "node"
    assert meta["signal_name"] == "SIGSEGV" and meta["exe"] == shutil.which("sleep") or meta["exe"].endswith("sleep")


def test_rlimit_core_is_honoured_for_unregistered(tmp_path, sleeper):
    settings = make_settings(tmp_path)
    proc = make_processor(settings)
    data = os.urandom(64 << 10)
    skipped = handle_bytes(proc, request_for(sleeper.pid, rlimit=0), data)
    assert skipped.outcome == "skipped" and "rlimit_core 0 below a page" in skipped.reason
    cut = handle_bytes(proc, request_for(sleeper.pid, rlimit=8192, t=1700000001), data)
    assert cut.outcome == "partial" and cut.reason.startswith("rlimit_core")
    assert cut.path.endswith(".partial") and Path(cut.path).read_bytes() == data[:8192]
    meta = read_meta(Path(cut.path))
    assert meta["truncated"] is True and meta["truncated_reason"] == "rlimit_core" and meta["size"] == 8192
    assert not Path(cut.path[: -len(".partial")]).exists()  # never under the final name


def test_skip_and_chain_modes(tmp_path, sleeper):
    skip = make_processor(make_settings(tmp_path, unregistered="skip"))
    assert handle_bytes(skip, request_for(sleeper.pid), b"x" * 5000).outcome == "skipped"
    script = tmp_path / "previous-helper"
    script.write_text("#!/bin/sh\ncat > \"$(dirname \"$0\")/chained.$1.$2\"\necho \"$@\" > \"$(dirname \"$0\")/args\"\n")
    script.chmod(0o755)
    data = os.urandom(300_000)
    auto = make_processor(make_settings(tmp_path, unregistered="auto"), f"|{script} %P %s %e %c")
    out = handle_bytes(auto, request_for(sleeper.pid), data)
    assert out.outcome == "chained" and "exited 0" in out.reason
    assert (tmp_path / f"chained.{sleeper.pid}.11").read_bytes() == data
    assert (tmp_path / "args").read_text().split() == [str(sleeper.pid), "11", "sleep", str(2**64 - 1)]
    # auto without a previous pipe: the node location
    node = make_processor(make_settings(tmp_path, unregistered="auto"), "core")
    assert handle_bytes(node, request_for(sleeper.pid, t=5), data).destination == "node"


def test_vanished_and_spooled_go_to_the_node_location(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    proc = make_processor(make_settings(tmp_path, unregistered="skip"))
    data = os.urandom(10_000)
    out = handle_bytes(proc, request_for(gone.pid), data)
    assert out.outcome == "written" and out.reason == "process_gone"
    assert Path(out.path).parent.name == "unknown" and Path(out.path).read_bytes() == data
    spooled = proc.handle(request_for(gone.pid, spooled=True, t=7), open(out.path, "rb"))
    assert spooled.outcome == "written" and spooled.reason == "spooled"
    assert Path(spooled.path).read_bytes() == data


def test_rate_limit_counts_and_logs(tmp_path, sleeper, caplog):
    proc = make_processor(make_settings(tmp_path, rate_limit_count=1))
    assert handle_bytes(proc, request_for(sleeper.pid), b"a" * 5000).outcome == "written"
    with caplog.at_level("INFO", logger="webhook.agent.crash"):
        limited = handle_bytes(proc, request_for(sleeper.pid, t=2), b"b" * 5000)
    assert limited.outcome == "rate_limited" and limited.dropped == 1
    line = [r for r in caplog.records if getattr(r, "outcome", None) == "rate_limited"][0]
    assert line.dropped == 1 and line.pid == sleeper.pid
    assert proc.metrics.rate_limited.labels("")._value.get() == 1


def test_handle_never_raises(tmp_path, sleeper):
    settings = make_settings(tmp_path, host_dir="/proc/1/nonexistent-dir")  # the node location is unusable
    out = make_processor(settings).handle(request_for(sleeper.pid), os.open("/dev/null", os.O_RDONLY))
    assert out.outcome == "failed" and out.reason.startswith("internal_error")


# --- real namespaces (root) ------------------------------------------------------------------------


@pytest.mark.root
def test_registered_namespace_process_eci_naming_enospc_and_cap(tmp_path, k8s_cgroup):
    pod_uid, cid, cgroup = k8s_cgroup
    vol = tmp_path / "vol"
    vol.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(vol)], check=True)
    unshare = None
    try:
        env = webhook_env("/pod/data/dump/core-eci", pod_uid, COREDUMP_MAX_SIZE="1M")
        unshare, pid = start_namespace_app(tmp_path, vol, env, cgroup)
        settings = make_settings(tmp_path)
        proc = make_processor(settings, lookup=known_pod(pod_uid, cid))
        nspid = nspid_of(pid)
        assert nspid != pid
        small = synthetic_core(1)[: 700_000]
        out = handle_bytes(proc, request_for(pid, nspid=nspid, uid=0, hostname="web-7d9c-abcde"), small)
        assert out.outcome == "written" and out.reason == "registered" and out.destination == "pod"
        assert out.path == f"/pod/data/dump/core-eci.{nspid}"  # the ECI naming, namespace PID
        assert (out.namespace, out.pod, out.pod_uid, out.container, out.container_id) == (
            "shop", "web-7d9c-abcde", pod_uid, "app", cid)
        on_host = vol / f"core-eci.{nspid}"  # seen on the host through the bind mount's source
        assert on_host.read_bytes() == small
        meta = read_meta(on_host)
        assert meta["size"] == len(small) and meta["digest"] == "xxh128:" + xxhash.xxh3_128(small).hexdigest()
        assert meta["pid"] == nspid and meta["global_pid"] == pid and meta["pattern"] == "/pod/data/dump/core-eci"
        assert meta["namespace"] == "shop" and meta["container_id"] == cid and meta["truncated"] is False
        assert meta["disk_size"] < meta["size"]  # sparse
        # the pod's max size (1M) cuts a bigger core: .partial with the reason
        big = os.urandom(1_500_000)
        cut = handle_bytes(proc, request_for(pid, nspid=nspid, t=1700000001), big)
        assert cut.outcome == "partial" and cut.reason.startswith("size_limit")
        assert cut.path == f"/pod/data/dump/core-eci.{nspid}.partial"  # beside, never as, the final name
        assert (vol / f"core-eci.{nspid}.partial").read_bytes() == big[: 1 << 20]
        # ENOSPC on the 3 MiB tmpfs (node max applies: annotation raised by a second registration)
        proc2 = make_processor(make_settings(tmp_path, max_core_bytes=64 << 20))
        os.kill(pid, signal.SIGCONT)
        huge = os.urandom(4 << 20)
        env_nomax = webhook_env("/pod/data/dump/core-eci", pod_uid)
        unshare.kill()
        unshare.wait()
        kill_cgroup(cgroup)
        unshare, pid = start_namespace_app(tmp_path, vol, env_nomax, cgroup)
        nspid = nspid_of(pid)
        for p in vol.iterdir():
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        full = handle_bytes(proc2, request_for(pid, nspid=nspid, t=1700000002), huge)
        assert full.outcome == "partial" and full.reason.startswith("no_space"), full
        assert full.path == f"/pod/data/dump/core-eci.{nspid}.partial"
        left = sorted(os.listdir(vol))
        assert left == [f"core-eci.{nspid}.partial", f"core-eci.{nspid}.partial.json"]
        assert (vol / left[0]).read_bytes() == huge[: full.size] and full.size > 2 << 20
        # its space was reserved before the core streamed: the reason is always there
        assert read_meta(vol / left[0])["truncated_reason"] == "no_space"
        (vol / left[0]).unlink()
        (vol / left[1]).unlink()
        again = handle_bytes(proc2, request_for(pid, nspid=nspid, t=1700000003), small)
        assert again.outcome == "written" and (vol / f"core-eci.{nspid}").read_bytes() == small
        assert not [p for p in os.listdir(vol) if p.startswith(".coredump-tmp")]
    finally:
        if unshare is not None:
            unshare.kill()
            unshare.wait()
        subprocess.run(["umount", str(vol)], check=False)


@pytest.mark.root
def test_uid_mismatch_is_unregistered(tmp_path, k8s_cgroup):
    _pod_uid, _cid, cgroup = k8s_cgroup
    vol = tmp_path / "vol"
    vol.mkdir()
    env = webhook_env("/pod/data/dump/core-eci", str(uuid.uuid4()))  # a copied env, another pod's UID
    unshare, pid = start_namespace_app(tmp_path, vol, env, cgroup)
    try:
        out = handle_bytes(make_processor(make_settings(tmp_path)), request_for(pid, nspid=nspid_of(pid)),
                           b"core" * 2000)
        assert out.outcome == "written" and out.reason == "pod_uid_mismatch" and out.destination == "node"
        assert os.listdir(vol) == []
        assert "/_unverified/" in out.path  # a k8s container, names unknown without the pod watch
    finally:
        unshare.kill()
        unshare.wait()


@pytest.mark.root
def test_a_zero_pod_max_size_keeps_the_node_maximum(tmp_path, k8s_cgroup):
    """COREDUMP_MAX_SIZE=0 (set by the process itself: the webhook never writes it) is no cap of
    the pod's; it must not lift the node's max_core_bytes."""
    pod_uid, _cid, cgroup = k8s_cgroup
    dump = tmp_path / "dump"
    env = {"PATH": "/usr/bin:/bin", **webhook_env(f"{dump}/core.%p", pod_uid, COREDUMP_MAX_SIZE="0")}
    app = subprocess.Popen(["sh", "-c", f"echo $$ > {cgroup}/cgroup.procs && exec sleep 60"], env=env)
    try:
        wait_until = time.monotonic() + 10
        while str(app.pid) not in (cgroup / "cgroup.procs").read_text().split():
            assert time.monotonic() < wait_until, "the app did not join its cgroup"
            time.sleep(0.02)
        data = os.urandom(200_000)
        out = handle_bytes(make_processor(make_settings(tmp_path, max_core_bytes=64 << 10)),
                           request_for(app.pid), data)
        assert out.outcome == "partial" and out.reason.startswith("size_limit"), out
        assert out.destination == "pod" and Path(out.path).read_bytes() == data[: 64 << 10]
    finally:
        app.kill()
        app.wait()


# --- real runc containers (root) -------------------------------------------------------------------
#: cgroup driver -> the pod's QoS class in its kubelet-shaped cgroup path
RUNC_FLAVOURS = {"cgroupfs": "besteffort", "systemd": "burstable"}


@pytest.fixture
def runc_container(tmp_path):
    """Factory: start a runc container (busybox, kubelet-shaped cgroup, the webhook's env, a host
    dir bind-mounted at /pod/data/dump, uid 1000); yields (pid, ...). Cleans everything up."""
    from tests.suite_support import which_or_fail

    runc = which_or_fail("runc")
    state = tmp_path / "runc-state"
    started: list[tuple[str, subprocess.Popen, str]] = []

    def start(flavour: str, pattern: str, **extra_env: str):
        pod_uid = str(uuid.uuid4())
        cid = hashlib.sha256(pod_uid.encode()).hexdigest()
        bundle = tmp_path / f"bundle-{flavour}"
        busybox_rootfs(bundle / "rootfs")
        vol = tmp_path / f"vol-{flavour}"
        vol.mkdir()
        os.chown(vol, 1000, 1000)
        subprocess.run([runc, "spec", "-b", str(bundle)], check=True)
        cfg = json.loads((bundle / "config.json").read_text())
        env = webhook_env(pattern, pod_uid, **extra_env)
        cfg["process"].update(terminal=False, args=["/bin/sleep", "60"], user={"uid": 1000, "gid": 1000},
                              env=["PATH=/bin"] + [f"{k}={v}" for k, v in env.items()])
        cfg["process"]["rlimits"].append({"type": "RLIMIT_CORE", "hard": 2**64 - 1, "soft": 2**64 - 1})
        cfg["hostname"] = "web-7d9c-abcde"
        cfg["mounts"].append({"destination": "/pod/data/dump", "type": "bind", "source": str(vol),
                              "options": ["rbind", "rw"]})
        cgpath = cgroups_path(flavour, pod_uid, cid, RUNC_FLAVOURS[flavour])
        cfg["linux"]["cgroupsPath"] = cgpath
        (bundle / "config.json").write_text(json.dumps(cfg))
        name = f"cdw-{flavour}-{os.getpid()}"
        proc = subprocess.Popen([runc, "--root", str(state), "run", "-b", str(bundle), name],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        started.append((name, proc, cgpath))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            st = subprocess.run([runc, "--root", str(state), "state", name], capture_output=True, text=True)
            if st.returncode == 0 and json.loads(st.stdout).get("status") == "running":
                pid = json.loads(st.stdout)["pid"]
                os.kill(pid, signal.SIGSTOP)
                return pid, pod_uid, cid, vol
            if proc.poll() is not None:
                raise AssertionError(f"runc failed: {proc.stderr.read().decode()}")
            time.sleep(0.05)
        raise AssertionError("runc container did not start")

    yield start
    for name, proc, cgpath in started:
        subprocess.run([runc, "--root", str(state), "kill", name, "KILL"], capture_output=True)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        subprocess.run([runc, "--root", str(state), "delete", "-f", name], capture_output=True)
        remove_cgroup_dirs(cgpath)


@pytest.mark.root
@pytest.mark.parametrize("flavour", sorted(RUNC_FLAVOURS))
def test_runc_container_core_lands_in_its_volume(tmp_path, runc_container, flavour):
    if flavour == "cgroupfs":
        pid, pod_uid, cid, vol = runc_container(flavour, "/pod/data/dump/core-eci")
    else:  # %h directory created on the way, %e/%p/%t, zstd from the pod's annotation
        pid, pod_uid, cid, vol = runc_container(flavour, "/pod/data/dump/%h/core-%e-%p-%t", COREDUMP_COMPRESS="zstd")
    settings = make_settings(tmp_path)
    proc = make_processor(settings)
    nspid = nspid_of(pid)
    assert nspid == 1  # the container's init
    data = synthetic_core(3)
    req = request_for(pid, nspid=nspid, uid=1000, gid=1000, hostname="web-7d9c-abcde", comm="sleep")
    out = handle_bytes(proc, req, data)
    assert out.outcome == "written", out
    assert (out.pod_uid, out.container_id) == (pod_uid, cid)
    if flavour == "cgroupfs":
        assert out.path == "/pod/data/dump/core-eci.1"
        on_host = vol / "core-eci.1"
        assert on_host.read_bytes() == data
    else:
        assert out.path == "/pod/data/dump/web-7d9c-abcde/core-sleep-1-1700000000.zst"
        on_host = vol / "web-7d9c-abcde" / "core-sleep-1-1700000000.zst"
        assert zstandard.ZstdDecompressor().decompressobj().decompress(on_host.read_bytes()) == data
        assert (os.stat(on_host.parent).st_uid, os.stat(on_host.parent).st_gid) == (1000, 1000)
    st = os.stat(on_host)
    assert (st.st_uid, st.st_gid) == (1000, 1000) and st.st_mode & 0o777 == 0o600
    meta = read_meta(on_host)
    assert meta["digest"] == "xxh128:" + xxhash.xxh3_128(data).hexdigest() and meta["size"] == len(data)
    assert meta["runtime"] == ("containerd" if flavour == "systemd" else None)
    assert meta["exe"] == "/bin/busybox"  # the container's view, not the host's
    assert meta["compression"] == ("zstd" if flavour == "systemd" else "none")
    assert meta["hostname"] == "web-7d9c-abcde" and meta["uid"] == 1000
    # nothing leaked elsewhere: the node location is untouched, no temp files remain
    assert not os.path.exists(settings.node_cores_dir) or not any(os.scandir(settings.node_cores_dir))
    assert not [p for _, _, fs in os.walk(vol) for p in fs if p.startswith(".coredump-tmp")]


def test_spooled_core_of_a_gone_container_goes_to_its_verified_pod(tmp_path):
    """Issue 15 s4: the helper's record (cgroup + registration) names the pod; no process of the
    container runs any more, so the node location gets it, under the names the pod watch gave."""
    import dataclasses

    pod_uid, cid = str(uuid.uuid4()), hashlib.sha256(b"gone").hexdigest()
    entry = tmp_path / "spool" / "1700000000-4242"
    entry.mkdir(parents=True)
    (entry / "cgroup").write_text(f"0::/kubepods/besteffort/pod{pod_uid}/{cid}\n")
    env = webhook_env("/pod/data/dump/core-eci", pod_uid, COREDUMP_POD_NAMESPACE="payments")
    (entry / "environ").write_bytes(b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items()))
    data = synthetic_core(1)
    request = dataclasses.replace(request_for(4242, spooled=True), spool_entry=str(entry))
    out = handle_bytes(make_processor(make_settings(tmp_path), lookup=known_pod(pod_uid, cid)), request, data)
    assert out.outcome == "written" and out.destination == "node", out
    assert Path(out.path).parent == Path(make_settings(tmp_path).node_cores_dir) / "shop" / "web-7d9c-abcde" / "app"
    meta = read_meta(Path(out.path))
    assert (meta["namespace"], meta["identity"], meta["registered"], meta["identification"]) == (
        "shop", "verified", True, "spooled")
    assert Path(out.path).read_bytes() == data
