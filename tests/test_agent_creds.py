"""Cores are created with the crashing process's filesystem credentials, like the kernel's own
file patterns: real processes running as uid 1000 (``setpriv``), real directories owned and
moded for root, a group, a supplementary group; the per-thread switch is read back from
``/proc/self/task/<tid>/status`` on the switching thread and on a concurrent one."""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from tests.agent_support import handle_bytes, make_settings, read_meta, request_for, webhook_env
from webhook.agent.crash import CrashProcessor
from webhook.agent.creds import (
    Credentials,
    CredentialsRestoreError,
    as_process_credentials,
    parse_credentials,
    read_credentials,
    thread_fs_ids,
)
from webhook.agent.metrics import AgentMetrics

pytestmark = pytest.mark.timeout(60)
APP_UID, APP_GID, SUPP_GID = 1000, 3000, 4000


def task_ids(tid: int | None = None) -> tuple[int, int, tuple[int, ...]]:
    """(fsuid, fsgid, groups) of one thread of this process, as the kernel shows them."""
    text = Path(f"/proc/self/task/{tid or threading.get_native_id()}/status").read_text()
    fields = {k: v.split() for k, _, v in (line.partition(":") for line in text.splitlines())}
    return int(fields["Uid"][3]), int(fields["Gid"][3]), tuple(int(g) for g in fields["Groups"])


# --- pure ------------------------------------------------------------------------------------------
def test_the_filesystem_ids_are_taken_from_the_status():
    status = ("Name:\tapp\nUmask:\t0022\nUid:\t1000\t1001\t1002\t1003\nGid:\t3000\t3001\t3002\t3003\n"
              "FDSize:\t64\nGroups:\t4000 4001 \nNSpid:\t77\t1\n")
    assert parse_credentials(status) == Credentials(1003, 3003, (4000, 4001))
    assert parse_credentials("Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t \n") == Credentials(0, 0, ())
    assert parse_credentials("Uid:\t0\t0\t0\t0\nGid:\t5\t5\t5\t5\n").is_root
    for bad in ("", "Uid:\t1000\nGid:\t3000\n", "Uid:\t1 1 1 x\nGid:\t1 1 1 1\n", "Gid:\t1 1 1 1\n"):
        with pytest.raises(ValueError):
            parse_credentials(bad)


def test_credentials_of_a_real_process(tmp_path):
    me = read_credentials(os.getpid())
    assert me == Credentials(os.getuid(), os.getgid(), tuple(os.getgroups()))


# --- the per-thread switch (root) -----------------------------------------------------------------
@pytest.fixture
def base():
    """A directory under /tmp that uid 1000 can reach (pytest's tmp_path is below a 0700 dir)."""
    path = Path(tempfile.mkdtemp(prefix="cdw-creds-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _dirs(base: Path) -> dict[str, Path]:
    """root-only 0755, group 3000 only (0770), supplementary group 4000 only (0770)."""
    made = {}
    for name, gid in (("rootonly", 0), ("group", APP_GID), ("supp", SUPP_GID)):
        d = base / name
        d.mkdir()
        os.chown(d, 0, gid)
        d.chmod(0o755 if gid == 0 else 0o770)
        made[name] = d
    return made


@pytest.mark.root
def test_switch_is_per_thread_and_always_restored(base):
    dirs = _dirs(base)
    me = threading.get_native_id()
    before = task_ids(me)
    assert before[:2] == (0, 0)
    creds = Credentials(APP_UID, APP_GID, (SUPP_GID,))
    inside, other_seen, other_made = threading.Event(), [], []
    checked = threading.Event()

    def other() -> None:
        inside.wait(10)
        other_seen.append(task_ids())  # its own ids, while the first thread is switched
        (dirs["rootonly"] / "by-other").write_text("root may")  # still root's permissions
        other_made.append(True)
        checked.set()

    t = threading.Thread(target=other)
    t.start()
    with as_process_credentials(creds):
        assert task_ids(me) == (APP_UID, APP_GID, (SUPP_GID,))
        assert thread_fs_ids() == (APP_UID, APP_GID)
        with pytest.raises(PermissionError):
            (dirs["rootonly"] / "core").write_bytes(b"x")
        (dirs["group"] / "core").write_bytes(b"x")
        (dirs["supp"] / "core").write_bytes(b"x")
        inside.set()
        assert checked.wait(10)
    t.join(10)
    assert other_seen == [before] and other_made == [True]
    assert task_ids(me) == before and thread_fs_ids() == (0, 0)
    assert [(os.stat(dirs[n] / "core").st_uid, os.stat(dirs[n] / "core").st_gid) for n in ("group", "supp")] == [
        (APP_UID, APP_GID), (APP_UID, APP_GID)]
    # an error inside the block: restored all the same, the error goes on
    with pytest.raises(PermissionError):
        with as_process_credentials(creds):
            (dirs["rootonly"] / "core2").write_bytes(b"x")
    assert task_ids(me) == before
    # a root process keeps root's permissions: no switch at all
    with as_process_credentials(Credentials(0, APP_GID, (SUPP_GID,))):
        assert task_ids(me) == before
        (dirs["rootonly"] / "core3").write_bytes(b"x")


@pytest.mark.root
def test_a_failed_restore_ends_the_thread_loudly(base, caplog):
    """A thread that lost CAP_SETGID (capset on itself only) cannot put its groups back: the
    switch raises CredentialsRestoreError, which no ``except Exception`` swallows."""
    outcome: dict = {}

    def crippled() -> None:
        try:
            with as_process_credentials(Credentials(APP_UID, APP_GID, (SUPP_GID,))):
                _drop_thread_capability(6)  # CAP_SETGID, on this thread only
            outcome["returned"] = True
        except Exception as exc:  # noqa: BLE001 - must not catch it
            outcome["caught"] = exc
        except BaseException as exc:  # noqa: BLE001
            outcome["raised"] = exc
            outcome["ids"] = task_ids()

    before = task_ids()
    with caplog.at_level(logging.CRITICAL, logger="webhook.agent.creds"):
        t = threading.Thread(target=crippled)
        t.start()
        t.join(10)
    assert isinstance(outcome.get("raised"), CredentialsRestoreError), outcome
    assert outcome["ids"][2] == (SUPP_GID,)  # the kernel did refuse: the check was right
    assert [r for r in caplog.records if "could not restore" in r.getMessage()]
    assert task_ids() == before  # this thread never changed


def _drop_thread_capability(cap: int) -> None:
    """capget/capset(2) on the calling thread: clear ``cap`` from effective and permitted."""
    import platform

    numbers = {"x86_64": (125, 126), "aarch64": (90, 91)}[platform.machine()]

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    libc = ctypes.CDLL(None, use_errno=True)
    hdr, data = Header(0x20080522, 0), (Data * 2)()
    assert libc.syscall(numbers[0], ctypes.byref(hdr), data) == 0
    data[0].effective &= ~(1 << cap)
    data[0].permitted &= ~(1 << cap)
    assert libc.syscall(numbers[1], ctypes.byref(hdr), data) == 0, ctypes.get_errno()


# --- real processes through the crash path (root) -------------------------------------------------
def start_app(cgroup: Path, env: dict[str, str], *, uid: int | None) -> subprocess.Popen:
    """``sleep`` in ``cgroup`` with the webhook's env, as ``uid``:3000 with group 4000 (setpriv),
    or as root; returned once the exec is done."""
    prefix = ["setpriv", f"--reuid={uid}", f"--regid={APP_GID}", f"--groups={SUPP_GID}"] if uid is not None else []
    cmd = " ".join(prefix + ["sleep", "30"])
    proc = subprocess.Popen(["sh", "-c", f"echo $$ > {cgroup}/cgroup.procs && exec {cmd}"],
                            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env})
    want = uid if uid is not None else 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except OSError:
            status = ""
        if "Name:\tsleep" in status and parse_credentials(status).uid == want:
            return proc
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("the app did not start")


@pytest.fixture
def apps(k8s_cgroup):
    pod_uid, _cid, cgroup = k8s_cgroup
    started: list[subprocess.Popen] = []

    def start(pattern: str, uid: int | None) -> subprocess.Popen:
        p = start_app(cgroup, webhook_env(pattern, pod_uid), uid=uid)
        started.append(p)
        return p

    yield start
    for p in started:
        p.kill()
        p.wait()


def make_processor(settings) -> CrashProcessor:
    """No gdb worker: nothing rewrites the metadata behind the test's back."""
    return CrashProcessor(settings, None, events=False, notifier=False, signatures=False,
                          metrics=AgentMetrics(CollectorRegistry()))


def crash(processor, app: subprocess.Popen, *, uid: int, gid: int, data: bytes = b"\x7fELF core" * 500):
    before = task_ids()
    out = handle_bytes(processor, request_for(app.pid, uid=uid, gid=gid), data)
    assert task_ids() == before and before[:2] == (0, 0), "the handler thread kept foreign credentials"
    return out


@pytest.mark.root
def test_a_core_lands_only_where_the_process_could_write(tmp_path, base, apps, caplog):
    dirs = _dirs(base)
    processor = make_processor(make_settings(tmp_path))
    # root-owned 0755: uid 1000 may not create there -> the node location, permission_denied
    app = apps(f"{dirs['rootonly']}/core.%p", APP_UID)
    with caplog.at_level(logging.WARNING, logger="webhook.agent.crash"):
        out = crash(processor, app, uid=APP_UID, gid=APP_GID)
    assert out.outcome == "written" and out.destination == "node" and out.reason == "permission_denied", out
    assert os.listdir(dirs["rootonly"]) == []
    assert Path(out.path).is_relative_to(processor.settings.node_cores_dir)
    assert read_meta(Path(out.path))["identification"] == "permission_denied"
    warn = [r for r in caplog.records if r.getMessage() == "pod destination unusable, using the node location"]
    assert warn and warn[-1].reason == "permission_denied"
    # a missing directory below a root-owned one: the mkdir is refused the same way
    app2 = apps(f"{dirs['rootonly']}/sub/core.%p", APP_UID)
    out = crash(processor, app2, uid=APP_UID, gid=APP_GID)
    assert (out.destination, out.reason) == ("node", "permission_denied") and os.listdir(dirs["rootonly"]) == []
    # writable by group 3000 only: created there, the new directory and the core are 1000:3000
    app3 = apps(f"{dirs['group']}/new/core.%p", APP_UID)
    out = crash(processor, app3, uid=APP_UID, gid=APP_GID)
    assert (out.outcome, out.destination, out.reason) == ("written", "pod", "registered"), out
    core = dirs["group"] / "new" / f"core.{app3.pid}"
    assert out.path == str(core) and core.read_bytes() == b"\x7fELF core" * 500
    for p in (core.parent, core, Path(f"{core}.json")):
        assert (p.stat().st_uid, p.stat().st_gid) == (APP_UID, APP_GID), p
    # writable only through the supplementary group 4000: created there too
    app4 = apps(f"{dirs['supp']}/core.%p", APP_UID)
    out = crash(processor, app4, uid=APP_UID, gid=APP_GID)
    assert (out.destination, out.reason) == ("pod", "registered"), out
    assert (dirs["supp"] / f"core.{app4.pid}").stat().st_uid == APP_UID
    # a root process keeps root's permissions: the root-only directory takes its core
    app5 = apps(f"{dirs['rootonly']}/core.%p", None)
    out = crash(processor, app5, uid=0, gid=0)
    assert (out.destination, out.reason) == ("pod", "registered"), out
    assert sorted(os.listdir(dirs["rootonly"])) == [".symbols", f"core.{app5.pid}", f"core.{app5.pid}.json",
                                                    f"core.{app5.pid}.sysroot"]


@pytest.mark.root
def test_saved_binaries_are_made_as_the_process(tmp_path, base, apps):
    """``<core>.d`` and what is in it are created with the process's credentials: even the
    symlinks (never chowned) belong to uid 1000; the staging copy stays the agent's."""
    dirs = _dirs(base)
    processor = make_processor(make_settings(tmp_path, save_binaries=True, save_binaries_budget_bytes=64 << 20))
    app = apps(f"{dirs['group']}/core.%p", APP_UID)
    out = crash(processor, app, uid=APP_UID, gid=APP_GID)
    assert out.destination == "pod", out
    doc = read_meta(Path(out.path))
    bdir = Path(doc["binaries_dir"])
    assert bdir.parent == dirs["group"] and doc["binaries"], doc
    made = [bdir, *bdir.rglob("*")]
    assert all(p.lstat().st_uid == APP_UID for p in made), [(p, p.lstat().st_uid) for p in made]
    assert any(p.is_symlink() for p in made) or not os.path.islink("/lib")
    assert not list((Path(processor.settings.host_dir) / "staging").glob("*"))
    # the build-id store and the core's sysroot of links are the process's too
    made = [Path(doc["symbols_store"]), *Path(doc["symbols_store"]).rglob("*"), Path(doc["sysroot"]),
            *Path(doc["sysroot"]).rglob("*")]
    assert all(p.lstat().st_uid == APP_UID for p in made), [(p, p.lstat().st_uid) for p in made]


@pytest.mark.root
def test_other_threads_keep_root_during_concurrent_crashes(tmp_path, base, apps):
    """One thread handles uid-1000 crashes (switching each time) while another handles a root
    process's crashes into the root-only directory: the root ones never fail."""
    dirs = _dirs(base)
    processor = make_processor(make_settings(tmp_path, rate_limit_count=1000))
    user = apps(f"{dirs['rootonly']}/u/core.%p", APP_UID)
    root = apps(f"{dirs['rootonly']}/r/core.%p.%t", None)
    results: dict[str, list] = {"user": [], "root": [], "ids": []}
    agent = task_ids()

    def user_loop() -> None:
        for i in range(15):
            out = handle_bytes(processor, request_for(user.pid, uid=APP_UID, gid=APP_GID, t=i), b"u" * 4096)
            results["user"].append((out.destination, out.reason))
            results["ids"].append(task_ids())

    def root_loop() -> None:
        for i in range(15):
            out = handle_bytes(processor, request_for(root.pid, t=i), b"r" * 4096)
            results["root"].append((out.destination, out.reason))
            results["ids"].append(task_ids())

    threads = [threading.Thread(target=user_loop), threading.Thread(target=root_loop)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results["user"] == [("node", "permission_denied")] * 15
    assert results["root"] == [("pod", "registered")] * 15
    assert set(results["ids"]) == {agent} and agent[:2] == (0, 0)
    cores = [n for n in os.listdir(dirs["rootonly"] / "r") if not n.endswith(".sysroot") and n != ".symbols"]
    assert sorted(os.listdir(dirs["rootonly"])) == ["r"] and len(cores) == 30
