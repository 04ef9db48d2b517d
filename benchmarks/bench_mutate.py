"""Benchmark: POST /mutate over TLS with keep-alive, annotated pod vs. the no-op path.

Starts a real ``coredump serve`` (gunicorn, gthread) on 127.0.0.1 with generated certificates,
then sends a realistic pod (3 containers, ~7 KB of JSON, every container with a command so no
registry is asked) with the core-pattern annotation and the same pod without it, alternating
in blocks on the same keep-alive connection. Prints requests/s, p50, p99 and the ratio
p50(mutate)/p50(no-op), client-side and as the server measured itself (its log lines).

Targets (issue 2): p50 within 1.5x of the no-op path, p99 under 20 ms on a 2-core machine.

    .venv/bin/python benchmarks/bench_mutate.py [--requests 3000] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from webhook import constants as C  # noqa: E402
from webhook.certs import generate as gen  # noqa: E402

COREDUMP = REPO / ".venv" / "bin" / "coredump"


def container(name: str, image: str, port: int) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "command": [f"/usr/local/bin/{name}"],
        "args": ["--config=/etc/app/config.yaml", f"--listen=:{port}", "--log-format=json", "--verbose=2"],
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"},
                  {"name": "metrics", "containerPort": port + 1000, "protocol": "TCP"}],
        "env": [{"name": f"{name.upper()}_SETTING_{i}", "value": f"value-{i}-" + "x" * 12} for i in range(6)]
        + [{"name": "POD_IP", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}}],
        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/app", "readOnly": True},
            {"name": "kube-api-access-7xq2p", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
             "readOnly": True},
        ],
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": port, "scheme": "HTTP"}, "initialDelaySeconds": 10,
                          "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": port, "scheme": "HTTP"}, "timeoutSeconds": 1,
                           "periodSeconds": 5, "successThreshold": 1, "failureThreshold": 3},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
    }


def realistic_pod(annotated: bool) -> dict[str, Any]:
    annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": "9080",
                   "kubectl.kubernetes.io/restartedAt": "2024-06-11T09:12:44Z"}
    if annotated:
        annotations[C.ANN_PATTERN] = "/data/dump-a/core-%E-%p-%t"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "checkout-7d9c6b5f8-",
            "namespace": "shop",
            "labels": {"app.kubernetes.io/name": "checkout", "app.kubernetes.io/part-of": "shop",
                       "pod-template-hash": "7d9c6b5f8", "version": "v2.14.3"},
            "annotations": annotations,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "checkout-7d9c6b5f8",
                                 "uid": "f3b1c2d4-5e6f-4a7b-8c9d-0e1f2a3b4c5d", "controller": True,
                                 "blockOwnerDeletion": True}],
        },
        "spec": {
            "containers": [container("checkout", "registry.example.com/shop/checkout:v2.14.3", 8080),
                           container("envoy", "registry.example.com/mesh/envoy:v1.30.1", 15001),
                           container("log-shipper", "registry.example.com/ops/fluent-bit:3.0.7", 2020)],
            "volumes": [
                {"name": "config", "configMap": {"name": "checkout-config", "defaultMode": 420}},
                {"name": "kube-api-access-7xq2p", "projected": {"defaultMode": 420, "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1",
                                                                                  "fieldPath": "metadata.namespace"}}]}},
                ]}},
            ],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "checkout",
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001},
            "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                "weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname", "labelSelector": {
                    "matchLabels": {"app.kubernetes.io/name": "checkout"}}}}]}},
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
                 "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
                 "tolerationSeconds": 300},
            ],
            "priority": 0,
            "enableServiceLinks": True,
            "preemptionPolicy": "PreemptLowerPriority",
        },
    }


def review(obj: dict[str, Any], uid: str) -> bytes:
    return json.dumps({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                    "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                    "namespace": "shop", "operation": "CREATE",
                    "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                                 "uid": "0b1c2d3e-4f5a-6b7c-8d9e-0f1a2b3c4d5e",
                                 "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system",
                                            "system:authenticated"]},
                    "object": obj, "oldObject": None, "dryRun": False,
                    "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}},
    }).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connect(port: int, ctx: ssl.SSLContext) -> http.client.HTTPSConnection:
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=30)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def post(conn: http.client.HTTPSConnection, body: bytes) -> float:
    start = time.perf_counter()
    conn.request("POST", "/mutate", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    elapsed = time.perf_counter() - start
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {data[:200]!r}")
    return elapsed


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def summarize(name: str, lat: list[float], wall: float) -> dict[str, float]:
    return {"name": name, "n": len(lat), "rps": len(lat) / wall, "p50": pct(lat, 50) * 1000,
            "p99": pct(lat, 99) * 1000, "mean": statistics.fmean(lat) * 1000}


def sequential(port: int, ctx: ssl.SSLContext, bodies: dict[str, bytes], n: int, block: int = 50) -> dict[str, dict]:
    """Alternate blocks of each kind on one keep-alive connection (same conditions for both)."""
    conn = connect(port, ctx)
    lat: dict[str, list[float]] = {k: [] for k in bodies}
    wall: dict[str, float] = {k: 0.0 for k in bodies}
    try:
        for _ in range(100):  # warm-up
            for body in bodies.values():
                post(conn, body)
        done = 0
        while done < n:
            for kind, body in bodies.items():
                start = time.perf_counter()
                for _ in range(block):
                    lat[kind].append(post(conn, body))
                wall[kind] += time.perf_counter() - start
            done += block
    finally:
        conn.close()
    return {k: summarize(k, lat[k], wall[k]) for k in bodies}


def concurrent(port: int, ctx: ssl.SSLContext, body: bytes, n: int, clients: int) -> dict[str, float]:
    """``clients`` keep-alive connections in threads: throughput of the server."""
    lat: list[float] = []
    lock = threading.Lock()
    per = n // clients

    def run() -> None:
        conn = connect(port, ctx)
        mine = [post(conn, body) for _ in range(per)]
        conn.close()
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return summarize("concurrent", lat, time.perf_counter() - start)


def server_side(log_path: Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"mutate": [], "no-op": []}
    for line in log_path.read_text(errors="replace").splitlines():
        if '"event": "admission"' not in line:
            continue
        rec = json.loads(line)
        out["mutate" if rec.get("patchOps") else "no-op"].append(rec["durationMs"])
    return out


def wait_serving(port: int, ctx: ssl.SSLContext, proc: subprocess.Popen, log_path: Path,
                 timeout: float = 30.0) -> bool:
    """Until `coredump serve` accepts TLS connections; False (its log on stderr) if it died or
    took longer than ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            connect(port, ctx).close()
            return True
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                print(log_path.read_text(), file=sys.stderr)
                return False
            time.sleep(0.1)


@contextlib.contextmanager
def serving_webhook(tmp: str, *flags: str, env: dict[str, str] | None = None):
    """`coredump serve` on a free loopback port with a fresh CA (``tmp``/certs), its log in
    ``tmp``/server.log; yields ``(port, TLS context trusting the CA, CA file, log path)``, or None
    when it never served (its log on stderr). Its whole process group is stopped on exit."""
    cert_dir = Path(tmp, "certs")
    gen.write_bundle(gen.generate(), cert_dir)
    port = free_port()
    log_path = Path(tmp, "server.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(COREDUMP), "serve", "--cert-dir", str(cert_dir), "--bind", f"127.0.0.1:{port}", *flags],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        ctx = ssl.create_default_context(cafile=str(cert_dir / "ca.crt"))
        yield (port, ctx, cert_dir / "ca.crt", log_path) if wait_serving(port, ctx, proc, log_path) else None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests of each kind (sequential part)")
    parser.add_argument("--concurrency", type=int, default=4, help="client connections in the throughput part")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()

    mutate_pod, noop_pod = realistic_pod(True), realistic_pod(False)
    bodies = {"mutate": review(mutate_pod, "bench-mutate"), "no-op": review(noop_pod, "bench-noop")}
    pod_size = len(json.dumps(mutate_pod))

    with tempfile.TemporaryDirectory(prefix="coredump-bench-") as tmp, serving_webhook(
            tmp, "--workers", str(args.workers), "--threads", str(args.threads)) as served:
        if served is None:
            return 1
        port, ctx, _ca, log_path = served
        # check the mutation really happens (and that no-op really is one)
        check = connect(port, ctx)
        check.request("POST", "/mutate", body=bodies["mutate"], headers={"Content-Type": "application/json"})
        answer = json.loads(check.getresponse().read())["response"]
        ops = json.loads(base64.b64decode(answer["patch"]))
        check.request("POST", "/mutate", body=bodies["no-op"], headers={"Content-Type": "application/json"})
        assert "patch" not in json.loads(check.getresponse().read())["response"]
        check.close()

        seq = sequential(port, ctx, bodies, args.requests)
        conc = {kind: concurrent(port, ctx, body, args.requests, args.concurrency) for kind, body in bodies.items()}
        srv = server_side(log_path)

    print(f"pod JSON: {pod_size} bytes, 3 containers; review body {len(bodies['mutate'])} bytes; "
          f"patch: {len(ops)} operations, {len(answer.get('warnings', []))} warnings")
    print(f"server: {args.workers} workers x {args.threads} threads (gthread), TLS, keep-alive; "
          f"{os.cpu_count()} CPUs shared with the client")
    print()
    print(f"{'path':<8} {'mode':<22} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for kind in bodies:
        s = seq[kind]
        print(f"{kind:<8} {'1 connection, serial':<22} {s['rps']:>8.0f} {s['p50']:>8.2f} {s['p99']:>8.2f} {s['mean']:>8.2f}")
    for kind in bodies:
        c = conc[kind]
        print(f"{kind:<8} {f'{args.concurrency} connections':<22} {c['rps']:>8.0f} {c['p50']:>8.2f} {c['p99']:>8.2f} {c['mean']:>8.2f}")
    for kind, values in srv.items():
        if values:
            print(f"{kind:<8} {'server-side (log)':<22} {'':>8} {pct(values, 50):>8.2f} {pct(values, 99):>8.2f} "
                  f"{statistics.fmean(values):>8.2f}")
    ratio = seq["mutate"]["p50"] / seq["no-op"]["p50"]
    p99 = seq["mutate"]["p99"]
    print()
    print(f"ratio p50(mutate)/p50(no-op), serial: {ratio:.2f}x (target <= 1.5x): {'OK' if ratio <= 1.5 else 'MISSED'}")
    print(f"p99(mutate), serial: {p99:.2f} ms (target < 20 ms): {'OK' if p99 < 20 else 'MISSED'}")
    cratio = conc["mutate"]["p50"] / conc["no-op"]["p50"]
    print(f"ratio p50(mutate)/p50(no-op), {args.concurrency} connections: {cratio:.2f}x; "
          f"p99(mutate) {conc['mutate']['p99']:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
