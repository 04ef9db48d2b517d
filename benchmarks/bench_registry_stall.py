"""Benchmark: pods that need no registry look-up, while other clients' registries stall (issue 12, 4).

Starts a real ``coredump serve`` (gunicorn, gthread, TLS) on 127.0.0.1 and two registries of its
own on loopback: one that accepts connections and never answers (a stalled registry), and one
that answers every request at once with 404 (the same traffic without the stall). A probe
client sends annotated pods whose containers all have a command (no look-up needed) on one
keep-alive connection and measures their latency, first alone, then while N clients (N = 1, 8,
32) each create pods whose image lives on the stalled registry (a fresh tag every time, so no
cache helps; each client pauses ``--pace`` seconds between pods, as a controller would), and
the same with the answering registry. The phases run in ``--rounds`` rounds, each starting with
its own unloaded run (so a shared machine's drift hits every phase alike); each phase's samples
are pooled over the rounds. Prints p50/p99 of the probe in every phase and the ratios to the
unloaded run, all measured side by side in one run.

Target: p99 of the probe pods within 2x of the unloaded p99 while registries stall.

    .venv/bin/python benchmarks/bench_registry_stall.py [--probes 300] [--pace 0.05]
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import multiprocessing as mp
import os
import socket
import ssl
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_mutate import connect, pct, post, realistic_pod, review, serving_webhook  # noqa: E402

COREDUMP = REPO / ".venv" / "bin" / "coredump"


def lookup_pod(registry: str) -> dict[str, Any]:
    """An annotated pod with one container without a command, its image on ``registry``."""
    pod = realistic_pod(True)
    app = pod["spec"]["containers"][0]
    del app["command"]
    app["image"] = f"{registry}/stall/app:{uuid.uuid4().hex[:12]}"
    return pod


class Answering(http.server.ThreadingHTTPServer):
    daemon_threads = True


def answering_registry() -> tuple[Answering, str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            body = b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}'
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(OSError):  # the webhook gave up on it: fine
                self.wfile.write(body)

    srv = Answering(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"127.0.0.1:{srv.server_address[1]}"


def load_process(port: int, cafile: str, registry: str, n: int, pace: float, stop, counter) -> None:
    """N load clients (threads) in a process of their own, so they do not slow the probe's client."""
    ctx = ssl.create_default_context(cafile=cafile)

    def run() -> None:
        conn = connect(port, ctx)
        while not stop.is_set():
            try:
                post(conn, review(lookup_pod(registry), "bench-load"))
                with counter.get_lock():
                    counter.value += 1
            except Exception:  # noqa: BLE001 - a dropped connection: reconnect and go on
                conn.close()
                conn = connect(port, ctx)
            stop.wait(pace)
        conn.close()

    threads = [threading.Thread(target=run, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def loaded_phase(port: int, ctx: ssl.SSLContext, cafile: Path, registry: str, n: int, args: Any,
                 kind: str) -> tuple[list[float], int]:
    """The probe while N clients create pods whose images live on ``registry``."""
    stop, counter = mp.Event(), mp.Value("i", 0)
    loader = mp.Process(target=load_process, args=(port, str(cafile), registry, n, args.pace, stop, counter),
                        daemon=True)
    loader.start()
    time.sleep(2.5 if kind == "stalled" else 0.5)  # let the stalled look-ups pile up
    lat = probe(port, ctx, args.probes)
    stop.set()
    loader.join(15)
    time.sleep(2.5)  # let the stalled look-ups of this phase run out
    return lat, counter.value


def probe(port: int, ctx: ssl.SSLContext, n: int) -> list[float]:
    body = review(realistic_pod(True), "bench-probe")
    conn = connect(port, ctx)
    try:
        for _ in range(20):
            post(conn, body)
        return [post(conn, body) * 1000 for _ in range(n)]
    finally:
        conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probes", type=int, default=300, help="probe requests per phase and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pace", type=float, default=0.05, help="seconds each load client waits between pods")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    counts_of = [int(c) for c in args.clients.split(",")]

    stalled = socket.socket()
    stalled.bind(("127.0.0.1", 0))
    stalled.listen(1024)  # the kernel completes handshakes; nobody ever reads or answers
    stalled_host = f"127.0.0.1:{stalled.getsockname()[1]}"
    answering, answering_host = answering_registry()
    pooled: dict[tuple[str, int], tuple[list[float], int]] = {}

    def record(kind: str, n: int, lat: list[float], done: int) -> None:
        old = pooled.get((kind, n), ([], 0))
        pooled[(kind, n)] = (old[0] + lat, old[1] + done)

    with tempfile.TemporaryDirectory(prefix="coredump-bench-") as tmp:
        try:
            with serving_webhook(
                    tmp, "--workers", str(args.workers), "--threads", str(args.threads),
                    "--registry-insecure", "127.0.0.1", "--registry-allow-network", "127.0.0.1/32",
                    "--registry-negative-ttl", "0", "--log-level", "warning",
                    env={**os.environ, "KUBECONFIG": str(Path(tmp, "none"))}) as served:
                if served is None:
                    return 1
                port, ctx, ca_file, _log = served
                for _ in range(args.rounds):
                    record("unloaded", 0, probe(port, ctx, args.probes), 0)
                    for n in counts_of:
                        for kind, registry in (("stalled", stalled_host), ("answering", answering_host)):
                            lat, done = loaded_phase(port, ctx, ca_file, registry, n, args, kind)
                            record(kind, n, lat, done)
        finally:
            stalled.close()
            answering.shutdown()

    results = [(kind, n, lat, done) for (kind, n), (lat, done) in pooled.items()]
    base = pooled[("unloaded", 0)][0]
    base_p50, base_p99 = pct(base, 50), pct(base, 99)
    print(f"server: {args.workers} workers x {args.threads} threads (+ look-up threads), TLS, keep-alive; "
          f"{os.cpu_count()} CPUs shared with the clients; load clients pause {args.pace}s between pods")
    print(f"probe: annotated 3-container pod, every container with a command (no look-up); "
          f"{args.probes} per phase and round, {args.rounds} rounds pooled")
    print()
    print(f"{'registry':<10} {'clients':>7} {'load pods':>9} {'p50 ms':>8} {'p99 ms':>8} {'p50 x':>7} {'p99 x':>7}")
    worst = 0.0
    for kind, n, lat, done in results:
        p50, p99 = pct(lat, 50), pct(lat, 99)
        if kind == "stalled":
            worst = max(worst, p99 / base_p99)
        print(f"{kind:<10} {n:>7} {done:>9} {p50:>8.2f} {p99:>8.2f} {p50 / base_p50:>7.2f} {p99 / base_p99:>7.2f}")
    print()
    by = {(kind, n): lat for kind, n, lat, _ in results}
    for n in counts_of:
        stalled, answering = by[("stalled", n)], by[("answering", n)]
        print(f"N={n:<3} p99 stalled / p99 answering: {pct(stalled, 99) / pct(answering, 99):.2f}x "
              f"(the stall's own effect; the rest is the load's CPU on a shared machine)")
    print(f"worst p99 while registries stall / unloaded p99: {worst:.2f}x (target <= 2x): {'OK' if worst <= 2 else 'MISS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
