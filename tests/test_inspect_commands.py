"""The commands end to end: click, a kubeconfig, the real client, recorded API responses, real exec."""

from __future__ import annotations

import json
import os

import pytest
import xxhash
from click.testing import CliRunner

from tests.clock_support import FakeClock
from tests.inspect_data import write_core
from tests.kube_apiserver import DISTROLESS, RECORDED, Echo, Exec, FakeApiServer, Recorded
from tests.pod_security import restricted
from webhook import constants
from webhook.cli import main
from webhook.inspect import ephemeral as eph

POD = "web-7d9f8c6b5-x2kqp"
POD_PATH = f"/api/v1/namespaces/shop/pods/{POD}"


@pytest.fixture
def server():
    with FakeApiServer() as s:
        yield s


@pytest.fixture
def container_fs(tmp_path):
    """The crashed container's filesystem as its kubelet would run commands in it."""
    root = tmp_path / "container"
    cores = {
        "old": write_core(root, "data/dump-a/core-!usr!local!bin!web-7-1700000000", namespace="shop", pod=POD,
                          container="app", t=1700000000, signature="a" * 64, frames=["f", "h", "main"]),
        "new": write_core(root, "data/dump-a/core-!usr!local!bin!web-7-1700000600", namespace="shop", pod=POD,
                          container="app", t=1700000600, signature="a" * 64, frames=["f", "h", "main"]),
    }
    return root, cores


@pytest.fixture(scope="module")
def wrapper_bin(bin_dir):
    """The real static wrapper, as build.sh makes it."""
    return bin_dir / "coredump-wrapper"


def exec_commands(server) -> list[list[str]]:
    return [r["query"]["command"] for r in server.requests if r["path"].endswith("/exec")]


def run(server, tmp_path, *args, clock=None):
    """The CLI against ``server``; a ``clock`` (tests/clock_support.py) replaces the real one."""
    kc = server.kubeconfig(tmp_path / "kubeconfig")
    return CliRunner().invoke(main, [*args, "--kubeconfig", str(kc)], catch_exceptions=False, obj=clock)


def test_debug_opens_gdb_on_the_newest_core_as_its_owner(server, tmp_path, monkeypatch, container_fs, wrapper_bin):
    root, cores = container_fs
    monkeypatch.setattr(eph, "unique_name", lambda pod, **kw: "coredump-debug-x7k2q")
    server.route("GET", POD_PATH, Recorded(200, "pod-web.json"), Recorded(200, "pod-web-debug-waiting.json"),
                 Recorded(200, "pod-web-debug-running.json"))
    server.route("GET", POD_PATH + "/exec", Exec(root=root, wrapper=wrapper_bin))
    server.route("PATCH", POD_PATH + "/ephemeralcontainers", Recorded(200, "pod-web-patched.json"))
    res = run(server, tmp_path, "debug", POD, "-n", "shop", clock=FakeClock())
    assert res.exit_code == 0, res.output
    assert f"kubectl --kubeconfig {tmp_path / 'kubeconfig'} attach -it -n shop {POD} -c coredump-debug-x7k2q" in res.output
    methods = [r["method"] for r in server.requests]
    # the pod, the index (not installed here), the listing (exec), the patch, the wait
    assert methods == ["GET", "GET", "GET", "PATCH", "GET", "GET"]
    body = json.loads(server.requests[3]["body"])
    (ec,) = body["spec"]["ephemeralContainers"]
    assert ec["volumeMounts"] == [{"name": "coredump-webhook-cores", "mountPath": "/data/dump-a"}]
    # gdb on the newest core, as the core's owner (its metadata), restricted-compliant
    assert ec["command"][:2] == ["sh", "-c"] and ec["command"][4] == "/" + str(cores["new"].relative_to(root))
    assert ec["securityContext"] == {"runAsUser": 1000, "runAsGroup": 1000, "runAsNonRoot": True,
                                     "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                     "seccompProfile": {"type": "RuntimeDefault"}}
    assert server.requests[0]["headers"]["authorization"] == "Bearer alice-token"


def test_debug_a_crash_looping_pod_lets_the_container_pick_the_core(server, tmp_path, monkeypatch):
    """Nothing to exec into: no listing, the container picks the newest core itself, the owner
    comes from the container's securityContext."""
    pod = json.loads((RECORDED / "pod-web.json").read_text())
    pod["status"]["phase"] = "Running"
    pod["spec"]["securityContext"] = {"runAsUser": 2000, "runAsGroup": 2000}
    pod["spec"]["containers"][0]["securityContext"] = {"runAsUser": 1234}
    monkeypatch.setattr(eph, "unique_name", lambda pod, **kw: "coredump-debug-x7k2q")
    server.route("GET", POD_PATH, Recorded(200, pod), Recorded(200, "pod-web-debug-running.json"))
    server.route("GET", POD_PATH + "/exec", Recorded(400, {"kind": "Status", "status": "Failure", "code": 400,
                                                         "message": "container app is waiting (CrashLoopBackOff)"}))
    server.route("PATCH", POD_PATH + "/ephemeralcontainers", Recorded(200, "pod-web-patched.json"))
    res = run(server, tmp_path, "debug", POD, "-n", "shop", clock=FakeClock())
    assert res.exit_code == 0, res.output
    assert "picked inside the debug container" in res.stderr
    (ec,) = json.loads([r for r in server.requests if r["method"] == "PATCH"][0]["body"])["spec"]["ephemeralContainers"]
    assert ec["command"][4] == ""  # the newest, chosen by the script
    assert (ec["securityContext"]["runAsUser"], ec["securityContext"]["runAsGroup"]) == (1234, 2000)


def test_debug_dry_run_from_file_calls_nothing(server, tmp_path):
    res = run(server, tmp_path, "debug", "--dry-run", "-f", "tests/recorded/inspect/pod-eci-nas.json", "--uid", "7")
    assert res.exit_code == 0, res.output
    body = json.loads(res.stdout)
    assert body["spec"]["ephemeralContainers"][0]["targetContainerName"] == "worker"
    assert body["spec"]["ephemeralContainers"][0]["securityContext"]["runAsUser"] == 7
    assert server.requests == []


def test_debug_claim_dry_run_is_a_restricted_pod_on_the_claim(server, tmp_path):
    res = run(server, tmp_path, "debug", "--claim", "cores-pvc", "-n", "shop", "--uid", "1000", "--gid", "1000",
              "core.web.7", "--dry-run")
    assert res.exit_code == 0, res.output
    pod = json.loads(res.stdout)
    (c,) = pod["spec"]["containers"]
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"] == {"claimName": "cores-pvc", "readOnly": True}
    assert c["command"][4] == "/cores/core.web.7" and c["securityContext"]["runAsNonRoot"] is True
    assert server.requests == []


def test_debug_claim_takes_the_newest_core_and_its_owner_from_the_index(server, tmp_path):
    """No --uid/--gid: one list of the namespace's CoreDumps; the newest present core on this
    claim (not one on another claim, not a Gone one) and its owner make the pod."""
    items = json.loads((RECORDED / "coredumplist-shop.json").read_text())
    by_time = sorted(items["items"], key=lambda o: o["spec"]["time"])
    claims = ["cores-pvc", "cores-pvc", "other-pvc", "cores-pvc"]  # the newest is on another claim
    for obj, claim, uid in zip(by_time, claims, (1000, 1234, 999, 1500), strict=True):
        obj["spec"]["location"].update({"claim": claim, "volumeType": "persistentVolumeClaim"})
        obj["spec"]["uid"], obj["spec"]["gid"] = uid, uid + 1
    by_time[3]["spec"]["location"]["claim"] = "other-pvc"
    by_time[1]["status"]["state"] = "Gone"  # not reachable: never picked
    server.route("GET", f"{INDEX}/namespaces/shop/coredumps", Recorded(200, items))
    server.route("POST", "/api/v1/namespaces/shop/pods", Echo())
    server.route("GET", "/api/v1/namespaces/shop/pods/*", Recorded(200, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x", "namespace": "shop"}, "status": {"phase": "Running"}}))
    res = run(server, tmp_path, "debug", "--claim", "cores-pvc", "-n", "shop")
    assert res.exit_code == 0, res.output
    lists = [r for r in server.requests if r["path"].endswith("/coredumps")]
    assert len(lists) == 1
    (created,) = [json.loads(r["body"]) for r in server.requests if r["method"] == "POST"]
    (c,) = created["spec"]["containers"]
    assert c["command"][4] == by_time[0]["spec"]["location"]["path"]  # the newest left on cores-pvc
    assert (c["securityContext"]["runAsUser"], c["securityContext"]["runAsGroup"]) == (1000, 1001)
    assert restricted(created) == []
    assert created["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "cores-pvc"
    assert "pass --uid" not in res.stderr
    # a named core on the claim: its own owner
    server.requests.clear()
    name = by_time[1]["spec"]["location"]["path"].rsplit("/", 1)[-1]
    res = run(server, tmp_path, "debug", "--claim", "cores-pvc", "-n", "shop", name)
    (created,) = [json.loads(r["body"]) for r in server.requests if r["method"] == "POST"]
    ctx = created["spec"]["containers"][0]["securityContext"]
    assert (ctx["runAsUser"], ctx["runAsGroup"]) == (1234, 1235) and created["spec"]["containers"][0]["command"][4] == f"/cores/{name}"


@pytest.mark.parametrize("route,status,file,message", [
    ("PATCH", 403, "status-403-ephemeral.json", "needs RBAC verb 'patch' on 'pods/ephemeralcontainers'"),
    ("PATCH", 422, "status-422-old-cluster.json", "not supported"),
    ("GET", 404, "status-404-pod.json", f"pod shop/{POD} not found"),
])
def test_debug_errors(server, tmp_path, route, status, file, message):
    server.route("GET", POD_PATH, Recorded(200, "pod-web.json") if route != "GET" else Recorded(status, file))
    server.route("PATCH", POD_PATH + "/ephemeralcontainers", Recorded(status, file))
    res = run(server, tmp_path, "debug", POD, "-n", "shop")
    assert res.exit_code == 1 and message in res.output


def test_debug_not_annotated_pod(server, tmp_path):
    server.route("GET", "/api/v1/namespaces/shop/pods/batch-1", Recorded(200, "pod-not-annotated.json"))
    res = run(server, tmp_path, "debug", "batch-1")  # namespace from the kubeconfig context
    assert res.exit_code == 1 and "not prepared by coredump-webhook" in res.output


def test_list_reads_cores_through_exec(server, tmp_path, container_fs, wrapper_bin):
    root, cores = container_fs
    server.route("GET", "/api/v1/namespaces/shop/pods", Recorded(200, "podlist-shop.json"))
    server.route("GET", POD_PATH + "/exec", Exec(root=root, wrapper=wrapper_bin))
    res = run(server, tmp_path, "list", "-n", "shop", "--from-pods")
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("shop")]
    assert len(lines) == 2 and "1700000600" in lines[0] and "aaaaaaaaaaaa" in lines[0]
    execs = [r for r in server.requests if r["path"].endswith("/exec")]
    assert len(execs) == 1 and execs[0]["query"]["container"] == ["app"]  # batch-1 is not prepared: skipped
    # a prepared container is read through the wrapper's list mode, argv exec'd directly
    assert execs[0]["query"]["command"] == [constants.WRAPPER_PATH, constants.WRAPPER_LIST_FLAG, "/data/dump-a"]
    grouped = run(server, tmp_path, "list", "-n", "shop", "--group", "--from-pods")
    assert grouped.output.splitlines()[1].split()[:2] == ["aaaaaaaaaaaa", "2"]
    data = json.loads(run(server, tmp_path, "list", "-n", "shop", "-o", "json", "--from-pods").output)
    assert [c["digest"] for c in data["cores"]] == ["xxh128:" + xxhash.xxh3_128(cores[k].read_bytes()).hexdigest()
                                                    for k in ("new", "old")]


def test_list_all_namespaces_skips_forbidden_ones(server, tmp_path, container_fs):
    root, _ = container_fs  # no wrapper in this container: listed through the shell fallback
    server.route("GET", "/api/v1/pods", Recorded(403, "status-403-list-pods.json"))
    server.route("GET", "/api/v1/namespaces", Recorded(200, "namespacelist.json"))
    server.route("GET", "/api/v1/namespaces/payments/pods", Recorded(403, "status-403-list-pods.json"))
    server.route("GET", "/api/v1/namespaces/shop/pods", Recorded(200, "podlist-shop.json"))
    server.route("GET", POD_PATH + "/exec", Exec(root=root))
    res = run(server, tmp_path, "list", "-A", "--from-pods")
    assert res.exit_code == 0, res.output
    assert "namespace payments: no access to its pods, skipped" in res.stderr
    assert sum(1 for ln in res.stdout.splitlines() if ln.startswith("shop")) == 2


def test_list_in_forbidden_namespace_is_an_error(server, tmp_path):
    server.route("GET", "/api/v1/namespaces/payments/pods", Recorded(403, "status-403-list-pods.json"))
    res = run(server, tmp_path, "list", "-n", "payments", "--from-pods")
    assert res.exit_code == 1 and "verb 'list' on 'pods' in namespace 'payments'" in res.output


def test_get_downloads_and_verifies(server, tmp_path, container_fs, wrapper_bin):
    root, cores = container_fs
    server.route("GET", POD_PATH, Recorded(200, "pod-web.json"))
    server.route("GET", POD_PATH + "/exec", Exec(root=root, wrapper=wrapper_bin))
    out = tmp_path / "got.core"
    res = run(server, tmp_path, "get", POD, cores["old"].name, "-n", "shop", "-o", str(out))
    assert res.exit_code == 0, res.output
    assert out.read_bytes() == cores["old"].read_bytes() and "verified" in res.output
    # corrupt the core in the pod: the metadata's digest no longer matches
    cores["new"].write_bytes(b"\0" * cores["new"].stat().st_size)
    bad = run(server, tmp_path, "get", POD, cores["new"].name, "-n", "shop", "-o", str(tmp_path / "bad"))
    assert bad.exit_code == 1 and "digest mismatch" in bad.output and (tmp_path / "bad.part").exists()
    missing = run(server, tmp_path, "get", POD, "core-nope", "-n", "shop")
    assert missing.exit_code == 1 and "no core 'core-nope'" in missing.output


def test_gcore_dry_run_builds_the_agent_request(server, tmp_path):
    res = run(server, tmp_path, "gcore", "--dry-run", "-f", "tests/recorded/inspect/pod-web.json")
    assert res.exit_code == 0, res.output
    req = json.loads(res.output)
    assert req["container"] == "app" and req["node"] == "node-3" and req["pid"] == 1
    assert req["container_id"].startswith("8e2a4c6b")


# --- distroless: no shell, no coreutils; only the wrapper the webhook put there ----------------


def test_distroless_list_and_resumed_verified_get_through_the_wrapper(server, tmp_path, container_fs, wrapper_bin):
    root, cores = container_fs
    write_core(root, "data/dump-a/nested/core with space\nand newline", namespace="shop", pod=POD,
               container="app", t=1700000900, signal=6)
    server.route("GET", "/api/v1/namespaces/shop/pods", Recorded(200, "podlist-shop.json"))
    server.route("GET", POD_PATH, Recorded(200, "pod-web.json"))
    server.route("GET", POD_PATH + "/exec", Exec(root=root, wrapper=wrapper_bin, missing=DISTROLESS))
    res = run(server, tmp_path, "list", "-n", "shop", "-o", "json", "--from-pods")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert [c["time"] for c in data["cores"]] == [1700000900, 1700000600, 1700000000]
    assert data["cores"][0]["path"] == "/data/dump-a/nested/core with space\nand newline"
    assert all(c["present"] for c in data["cores"]) and res.stderr == ""
    assert all(cmd[0] == constants.WRAPPER_PATH for cmd in exec_commands(server))

    # get: an interrupted earlier download left a .part; the rest comes through --coredump-cat
    want = cores["new"].read_bytes()
    out = tmp_path / "got.core"
    (tmp_path / "got.core.part").write_bytes(want[:3001])
    server.requests.clear()
    res = run(server, tmp_path, "get", POD, cores["new"].name, "-n", "shop", "-o", str(out))
    assert res.exit_code == 0, res.output
    assert out.read_bytes() == want and "resumed at 3001" in res.output and "verified" in res.output
    cmds = exec_commands(server)
    assert cmds[0][:2] == [constants.WRAPPER_PATH, constants.WRAPPER_LIST_FLAG]
    assert cmds[1] == [constants.WRAPPER_PATH, constants.WRAPPER_CAT_FLAG, str(cores["new"]), "3001"]

    # the name with a newline downloads too
    odd = tmp_path / "odd.core"
    res = run(server, tmp_path, "get", POD, "core with space\nand newline", "-n", "shop", "-o", str(odd))
    assert res.exit_code == 0, res.output
    assert odd.read_bytes() == (root / "data/dump-a/nested/core with space\nand newline").read_bytes()

    # a corrupted core fails the digest check and keeps the .part
    cores["old"].write_bytes(b"\0" * cores["old"].stat().st_size)
    bad = run(server, tmp_path, "get", POD, cores["old"].name, "-n", "shop", "-o", str(tmp_path / "bad"))
    assert bad.exit_code == 1 and "digest mismatch" in bad.output and (tmp_path / "bad.part").exists()

    # a core swapped for a symlink (to a file outside the core directory) is refused by the wrapper
    secret = tmp_path / "secret"
    secret.write_bytes(want)
    cores["new"].unlink()
    cores["new"].symlink_to(secret)
    res = run(server, tmp_path, "get", POD, cores["new"].name, "-n", "shop", "-o", str(tmp_path / "link"))
    assert res.exit_code == 1 and "a symbolic link: refused" in res.output
    assert not (tmp_path / "link").exists()
    assert not any(os.path.basename(c[0]) in DISTROLESS for c in exec_commands(server))


def test_prepared_container_without_a_working_wrapper_falls_back_to_the_shell(server, tmp_path, container_fs):
    """A wrapper that does not answer (here: absent) sends list and get back to sh/find/tail."""
    root, cores = container_fs
    server.route("GET", POD_PATH, Recorded(200, "pod-web.json"))
    server.route("GET", POD_PATH + "/exec", Exec(root=root))
    out = tmp_path / "got"
    res = run(server, tmp_path, "get", POD, cores["old"].name, "-n", "shop", "-o", str(out))
    assert res.exit_code == 0, res.output
    assert out.read_bytes() == cores["old"].read_bytes()
    cmds = exec_commands(server)
    assert [c[0] for c in cmds] == [constants.WRAPPER_PATH, "sh", "tail"]


def test_no_wrapper_and_no_shell_says_what_to_do(server, tmp_path, container_fs):
    root, _ = container_fs
    # the prepared pod in a distroless image whose wrapper is gone: both readers fail, both are named
    server.route("GET", POD_PATH, Recorded(200, "pod-web.json"))
    server.route("GET", POD_PATH + "/exec", Exec(root=root, missing=DISTROLESS))
    res = run(server, tmp_path, "list", POD, "-n", "shop", "--from-pods")
    assert res.exit_code == 0 and "No cores found." in res.stderr
    assert f"listing through {constants.WRAPPER_PATH} failed" in res.stderr and "through sh too" in res.stderr
    # a container the webhook did not prepare (no status annotation): sh only, and the hint
    pod = json.loads((RECORDED / "pod-web.json").read_text())
    del pod["metadata"]["annotations"][constants.ANN_STATUS]
    server.route("GET", POD_PATH, Recorded(200, pod))
    server.requests.clear()
    res = run(server, tmp_path, "list", POD, "-n", "shop", "-c", "app", "--from-pods")
    assert exec_commands(server)[0][0] == "sh" and len(exec_commands(server)) == 1
    assert 'exec: "sh": executable file not found' in res.stderr
    assert "has no shell and was not prepared by coredump-webhook" in res.stderr and "coredump debug" in res.stderr


# --- the CoreDump index ------------------------------------------------------------------------
INDEX = "/apis/coredump-webhook.io/v1alpha1"


def test_list_reads_the_index_with_one_call(server, tmp_path):
    """No exec at all: works for a crash-looping pod and for one that is gone."""
    server.route("GET", f"{INDEX}/namespaces/shop/coredumps", Recorded(200, "coredumplist-shop.json"))
    res = run(server, tmp_path, "list", "-n", "shop")
    assert res.exit_code == 0, res.output
    assert [(r["method"], r["path"]) for r in server.requests] == [("GET", f"{INDEX}/namespaces/shop/coredumps")]
    rows = [line for line in res.stdout.splitlines() if line.startswith("shop")]
    assert len(rows) == 4 and ("1700000900" in rows[0] or "2023-11-14" in rows[0]), rows
    grouped = run(server, tmp_path, "list", "-n", "shop", "--group").stdout.splitlines()
    # 1 + 7 crashes of one signature (the record at its quota counts the rest); the snapshot apart
    assert grouped[1].split()[:2] == ["aaaaaaaaaaaa", "8"], grouped
    assert any("(snapshot)" in line for line in grouped) and any(line.startswith("bbbbbbbbbbbb") for line in grouped)
    data = json.loads(run(server, tmp_path, "list", "-n", "shop", "-o", "json").stdout)
    newest = data["cores"][0]
    assert newest["kind"] == "snapshot" and newest["coredump"].startswith("web-7d9f8c6b5-x2kqp-")
    assert {c["count"] for c in data["cores"]} == {1, 7} and all(c["node"] == "node-3" for c in data["cores"])
    table_keys = {"namespace", "pod", "container", "time", "signal_name", "size", "signature", "path", "node"}
    assert table_keys <= set(newest)  # -o json carries every column of the table, and more
    # one pod: a label selector, still one call
    server.requests.clear()
    res = run(server, tmp_path, "list", "web-7d9f8c6b5-q8z7m", "-n", "shop")
    assert server.requests[0]["query"]["labelSelector"] == ["coredump-webhook.io/pod=web-7d9f8c6b5-q8z7m"]
    assert [line.split()[1] for line in res.stdout.splitlines()[1:]] == ["web-7d9f8c6b5-q8z7m"]


def test_list_all_namespaces_without_cluster_rights_falls_back_to_readable_ones(server, tmp_path):
    server.route("GET", f"{INDEX}/coredumps", Recorded(403, "status-403-list-coredumps.json"))
    server.route("GET", "/api/v1/namespaces", Recorded(200, "namespacelist.json"))
    server.route("GET", f"{INDEX}/namespaces/payments/coredumps", Recorded(403, "status-403-list-coredumps.json"))
    server.route("GET", f"{INDEX}/namespaces/shop/coredumps", Recorded(200, "coredumplist-shop.json"))
    res = run(server, tmp_path, "list", "-A", "--group")
    assert res.exit_code == 0, res.output
    assert "listing the namespaces you may read" in res.stderr
    assert "namespace payments: no access to its coredumps, skipped" in res.stderr
    assert res.stdout.splitlines()[1].split()[:2] == ["aaaaaaaaaaaa", "8"]
    # not even the namespaces: one clear line, non-zero
    server.route("GET", "/api/v1/namespaces", Recorded(403, "status-403-list-pods.json"))
    res = run(server, tmp_path, "list", "-A")
    assert res.exit_code == 1 and "use -n NAMESPACE" in res.stderr and "Traceback" not in res.output


def test_list_without_the_crd_reads_the_pods(server, tmp_path, container_fs):
    root, _ = container_fs
    server.route("GET", f"{INDEX}/namespaces/shop/coredumps", Recorded(404, "status-404-coredumps-crd-missing.json"))
    server.route("GET", "/api/v1/namespaces/shop/pods", Recorded(200, "podlist-shop.json"))
    server.route("GET", POD_PATH + "/exec", Exec(root=root))
    res = run(server, tmp_path, "list", "-n", "shop")
    assert res.exit_code == 0 and "CoreDump index is not installed" in res.stderr
    assert sum(1 for line in res.stdout.splitlines() if line.startswith("shop")) == 2


def test_errors_a_user_can_act_on_are_one_line_never_a_traceback(server, tmp_path):
    # an API server that does not answer
    dead = tmp_path / "dead-kubeconfig"
    server.kubeconfig(dead)
    dead.write_text(dead.read_text().replace(server.url, "http://127.0.0.1:9"))
    res = CliRunner().invoke(main, ["list", "-n", "shop", "--kubeconfig", str(dead)], catch_exceptions=False)
    assert res.exit_code == 1 and "cannot reach the API server at http://127.0.0.1:9" in res.stderr
    assert "Traceback" not in res.output and len(res.stderr.strip().splitlines()) == 1
    # a kubeconfig that is not there
    res = CliRunner().invoke(main, ["list", "-n", "shop", "--kubeconfig", str(tmp_path / "nope")], catch_exceptions=False)
    assert res.exit_code == 1 and "kubeconfig" in res.stderr and "Traceback" not in res.output
    # a namespace the user may not read
    server.route("GET", f"{INDEX}/namespaces/payments/coredumps", Recorded(403, "status-403-list-coredumps.json"))
    res = run(server, tmp_path, "list", "-n", "payments")
    assert res.exit_code == 1 and "needs RBAC verb 'list' on 'coredumps'" in res.stderr


def test_get_and_debug_accept_a_coredump_name(server, tmp_path, monkeypatch, container_fs, wrapper_bin):
    root, cores = container_fs
    listing = json.loads((RECORDED / "coredumplist-shop.json").read_text())
    cd = next(i for i in listing["items"] if i["spec"]["pod"] == POD and i["spec"]["kind"] == "crash")
    cd["spec"]["location"]["path"] = "/" + str(cores["new"].relative_to(root))
    cd["spec"]["uid"], cd["spec"]["gid"] = 1234, 5678
    name = cd["metadata"]["name"]
    server.route("GET", f"{INDEX}/namespaces/shop/coredumps/{name}", Recorded(200, cd))
    server.route("GET", POD_PATH, Recorded(200, "pod-web.json"))
    server.route("GET", POD_PATH + "/exec", Exec(root=root, wrapper=wrapper_bin))
    out = tmp_path / "got.core"
    res = run(server, tmp_path, "get", name, "-n", "shop", "-o", str(out))
    assert res.exit_code == 0, res.output
    assert out.read_bytes() == cores["new"].read_bytes()
    # debug NAME: the CoreDump's pod, its core, its owner (from the index, no exec needed)
    server.requests.clear()
    server.route("GET", f"/api/v1/namespaces/shop/pods/{name}", Recorded(404, "status-404-pod.json"))
    server.route("GET", f"{INDEX}/namespaces/shop/coredumps", Recorded(200, {**listing, "items": [cd]}))
    server.route("PATCH", POD_PATH + "/ephemeralcontainers", Recorded(200, "pod-web-patched.json"))
    monkeypatch.setattr(eph, "unique_name", lambda pod, **kw: "coredump-debug-x7k2q")
    res = run(server, tmp_path, "debug", name, "-n", "shop", "--dry-run")
    assert res.exit_code == 0, res.output
    (ec,) = json.loads(res.stdout)["spec"]["ephemeralContainers"]
    assert ec["command"][4] == cd["spec"]["location"]["path"]
    assert (ec["securityContext"]["runAsUser"], ec["securityContext"]["runAsGroup"]) == (1234, 5678)
    assert not [r for r in server.requests if r["path"].endswith("/exec")]  # the index sufficed
