"""Mapped files read only through the kernel's references, and the build-id store.

The attack of issue 8 is performed for real: a process running as uid 1000 maps a file below
0x10000000 whose name holds a newline (``maps`` then shows a padded range and ``\\012``, so
``map_files/<text>`` does not exist) and plants an absolute symlink under that literal text
pointing at a root-only host file; it crashes through the kernel into the real agent with
``--save-binaries``. Not one byte of the host file may reach the volume.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from tests.agent_support import APP_UID, app_dir, crash_as_app, known_pod
from tests.crash_support import build_programs
from tests.process_support import wait_for
from tests.suite_support import which_or_fail
from webhook.agent import install
from webhook.agent.crash import CrashProcessor
from webhook.agent.mappings import close_all, open_mapped_files, parse_maps
from webhook.agent.metrics import AgentMetrics
from webhook.agent.symbols import build_id

ATTACK_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>
/* argv[1]: a directory of ours; argv[2]: the host file the planted link points at */
int main(int argc, char **argv) {
    char name[4096], planted[4096], page[4096] = "MAPPED-OWN-FILE\n";
    snprintf(name, sizeof name, "%s/lib\nevil.so", argv[1]);        /* maps prints \012 */
    snprintf(planted, sizeof planted, "%s/lib\\012evil.so", argv[1]); /* ...the literal text */
    int fd = open(name, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || write(fd, page, sizeof page) != sizeof page) return 2;
    /* below 0x10000000: maps pads to 01000000-01001000, map_files says 1000000-1001000 */
    if (mmap((void *)0x1000000, 4096, PROT_READ, MAP_PRIVATE | MAP_FIXED_NOREPLACE, fd, 0) == MAP_FAILED) return 3;
    if (symlink(argv[2], planted) != 0) return 4;
    *(volatile int *)0 = 1;
    return 0;
}
"""


def test_map_files_entries_are_named_from_the_integers():
    text = ("01000000-01001000 r--p 00000000 fe:00 2155408    /tmp/d/lib\\012evil.so\n"
            "55d0c0a00000-55d0c0a02000 r--p 00000000 fe:00 42   /usr/bin/sleep\n"
            "7ffd1000-7ffd2000 rw-p 00000000 00:00 0            [stack]\n"
            "7f0000000000-7f0000001000 r--p 00000000 00:00 0 \n")
    maps = parse_maps(text)
    assert [m.entry for m in maps] == ["1000000-1001000", "55d0c0a00000-55d0c0a02000"]
    assert maps[0].path == "/tmp/d/lib\\012evil.so" and maps[0].inode == 2155408


@pytest.mark.root
def test_mapped_files_of_a_live_process_are_the_mapped_inodes(tmp_path):
    which_or_fail("file")
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        wait_for(lambda: "libc" in open(f"/proc/{sleeper.pid}/maps").read(), 10)
        exe = os.readlink(f"/proc/{sleeper.pid}/exe")
        files = open_mapped_files(sleeper.pid, exe)
        try:
            assert files[0].is_exe and files[0].path == exe
            assert len({f.path for f in files}) == len(files), "each file once"
            libs = [f for f in files if "libc" in f.path]
            assert libs and all(f.fd >= 0 for f in files)
            for f in files:
                with open(os.path.realpath(f.path), "rb") as real:
                    assert os.pread(f.fd, f.size, 0) == real.read(), f.path
            # the build-id pyelftools reads is the one `file` prints
            out = subprocess.run(["file", "-L", exe], capture_output=True, text=True, check=True).stdout
            assert build_id(files[0].fd) == re.search(r"BuildID\[sha1\]=([0-9a-f]+)", out)[1]
        finally:
            close_all(files)
    finally:
        sleeper.kill()
        sleeper.wait()


def _regular_files(root: Path) -> list[Path]:
    out = []
    for dirpath, _dirs, names in os.walk(root):  # never follows symlinks to directories
        for name in names:
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                out.append(p)
    return out


@pytest.mark.kernel
def test_planted_symlink_under_a_mapping_name_never_reads_a_host_file(agent_env, k8s_cgroup, shared_dir):
    """The attack of issue 8 section 2, for real: no byte of the host file reaches the volume."""
    host, settings, serve = agent_env
    pod_uid, _cid, cgroup = k8s_cgroup
    exe = build_programs(app_dir(shared_dir / "bin"), {"attack": ATTACK_C})["attack"]
    os.chmod(exe, 0o755)
    secret = shared_dir / "host-secret"
    marker = os.urandom(16).hex().encode()
    secret.write_bytes(b"TOP-SECRET " + marker + b"\n")
    secret.chmod(0o600)  # root's: the app (uid 1000) cannot read it itself
    play = app_dir(shared_dir / "play")
    dump = app_dir(shared_dir / "dump")
    s = settings(node_name="node-1", keep_free_bytes=0, save_binaries=True, save_binaries_budget_bytes=64 << 20,
                 signatures=False)
    processor = CrashProcessor(s, previous_pattern="core", events=False, notifier=False,
                               metrics=AgentMetrics(CollectorRegistry()))
    serve(s, processor.handle)
    install.install(s)
    pid = crash_as_app(exe, [str(play), str(secret)], cgroup, pod_uid, f"{dump}/core.%p")
    meta_path = dump / f"core.{pid}.json"
    wait_for(meta_path.exists, 30)
    doc = json.loads(meta_path.read_text())
    planted = f"{play}/lib\\012evil.so"
    assert (play / "lib\\012evil.so").is_symlink()  # the planted link is there
    files = _regular_files(dump)
    leaked = [p for p in files if marker in p.read_bytes()]
    assert not leaked, f"host file copied into the volume: {leaked}"
    # the mapping was kept, from the mapped inode: its own bytes, not the link's target
    assert planted in doc["binaries"], doc.get("binaries_skipped")
    assert any(p.read_bytes().startswith(b"MAPPED-OWN-FILE") for p in files)
    assert not [p for p in _regular_files(host) if marker in p.read_bytes()], "host file copied to the node dir"


CRASHER_C = r"""
#include <stdio.h>
__attribute__((noinline)) void crash_here(volatile int *p) { *p = 42; }
int main(int argc, char **argv) { crash_here(argc > 5 ? &argc : (int *)0); puts("no crash"); return 0; }
"""


@pytest.mark.kernel
def test_build_id_store_keeps_each_binary_once_as_the_process(agent_env, k8s_cgroup, shared_dir):
    """Default settings: three crashes of one program store its executable and libraries once,
    owned by the process, in debuginfod's layout; each core gets its sysroot of links."""
    which_or_fail("debuginfod-find")
    host, settings, serve = agent_env
    pod_uid, _cid, cgroup = k8s_cgroup
    exe = build_programs(app_dir(shared_dir / "bin"), {"crasher": CRASHER_C})["crasher"]
    os.chmod(exe, 0o755)
    dump = app_dir(shared_dir / "dump")
    s = settings(node_name="node-1", keep_free_bytes=0, rate_limit_count=10, signatures=False)
    assert s.symbols and not s.save_binaries  # the defaults
    processor = CrashProcessor(s, previous_pattern="core", events=False, notifier=False,
                               metrics=AgentMetrics(CollectorRegistry()))
    serve(s, processor.handle)
    install.install(s)
    pids = [crash_as_app(exe, [], cgroup, pod_uid, f"{dump}/core.%p") for _ in range(3)]
    docs = []
    for pid in pids:
        wait_for((dump / f"core.{pid}.json").exists, 30)
        docs.append(json.loads((dump / f"core.{pid}.json").read_text()))
    store = dump / ".symbols"
    stored = sorted(store.glob("buildid/*/executable"))
    ids = {p.parent.name for p in stored}
    first, later = docs[0], docs[1:]
    assert first["build_id"] in ids and first["symbols_store"] == str(store)
    assert {e["stored"] for e in first["build_ids"] if e["path"] in (str(exe),)} == {"stored"}
    for doc in later:  # stored once: the later crashes found everything there
        assert {e["stored"] for e in doc["build_ids"] if "build_id" in e} == {"present"}, doc["build_ids"]
        assert doc["symbols_stored_bytes"] == 0
    assert len(stored) == len(ids) == len([e for e in first["build_ids"] if e.get("stored") == "stored"])
    assert any("libc" in e["path"] for e in first["build_ids"] if e.get("stored") == "stored")
    assert (store / "buildid" / first["build_id"] / "executable").read_bytes() == exe.read_bytes()
    assert all(p.stat().st_uid == APP_UID for p in [store, *store.rglob("*")])
    # a standard tool reads the store by build-id
    out = subprocess.run(["debuginfod-find", "executable", first["build_id"]], capture_output=True, text=True,
                         env={**os.environ, "DEBUGINFOD_URLS": f"file://{store}",
                              "DEBUGINFOD_CACHE_PATH": str(shared_dir / "cache")}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert hashlib.sha256(Path(out.stdout.strip()).read_bytes()).digest() == hashlib.sha256(exe.read_bytes()).digest()
    # each core's sysroot links the paths the process saw into the store, relatively
    for doc in docs:
        sysroot = Path(doc["sysroot"])
        assert sysroot.name == Path(doc["path"]).name + ".sysroot"
        link = sysroot / str(exe).lstrip("/")
        assert link.is_symlink() and not os.readlink(link).startswith("/")
        assert link.resolve() == (store / "buildid" / first["build_id"] / "executable").resolve()
    # nothing else written beside: no copies per core
    assert not [p for p in dump.iterdir() if p.name.endswith(".d")]


@pytest.mark.kernel
def test_symbols_budget_stores_what_fits_and_says_budget_for_the_rest(agent_env, k8s_cgroup, shared_dir):
    """``symbols_budget_bytes`` room for the executable only: it is stored, libc and ld.so are
    not, and the metadata's build_ids say ``budget`` for them."""
    host, settings, serve = agent_env
    pod_uid, _cid, cgroup = k8s_cgroup
    exe = build_programs(app_dir(shared_dir / "bin"), {"crasher": CRASHER_C})["crasher"]
    os.chmod(exe, 0o755)
    dump = app_dir(shared_dir / "dump")
    budget = exe.stat().st_size + 4096
    s = settings(node_name="node-1", keep_free_bytes=0, signatures=False, symbols_budget_bytes=budget)
    processor = CrashProcessor(s, previous_pattern="core", events=False, notifier=False,
                               metrics=AgentMetrics(CollectorRegistry()))
    serve(s, processor.handle)
    install.install(s)
    pid = crash_as_app(exe, [], cgroup, pod_uid, f"{dump}/core.%p")
    wait_for((dump / f"core.{pid}.json").exists, 30)
    doc = json.loads((dump / f"core.{pid}.json").read_text())
    stored = {e["path"]: e["stored"] for e in doc["build_ids"] if "build_id" in e}
    assert stored[str(exe)] == "stored", doc["build_ids"]
    libs = {p: v for p, v in stored.items() if "libc.so" in p or "/ld-linux" in p}
    assert len(libs) == 2 and set(libs.values()) == {"budget"}, doc["build_ids"]
    files = list((dump / ".symbols").glob("buildid/*/executable"))
    assert [f.parent.name for f in files] == [doc["build_id"]]
    assert sum(f.stat().st_size for f in files) <= budget
    # the crash path remembers the pod-volume directory for the retention loop (pod_retention.py)
    from webhook.agent.pod_retention import POD_DIRS_FILE, PodDirs

    # (remembered just after the metadata is written: wait for it, do not race it)
    wait_for(lambda: PodDirs(str(host / POD_DIRS_FILE)).entries, 10, "the pod-volume directory remembered")
    (entry,) = PodDirs(str(host / POD_DIRS_FILE)).entries.values()
    assert (entry["pod_uid"], entry["directory"], entry["container_id"]) == (pod_uid, str(dump), _cid)


@pytest.mark.kernel
def test_node_location_keeps_one_store_per_namespace(agent_env, k8s_cgroup, shared_dir):
    """A pod whose own directory refuses the core: the node location gets it, and the binaries go
    to the namespace's store (cores/<ns>/.symbols), linked from the core's sysroot."""
    host, settings, serve = agent_env
    pod_uid, cid, cgroup = k8s_cgroup
    exe = build_programs(app_dir(shared_dir / "bin"), {"crasher": CRASHER_C})["crasher"]
    os.chmod(exe, 0o755)
    locked = shared_dir / "locked"
    locked.mkdir(mode=0o755)  # root's: uid 1000 may not create its core here
    s = settings(node_name="node-1", keep_free_bytes=0, signatures=False)
    # the pod watch knows the pod: the node location files the core under its verified namespace
    processor = CrashProcessor(s, previous_pattern="core", events=False, notifier=False,
                               metrics=AgentMetrics(CollectorRegistry()), pod_lookup=known_pod(pod_uid, cid))
    serve(s, processor.handle)
    install.install(s)
    pid = crash_as_app(exe, [], cgroup, pod_uid, f"{locked}/core.%p")
    ns_dir = host / "cores" / "shop"
    wait_for(lambda: list(ns_dir.rglob("*.json")), 30)
    (meta_path,) = ns_dir.rglob("*.json")
    doc = json.loads(meta_path.read_text())
    assert doc["destination"] == "node" and doc["global_pid"] == pid and doc["identity"] == "verified"
    assert doc["symbols_store"] == str(ns_dir / ".symbols")
    stored = ns_dir / ".symbols" / "buildid" / doc["build_id"] / "executable"
    assert stored.read_bytes() == exe.read_bytes()
    link = Path(doc["sysroot"]) / str(exe).lstrip("/")
    assert link.is_symlink() and link.resolve() == stored.resolve()
    assert not list(locked.iterdir())
