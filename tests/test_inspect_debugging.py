"""``coredump debug``'s builders: the gdb command in real shells, restricted security, the claim pod;
and the whole way from two real crashes through the agent to gdb's backtrace from the stored files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
from prometheus_client import CollectorRegistry

from tests.agent_support import app_dir, crash_as_app, known_pod
from tests.crash_support import build_programs
from tests.kube_apiserver import Echo, FakeApiServer
from tests.process_support import wait_for
from tests.suite_support import which_or_fail
from webhook import constants
from webhook.agent import install
from webhook.agent.crash import CrashProcessor
from webhook.agent.index_edge import CustomObjectsEdge
from webhook.agent.index_writer import IndexWriter
from webhook.agent.metrics import AgentMetrics
from webhook.inspect import debugging as dbg
from webhook.inspect import ephemeral as eph

RECORDED = Path(__file__).resolve().parent / "recorded" / "inspect"
K8S = "1.31.0"


def restricted_violations(container: dict, pod_spec: dict | None = None) -> list[str]:
    """What Pod Security ``restricted`` (v1.31) would refuse in one container's settings."""
    ctx = container.get("securityContext") or {}
    pod_ctx = (pod_spec or {}).get("securityContext") or {}
    out = []
    if ctx.get("allowPrivilegeEscalation") is not False:
        out.append("allowPrivilegeEscalation != false")
    if "ALL" not in ((ctx.get("capabilities") or {}).get("drop") or []):
        out.append("capabilities.drop lacks ALL")
    if set((ctx.get("capabilities") or {}).get("add") or []) - {"NET_BIND_SERVICE"}:
        out.append("capabilities added")
    if ctx.get("privileged"):
        out.append("privileged")
    if not (ctx.get("runAsNonRoot") or pod_ctx.get("runAsNonRoot")) or ctx.get("runAsUser", pod_ctx.get("runAsUser")) == 0:
        out.append("runAsNonRoot")
    seccomp = (ctx.get("seccompProfile") or pod_ctx.get("seccompProfile") or {}).get("type")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        out.append("seccompProfile")
    return out


def test_security_context_passes_restricted_as_the_owner():
    assert restricted_violations({"securityContext": dbg.security_context(1000, 3000)}) == []
    ctx = dbg.security_context(1000, 3000)
    assert (ctx["runAsUser"], ctx["runAsGroup"]) == (1000, 3000)
    assert "runAsNonRoot" not in dbg.security_context(0, 0)  # a root-owned core: honest, not restricted
    assert restricted_violations({"securityContext": dbg.security_context(0, 0)}) == ["runAsNonRoot"]


def test_debug_container_and_claim_pod_are_valid_kubernetes():
    pod = json.loads((RECORDED / "pod-web.json").read_text())
    ec = eph.debug_container(pod, image="img", name="coredump-debug-abcde", command=dbg.gdb_command("/data/c"))
    ec["securityContext"] = dbg.security_context(1000, 1000)
    kubernetes_validate.validate(eph.with_ephemeral(pod, ec), K8S, strict=True)
    claim = dbg.debug_pod("shop", "cores", image="img", name="coredump-debug-abcde", uid=1000, gid=1000)
    kubernetes_validate.validate(claim, K8S, strict=True)
    (c,) = claim["spec"]["containers"]
    assert restricted_violations(c, claim["spec"]) == []
    assert claim["spec"]["automountServiceAccountToken"] is False and c["volumeMounts"][0]["readOnly"] is True


def _fake_gdb(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gdb = bin_dir / "gdb"
    gdb.write_text('#!/bin/sh\nprintf "URLS=%s\\n" "$DEBUGINFOD_URLS"\nfor a in "$@"; do printf "ARG=%s\\n" "$a"; done\n')
    gdb.chmod(0o755)
    return bin_dir


@pytest.mark.parametrize("shell", [["dash"], ["bash"], ["busybox", "sh"]])
def test_gdb_command_picks_the_newest_core_and_its_symbols_in_real_shells(tmp_path, shell):
    which_or_fail(shell[0])
    d = tmp_path / "dump dir"
    (d / "sub").mkdir(parents=True)
    for i, name in enumerate(["core.a.1", "sub/core.b.2", "core.c.3"]):
        (d / name).write_bytes(b"core")
        (d / (name + ".json")).write_text("{}")
        os.utime(d / name, (1700000000 + i, 1700000000 + i))
    os.utime(d / "sub/core.b.2", (1800000000, 1800000000))  # the newest
    (d / "core.c.3.sysroot").mkdir()
    (d / "sub" / "core.b.2.sysroot").mkdir()
    (d / "sub" / ".symbols" / "buildid").mkdir(parents=True)
    (d / "sub" / ".symbols" / "buildid" / "x.json").write_text("{}")  # never taken for a core
    (d / "stray").write_bytes(b"no metadata: not a core")
    os.utime(d / "stray", (1900000000, 1900000000))
    env = {"PATH": f"{_fake_gdb(tmp_path)}:/usr/bin:/bin", "COREDUMP_DIR": str(d)}
    cmd = dbg.gdb_command("", ["-batch", "-ex", "bt"])
    out = subprocess.run([*shell, *cmd[1:]], env=env, capture_output=True, text=True, timeout=30)
    args = [line[4:] for line in out.stdout.splitlines() if line.startswith("ARG=")]
    assert args[-2:] == ["-c", f"{d}/sub/core.b.2"], out.stdout + out.stderr
    assert f"set sysroot {d}/sub/core.b.2.sysroot" in args and "set debuginfod enabled on" in args
    assert args[args.index("-batch"):args.index("-batch") + 3] == ["-batch", "-ex", "bt"]
    assert f"URLS=file://{d}/sub/.symbols" in out.stdout
    # a core named by its name under $COREDUMP_DIR; no store there: no debuginfod URL
    out = subprocess.run([*shell, *dbg.gdb_command("core.c.3")[1:]], env=env, capture_output=True, text=True)
    assert "URLS=\n" in out.stdout and f"ARG={d}/core.c.3" in out.stdout
    assert f"ARG=set sysroot {d}/core.c.3.sysroot" in out.stdout
    # the path the crashed container saw (a claim mounted elsewhere): that name under $COREDUMP_DIR
    out = subprocess.run([*shell, *dbg.gdb_command("/data/dump-a/core.b.2")[1:]], env=env, capture_output=True,
                         text=True, timeout=30)
    assert f"ARG={d}/sub/core.b.2" in out.stdout and f"URLS=file://{d}/sub/.symbols" in out.stdout, out.stderr


ASSERT_C = r"""
#include <assert.h>
#include <stdio.h>
__attribute__((noinline)) int check_order(int n) { assert(n < 3 && "order too large"); return n; }
int main(int argc, char **argv) { printf("%d\n", check_order(argc + 5)); return 0; }
"""

NULL_C = r"""
#include <stdio.h>
__attribute__((noinline)) void store_reading(volatile int *p) { *p = 42; }
__attribute__((noinline)) void handle_sample(volatile int *p) { store_reading(p); }
int main(int argc, char **argv) { handle_sample(argc > 5 ? &argc : (int *)0); puts("no crash"); return 0; }
"""


def _doc(path: Path, key: str) -> dict:
    def ready() -> bool:
        try:
            return key in json.loads(path.read_text())
        except (OSError, ValueError):
            return False

    wait_for(ready, 90)
    return json.loads(path.read_text())


@pytest.mark.kernel
def test_two_real_bugs_through_the_agent_to_gdb_from_the_stored_files(agent_env, k8s_cgroup, shared_dir, validate,
                                                                       tmp_path):
    """Default settings: an assert and a null dereference, each twice; then gdb, run the way the
    debug container runs it, as the core's owner, after the programs are gone. The CoreDumps the
    agent writes for them (to the fake API server) validate against the CRD."""
    gdb = which_or_fail("gdb")
    host, settings, serve = agent_env
    pod_uid, cid, cgroup = k8s_cgroup
    built = build_programs(app_dir(shared_dir / "bin"), {"checker": ASSERT_C, "sampler": NULL_C})
    for exe in built.values():
        exe.chmod(0o755)
    dump = app_dir(shared_dir / "dump")
    s = settings(node_name="node-1", keep_free_bytes=0, rate_limit_count=10)
    api = FakeApiServer()
    api.__enter__()
    api.route("POST", "/apis/coredump-webhook.io/v1alpha1/namespaces/shop/coredumps", Echo())
    writer = IndexWriter(CustomObjectsEdge(api.api()))

    # the pod watch knows the pod: only a verified crash gets a CoreDump (index.verified_namespace)
    processor = CrashProcessor(s, previous_pattern="core", events=False, notifier=False, index=writer,
                               metrics=AgentMetrics(CollectorRegistry()),
                               pod_lookup=known_pod(pod_uid, cid, name="web-0", container="app"))
    serve(s, processor.handle)
    install.install(s)
    pids = {name: [crash_as_app(exe, [], cgroup, pod_uid, f"{dump}/core.%e.%p") for _ in range(2)]
            for name, exe in built.items()}
    docs = {name: [_doc(dump / f"core.{name}.{pid}.json", "signature") for pid in ps] for name, ps in pids.items()}
    assert processor.signatures.flush(60)
    checker, sampler = docs["checker"], docs["sampler"]
    # the assert is signed by its own function (the libc abort machinery unwound), not ?? < ??
    assert checker[0]["signature_frames"][:2] == ["check_order", "main"], checker[0]["backtrace"]
    assert sampler[0]["signature_frames"][:3] == ["store_reading", "handle_sample", "main"], sampler[0]["backtrace"]
    assert checker[0]["signature"] == checker[1]["signature"] and sampler[0]["signature"] == sampler[1]["signature"]
    assert checker[0]["signature"] != sampler[0]["signature"]
    # the crash index: one CoreDump per core, with the frames, valid against the CRD
    assert writer.flush(30)
    written = [json.loads(r["body"]) for r in api.requests if r["method"] == "POST"]
    api.__exit__(None, None, None)
    assert len(written) == 4 and all(w["metadata"]["namespace"] == "shop" for w in written)
    for body in written:
        validate(body)
    assert {tuple(w["spec"]["topFrames"][:2]) for w in written} == {("check_order", "main"),
                                                                    ("store_reading", "handle_sample")}
    # the cluster page over exactly these CoreDumps, in headless Chromium, for a user who may read
    # shop (alice) and one who may not (bob): each bug is one group of its two crashes
    alice, bob = _page_over_the_index(written, tmp_path)
    assert "check_order &lt; main" in alice and "store_reading &lt; handle_sample" in alice, alice
    assert alice.count('<td class="count">2</td>') == 2, alice
    assert "check_order" not in bob and "store_reading" not in bob
    assert "namespace shop: no access to its coredumps, skipped" in bob
    # binaries stored once: one file per build-id, the second crash of each found them there
    store = dump / ".symbols" / "buildid"
    stored = list(store.glob("*/executable"))
    # as many files as distinct build-ids among the first crashes of both programs (exe, libc, ld.so...)
    first_ids = {e["build_id"] for d in (checker[0], sampler[0]) for e in d["build_ids"] if e.get("build_id")}
    assert len(first_ids) >= 3 and len(stored) == len(first_ids), (sorted(first_ids), stored)
    for name, (first, second) in docs.items():
        assert (store / first["build_id"] / "executable").read_bytes() == built[name].read_bytes()
        assert all(e["stored"] == "present" for e in second["build_ids"] if "build_id" in e), second["build_ids"]
    libc = [e for e in checker[0]["build_ids"] + sampler[0]["build_ids"] if "libc.so" in e["path"]]
    assert len({e["build_id"] for e in libc}) == 1 and [e["stored"] for e in libc].count("stored") == 1
    # the image is gone: only the volume's files remain
    shutil.rmtree(shared_dir / "bin")
    pod = {"metadata": {"name": "web-0", "namespace": "shop", "annotations": {
        constants.ANN_STATUS: constants.STATUS_INJECTED, constants.ANN_TARGETS: '["app"]',
        constants.ANN_CORE_VOLUME: f"cores@{dump}", constants.ANN_EFFECTIVE_PATTERN: f"{dump}/core.%e.%p"}},
        "spec": {"containers": [{"name": "app", "image": "app:1", "volumeMounts": [{"name": "cores", "mountPath": str(dump)}]}]}}
    for name, bug_frames in (("checker", ["check_order", "main"]), ("sampler", ["store_reading", "handle_sample", "main"])):
        core_path = docs[name][1]["path"]
        ec = eph.debug_container(pod, image="img", name="coredump-debug-x", command=dbg.gdb_command(core_path))
        ec["securityContext"] = dbg.security_context(docs[name][1]["uid"], docs[name][1]["gid"])
        assert restricted_violations(ec) == []
        ctx = ec["securityContext"]
        env = {"PATH": f"{os.path.dirname(gdb)}:/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": str(shared_dir / "tmp"),
               **{e["name"]: e["value"] for e in ec["env"]}}
        (shared_dir / "tmp").mkdir(exist_ok=True)
        os.chown(shared_dir / "tmp", ctx["runAsUser"], ctx["runAsGroup"])
        # exactly the container's command, as its uid/gid, with batch arguments for gdb appended
        cmd = ["setpriv", f"--reuid={ctx['runAsUser']}", f"--regid={ctx['runAsGroup']}", "--clear-groups",
               *ec["command"], "-batch", "-nx", "-ex", "bt"]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=ec["workingDir"])
        lines = out.stdout.splitlines()
        last0 = max(i for i, line in enumerate(lines) if line.startswith("#0 "))  # bt's own frame #0
        frames = [line for line in lines[last0:] if line.startswith("#")]
        names = [f.split(" in ", 1)[1].split(" (")[0] if " in " in f else f.split()[1] for f in frames]
        assert [n for n in names if n in bug_frames] == bug_frames, out.stdout + out.stderr
        if name == "checker":  # the libc frames are named too: the container's libc came from the store
            assert any("abort" in n for n in names), out.stdout
        assert "Could not load shared library symbols" not in out.stdout + out.stderr, out.stdout + out.stderr


def _page_over_the_index(items: list[dict], tmp_path: Path) -> tuple[str, str]:
    """The index page's DOM (and a screenshot each) for alice, who may list shop's CoreDumps,
    and bob, who may list payments' only, with ``items`` as shop's index."""
    from tests.kube_apiserver import ByToken, Recorded
    from tests.page_support import INDEX, Served, api_for, auth_proxy, chromium_dom, take_screenshot
    from webhook.inspect.index_page import create_index_page_app

    listing = {"apiVersion": "coredump-webhook.io/v1alpha1", "kind": "CoreDumpList",
               "metadata": {"resourceVersion": "1"}, "items": items}
    forbidden = Recorded(403, "status-403-list-coredumps.json")
    namespaces = Recorded(200, "namespacelist.json")
    doms = []
    with FakeApiServer() as api:
        api.route("GET", f"{INDEX}/coredumps", ByToken({"alice-token": forbidden, "bob-token": forbidden}))
        api.route("GET", "/api/v1/namespaces", ByToken({"alice-token": namespaces, "bob-token": namespaces}))
        api.route("GET", f"{INDEX}/namespaces/shop/coredumps",
                  ByToken({"alice-token": Recorded(200, listing), "bob-token": forbidden}))
        api.route("GET", f"{INDEX}/namespaces/payments/coredumps",
                  ByToken({"alice-token": forbidden, "bob-token": Recorded(200, {**listing, "items": []})}))
        with Served(create_index_page_app(api_for(api), whoami=lambda t: t.split("-")[0])) as page:
            for user in ("alice", "bob"):
                with Served(auth_proxy(page.url, f"{user}-token")) as proxy:
                    doms.append(chromium_dom(proxy.url, tmp_path))
                    take_screenshot(proxy.url, tmp_path / f"real-crashes-{user}.png", tmp_path)
    print(f"screenshots: {tmp_path}/real-crashes-alice.png {tmp_path}/real-crashes-bob.png")
    return doms[0], doms[1]
