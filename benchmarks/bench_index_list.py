"""Benchmark: ``coredump list -A --group`` over 10,000 CoreDumps, next to one raw list call.

A fake API server (tests/kube_apiserver.py, a real socket) answers the cluster-wide list of
CoreDumps with N objects across P pods and S namespaces (built by the agent's own
``build_coredump``, as the API server would return them). Three runs, each a fresh process:

- ``raw``: one ``GET /apis/coredump-webhook.io/v1alpha1/coredumps`` with the kubernetes client,
  the JSON parsed, as ``kubectl get coredumps -A -o json`` does;
- ``list``: ``coredump list -A`` (table);
- ``group``: ``coredump list -A --group``;
- ``page``: the cluster page (``coredump page --index``'s app) rendering ``/`` for a user who may
  list them all: every signature and every core, one request.

Prints wall time (median of --repeat) and peak RSS of each, and the ratios to ``raw``.

    .venv/bin/python benchmarks/bench_index_list.py [--items 10000] [--pods 500] [--namespaces 40] [--repeat 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.kube_apiserver import FakeApiServer, Recorded  # noqa: E402
from webhook.agent import index as idx  # noqa: E402

PYTHON = REPO / ".venv" / "bin" / "python"
COREDUMP = REPO / ".venv" / "bin" / "coredump"

RAW = """
import json, sys
from kubernetes import client, config
config.load_kube_config(config_file=sys.argv[1])
resp = client.CustomObjectsApi().list_cluster_custom_object("coredump-webhook.io", "v1alpha1", "coredumps",
                                                            _preload_content=False)
print(len(json.loads(resp.data)["items"]))
"""


PAGE = """
import sys
from kubernetes import client
from webhook.inspect.index_page import create_index_page_app
def api_for(token):
    cfg = client.Configuration()
    cfg.host = sys.argv[1]
    cfg.api_key = {"authorization": "Bearer " + token}
    return client.ApiClient(cfg)
resp = create_index_page_app(api_for).test_client().get("/", headers={"Authorization": "Bearer admin"})
assert resp.status_code == 200, resp.status_code
print(resp.data.count(b'class="core"'))
"""


def make_items(n: int, pods: int, namespaces: int) -> list[dict]:
    """N CoreDumps: 60 signatures, each pod crashing with a few of them."""
    items = []
    for i in range(n):
        pod_i = i % pods
        ns = f"team-{pod_i % namespaces:02d}"
        bug = (i * 13 + pod_i) % 60
        sig = hashlib.sha256(f"bug-{bug}".encode()).hexdigest()
        sha = hashlib.sha256(f"core-{i}".encode()).hexdigest()
        summary = {
            "registered": True, "outcome": "written", "destination": "pod", "namespace": ns,
            "pod": f"svc-{pod_i % 50:02d}-7d9f8c6b5-{pod_i:05d}", "pod_uid": f"6f1c2a7e-3b9d-4c51-9a0e-{pod_i:012d}",
            "container": "app", "node": f"node-{pod_i % 30}", "image": f"registry.example.com/{ns}/svc:{pod_i % 9}",
            "exe": "/usr/local/bin/svc", "comm": "svc", "pid": 7, "uid": 1000, "gid": 1000, "signal": 11,
            "signal_name": "SIGSEGV", "time": 1700000000 + i * 37, "size": 50 << 20, "stored_size": 50 << 20,
            "compression": "none", "truncated": False, "sha256": sha, "signature": sig,
            "signature_frames": [f"fn_{bug}", "handle_request", "serve", "main"],
            "path": f"/data/cores/core.svc.{i}", "sysroot": f"/data/cores/core.svc.{i}.sysroot",
            "symbols_store": "/data/cores/.symbols", "build_id": sig[:40],
            "owner": f"ReplicaSet/svc-{pod_i % 50:02d}-7d9f8c6b5", "labels": {"pod-template-hash": "7d9f8c6b5"},
        }
        body = idx.build_coredump(summary, summary["time"] + 1)
        body["metadata"].update({"uid": sha[:36], "resourceVersion": str(100000 + i), "generation": 1,
                                 "creationTimestamp": body["status"]["lastSeen"]})
        items.append(body)
    return items


def run(cmd: list[str]) -> tuple[float, int, str]:
    """(seconds, peak RSS in KiB, stdout) of one fresh process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:3]} failed: {err.decode()[-500:]}")
    return seconds, usage.ru_maxrss, out.decode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=10000)
    ap.add_argument("--pods", type=int, default=500)
    ap.add_argument("--namespaces", type=int, default=40)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    items = make_items(args.items, args.pods, args.namespaces)
    body = {"apiVersion": "coredump-webhook.io/v1alpha1", "kind": "CoreDumpList", "items": items,
            "metadata": {"resourceVersion": "999999", "continue": ""}}
    size = len(json.dumps(body))
    with FakeApiServer() as server, tempfile.TemporaryDirectory() as tmp:
        server.route("GET", "/apis/coredump-webhook.io/v1alpha1/coredumps", Recorded(200, body))
        kc = server.kubeconfig(Path(tmp) / "kubeconfig")
        cases = {
            "raw": [str(PYTHON), "-c", RAW, str(kc)],
            "list": [str(COREDUMP), "list", "-A", "--kubeconfig", str(kc)],
            "group": [str(COREDUMP), "list", "-A", "--group", "--kubeconfig", str(kc)],
            "page": [str(PYTHON), "-c", PAGE, server.url],
        }
        results: dict[str, tuple[float, int]] = {}
        for name, cmd in cases.items():
            runs = [run(cmd) for _ in range(args.repeat)]
            results[name] = (statistics.median(r[0] for r in runs), max(r[1] for r in runs))
            out = runs[-1][2]
            if name == "raw":
                assert int(out.strip()) == args.items, out[:200]
            elif name == "group":
                groups = len(out.splitlines()) - 1
            elif name == "page":
                assert int(out.strip()) == args.items, out[:200]
            else:
                assert len(out.splitlines()) == args.items + 1
    print(f"{args.items} CoreDumps, {args.pods} pods, {args.namespaces} namespaces; list body {size / 1e6:.1f} MB;"
          f" {groups} signature groups; median of {args.repeat} fresh processes")
    print(f"{'case':<8}{'seconds':>10}{'peak RSS MiB':>15}{'time x raw':>12}{'RSS x raw':>11}")
    base_t, base_m = results["raw"]
    for name, (t, m) in results.items():
        print(f"{name:<8}{t:>10.3f}{m / 1024:>15.1f}{t / base_t:>12.2f}{m / base_m:>11.2f}")


if __name__ == "__main__":
    main()
