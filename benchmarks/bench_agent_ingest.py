#!/usr/bin/env python3
"""Node agent ingest benchmark: the real kernel pipe, the agent next to plain `cat`, in one run.

    sudo .venv/bin/python benchmarks/bench_agent_ingest.py [--mib 384] [--rounds 3] [--dir /dev/shm]

Prints, side by side (alternating rounds, so the machine's mood hits both equally):
1. ingest of a synthetic core (a process filling memory with text, random and zero pages, then
   killed by SIGSEGV) through core_pattern into `coredump agent run` (uncompressed, node location)
   versus a `cat > file` pipe helper writing to the same filesystem; then the agent with zstd versus
   a `pigz -p2` helper (speed and size);
2. crash-to-reap latency of a small core (`sleep`), agent versus `cat`;
3. the agent's peak RSS (VmHWM) after the large ingests.
Throughput is core bytes / (SIGSEGV sent -> the parent's waitpid returns): with core_pipe_limit > 0
the kernel reaps the process only once the helper side has consumed and closed the pipe.

Needs root; takes the test suite's kernel lock and restores every kernel setting it touches.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SETTINGS = {
    "kernel.core_pattern": "/proc/sys/kernel/core_pattern",
    "kernel.core_pipe_limit": "/proc/sys/kernel/core_pipe_limit",
    "kernel.core_uses_pid": "/proc/sys/kernel/core_uses_pid",
    "fs.suid_dumpable": "/proc/sys/fs/suid_dumpable",
}
KERNEL_LOCK = "/run/lock/coredump-webhook-tests.kernel.lock"  # shared with tests/conftest.py

CRASHER = r"""
import os, signal, sys
mib = int(sys.argv[1])
part = (mib << 20) // 3
line = b"core dump benchmark: the quick brown fox jumps over the lazy dog 0123456789 ABCDEF\n"
text = bytearray((line * (part // len(line) + 1))[:part])
rnd = bytearray(os.urandom(part))
zero = bytearray(part)
for i in range(0, part, 4096):  # fault every zero page in, so it is really mapped
    zero[i] = 0
sys.stdout.write("ready\n"); sys.stdout.flush()
signal.pause()
"""


def write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value + "\n")


def read(path: str) -> str:
    return Path(path).read_text().rstrip("\n")


def crash_big(mib: int) -> float:
    """Seconds from SIGSEGV to reap for a ~mib MiB core."""
    p = subprocess.Popen(
        [sys.executable, "-c", CRASHER, str(mib)],
        stdout=subprocess.PIPE,
        preexec_fn=lambda: __import__("resource").setrlimit(
            __import__("resource").RLIMIT_CORE, (-1, -1)),  # %c honoured for unregistered: unlimited
    )
    assert p.stdout is not None
    assert p.stdout.readline().strip() == b"ready"
    t0 = time.perf_counter()
    os.kill(p.pid, signal.SIGSEGV)
    p.wait()
    took = time.perf_counter() - t0
    assert p.returncode == -signal.SIGSEGV, p.returncode
    return took


def crash_small() -> float:
    p = subprocess.Popen(["sleep", "60"], preexec_fn=lambda: __import__("resource").setrlimit(
        __import__("resource").RLIMIT_CORE, (-1, -1)))
    time.sleep(0.05)
    t0 = time.perf_counter()
    os.kill(p.pid, signal.SIGSEGV)
    p.wait()
    return time.perf_counter() - t0


def wait_for(cond, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.02)


def files(d: Path) -> list[Path]:
    return [p for p in d.rglob("*") if p.is_file() and not p.name.endswith(".json")] if d.exists() else []


def clear(d: Path) -> None:
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True, exist_ok=True)


def start_agent(host: Path, helper: Path, compression: str, log_path: Path) -> subprocess.Popen:
    args = [
        sys.executable, "-m", "webhook.cli", "agent", "run", "--host-dir", str(host),
        "--helper-binary", str(helper), "--metrics-bind", "", "--unregistered", "node",
        "--compression", compression, "--rate-limit-count", "1000000", "--no-events",
        "--keep-free-bytes", str(256 << 20), "--max-concurrent-dumps", "2", "--log-level", "WARNING",
    ]
    log = open(log_path, "wb")
    p = subprocess.Popen(args, cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=log)
    wait_for(lambda: read(SETTINGS["kernel.core_pattern"]).startswith(f"|{host}/coredump-helper"))
    return p


def stop_agent(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGTERM)
    p.wait(60)


def rss(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1]) // 1024
    return out


def transport_only(host: Path, helper: Path, out: Path, mib: int, rounds: int, cat_pattern: str,
                   cat_out: Path) -> tuple[list[float], list[float]]:
    """The helper + socket + fd passing alone: an in-process AgentServer whose handler only
    copies the pipe to a file (no identification, hashing or sparse detection), next to cat."""
    sys.path.insert(0, str(REPO))
    from prometheus_client import CollectorRegistry

    from webhook.agent import install
    from webhook.agent.server import AgentServer, ServerOutcome
    from webhook.agent.settings import AgentSettings

    buf = bytearray(1 << 20)

    def copy(request, fd: int) -> ServerOutcome:
        fcntl.fcntl(fd, 1031, 1 << 20)  # F_SETPIPE_SZ
        dst = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        n = 0
        try:
            while k := os.readv(fd, [buf]):
                os.write(dst, memoryview(buf)[:k])
                n += k
        finally:
            os.close(dst)
        return ServerOutcome("written", "", str(out), n)

    settings = AgentSettings(host_dir=str(host), helper_binary=str(helper), metrics_bind="",
                             spool_drain_interval_seconds=3600)
    server = AgentServer(settings, copy, request_factory=lambda argv, spooled: argv, registry=CollectorRegistry())
    server.start()
    try:
        pattern = install.install(settings).applied["kernel.core_pattern"]
        cat_t, t_t = [], []
        for _ in range(rounds):
            clear(cat_out)
            write(SETTINGS["kernel.core_pattern"], cat_pattern)
            cat_t.append(crash_big(mib))
            clear(cat_out)
            write(SETTINGS["kernel.core_pattern"], pattern)
            t_t.append(crash_big(mib))
            out.unlink()
        return cat_t, t_t
    finally:
        server.stop()
        install.uninstall(settings)


def helper_script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return f"|{path} %P %t"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=384, help="synthetic core payload (MiB)")
    ap.add_argument("--rounds", type=int, default=3, help="large crashes per side (best and median shown)")
    ap.add_argument("--small", type=int, default=15, help="small crashes per side for the latency")
    ap.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                    help="filesystem for every output (default /dev/shm)")
    ap.add_argument("--skip-zstd", action="store_true")
    opts = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (writes kernel.core_pattern)")

    work = Path(tempfile.mkdtemp(prefix="cdb-", dir=opts.dir))
    bins = work / "bin"
    subprocess.run(["sh", str(REPO / "webhook/native/build.sh"), str(bins)], check=True, capture_output=True)
    host = work / "host"
    cat_out, pigz_out = work / "cat", work / "pigz"
    cat_pattern = helper_script(work / "cat-helper", f'exec cat > "{cat_out}/core.$1.$2"')
    pigz_pattern = helper_script(work / "pigz-helper", f'exec pigz -p2 > "{pigz_out}/core.$1.$2.gz"')
    agent_cores = host / "cores"

    os.makedirs(os.path.dirname(KERNEL_LOCK), exist_ok=True)
    lock = open(KERNEL_LOCK, "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    saved = {k: read(v) for k, v in SETTINGS.items()}
    agent = None
    results: dict[str, object] = {"core_payload_mib": opts.mib, "output_dir": str(work)}
    try:
        write(SETTINGS["kernel.core_pipe_limit"], "16")
        agent = start_agent(host, bins / "coredump-helper", "none", work / "agent.log")
        agent_pattern = read(SETTINGS["kernel.core_pattern"])
        base_rss = rss(agent.pid)

        # 1. large ingest, alternating cat / agent
        cat_t, agent_t, size = [], [], 0
        for _ in range(opts.rounds):
            clear(cat_out)
            write(SETTINGS["kernel.core_pattern"], cat_pattern)
            cat_t.append(crash_big(opts.mib))
            (f,) = files(cat_out)
            size = f.stat().st_size
            clear(cat_out)
            clear(agent_cores)
            write(SETTINGS["kernel.core_pattern"], agent_pattern)
            agent_t.append(crash_big(opts.mib))
            wait_for(lambda: files(agent_cores))
            (g,) = files(agent_cores)
            assert g.stat().st_size == size, (g, g.stat().st_size, size)
            results["agent_disk_bytes"] = g.stat().st_blocks * 512
            clear(agent_cores)
        peak = rss(agent.pid)

        # 2. small-core latency, alternating
        cat_l, agent_l = [], []
        for _ in range(opts.small):
            write(SETTINGS["kernel.core_pattern"], cat_pattern)
            cat_l.append(crash_small())
            write(SETTINGS["kernel.core_pattern"], agent_pattern)
            agent_l.append(crash_small())
        clear(cat_out)
        clear(agent_cores)
        stop_agent(agent)
        agent = None

        mb = size / 1e6
        results.update({
            "core_bytes": size,
            "cat_MBps_best": round(mb / min(cat_t), 1), "cat_MBps_median": round(mb / statistics.median(cat_t), 1),
            "agent_MBps_best": round(mb / min(agent_t), 1),
            "agent_MBps_median": round(mb / statistics.median(agent_t), 1),
            "ingest_ratio_agent_vs_cat_median": round(statistics.median(cat_t) / statistics.median(agent_t), 3),
            "small_core_reap_ms_cat_median": round(statistics.median(cat_l) * 1000, 1),
            "small_core_reap_ms_agent_median": round(statistics.median(agent_l) * 1000, 1),
            "small_core_extra_ms_median": round((statistics.median(agent_l) - statistics.median(cat_l)) * 1000, 1),
            "agent_rss_mib_before": base_rss.get("VmRSS"), "agent_peak_rss_mib": peak.get("VmHWM"),
        })

        # 1c. the transport alone (helper, socket, fd passing) next to cat
        t_cat, t_transport = transport_only(work / "thost", bins / "coredump-helper", work / "transport.core",
                                            opts.mib, opts.rounds, cat_pattern, cat_out)
        results.update({
            "transport_only_MBps_median": round(mb / statistics.median(t_transport), 1),
            "transport_ratio_vs_cat_median": round(statistics.median(t_cat) / statistics.median(t_transport), 3),
        })

        # 1b. zstd agent vs pigz -p2
        if not opts.skip_zstd:
            agent = start_agent(host, bins / "coredump-helper", "zstd", work / "agent-zstd.log")
            zpattern = read(SETTINGS["kernel.core_pattern"])
            pigz_t, zstd_t, pigz_size, zstd_size = [], [], 0, 0
            for _ in range(max(1, opts.rounds - 1)):
                clear(pigz_out)
                write(SETTINGS["kernel.core_pattern"], pigz_pattern)
                pigz_t.append(crash_big(opts.mib))
                wait_for(lambda: files(pigz_out))
                (f,) = files(pigz_out)
                pigz_size = f.stat().st_size
                clear(pigz_out)
                clear(agent_cores)
                write(SETTINGS["kernel.core_pattern"], zpattern)
                zstd_t.append(crash_big(opts.mib))
                wait_for(lambda: files(agent_cores))
                (g,) = files(agent_cores)
                zstd_size = g.stat().st_size
                clear(agent_cores)
            zpeak = rss(agent.pid)
            stop_agent(agent)
            agent = None
            results.update({
                "pigz_p2_MBps_median": round(mb / statistics.median(pigz_t), 1),
                "agent_zstd_MBps_median": round(mb / statistics.median(zstd_t), 1),
                "zstd_speed_ratio_vs_pigz": round(statistics.median(pigz_t) / statistics.median(zstd_t), 2),
                "pigz_bytes": pigz_size, "agent_zstd_bytes": zstd_size,
                "zstd_size_ratio_vs_pigz": round(zstd_size / pigz_size, 3),
                "agent_zstd_peak_rss_mib": zpeak.get("VmHWM"),
            })
    finally:
        if agent is not None:
            stop_agent(agent)
        for k, path in SETTINGS.items():
            write(path, saved[k])
        assert {k: read(v) for k, v in SETTINGS.items()} == saved
        lock.close()
        shutil.rmtree(work, ignore_errors=True)

    width = max(len(k) for k in results)
    for k, v in results.items():
        print(f"{k:<{width}}  {v}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
