#!/usr/bin/env python3
"""Node agent ingest benchmark: the real kernel pipe, the agent next to plain `cat`, in one run.

    sudo .venv/bin/python benchmarks/bench_agent_ingest.py [--mib 384] [--rounds 5] [--dir /dev/shm]

Every comparison alternates the two sides round by round (so the machine's mood hits both
alike) and prints best and median of each side, the ratio, the target and OK/MISS:

1. ingest of a synthetic core (a process filling memory with text, random and zero pages, then
   killed by SIGSEGV) through core_pattern into `coredump agent run` (uncompressed, node location)
   versus a `cat > file` pipe helper writing to the same filesystem (target >= 0.9x);
2. the agent with zstd versus a `pigz -p2` pipe helper: speed (target >= 3x) and size (<= 1x);
3. crash-to-reap latency of a small core (`sleep`), agent versus `cat` (target <= +30 ms);
4. the agent's peak RSS (VmHWM, reset between measurements) for two core sizes: it must be
   flat and <= 128 MiB;
5. where the time goes: the same real pipe into an in-process agent server whose handler only
   reads, or reads and writes, or runs the crash path's ``copy_core`` (hash, holes, limits),
   next to cat; and each stage alone in memory (pipe read, zero detection, sparse write,
   sha256, zstd) in MB/s, with the bound the single-threaded sha256 puts on the ingest.

Throughput is core bytes / (SIGSEGV sent -> the parent's waitpid returns): with core_pipe_limit > 0
the kernel reaps the process only once the helper side has consumed and closed the pipe.

Needs root; takes the test suite's kernel lock (tests/suite_support.py ``kernel_settings_guard``) and
restores every kernel setting it touches, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.suite_support import kernel_settings_guard  # noqa: E402  (the suite's lock and restore)

CORE_PATTERN = "/proc/sys/kernel/core_pattern"
CORE_PIPE_LIMIT = "/proc/sys/kernel/core_pipe_limit"

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

TARGET_INGEST = 0.9
TARGET_ZSTD_SPEED = 3.0
TARGET_ZSTD_SIZE = 1.0
TARGET_EXTRA_MS = 30.0
TARGET_RSS_MIB = 128
OPTIONAL_FLAGS: list[str] = []


def write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value + "\n")


def read(path: str) -> str:
    return Path(path).read_text().rstrip("\n")


def _unlimited_core() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (-1, -1))  # %c is honoured for unregistered processes


def crash_big(mib: int) -> float:
    """Seconds from SIGSEGV to reap for a ~mib MiB core."""
    p = subprocess.Popen([sys.executable, "-c", CRASHER, str(mib)], stdout=subprocess.PIPE,
                         preexec_fn=_unlimited_core)
    assert p.stdout is not None
    assert p.stdout.readline().strip() == b"ready"
    t0 = time.perf_counter()
    os.kill(p.pid, signal.SIGSEGV)
    p.wait()
    took = time.perf_counter() - t0
    p.stdout.close()
    assert p.returncode == -signal.SIGSEGV, p.returncode
    return took


def crash_small() -> float:
    p = subprocess.Popen(["sleep", "60"], preexec_fn=_unlimited_core)
    time.sleep(0.05)
    t0 = time.perf_counter()
    os.kill(p.pid, signal.SIGSEGV)
    p.wait()
    return time.perf_counter() - t0


def wait_for(cond: Callable[[], object], timeout: float = 60.0) -> None:
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


def optional_flags() -> list[str]:
    """Background analysis off, where the agent has it: unwinding the previous 400 MiB core would
    compete with the next round (it runs after the reap, so it is not part of the crash path)."""
    help_text = subprocess.run([sys.executable, "-m", "webhook.cli", "agent", "run", "--help"], cwd=str(REPO),
                               capture_output=True, text=True).stdout
    return [flag for flag in ("--no-signatures", "--no-save-binaries") if flag in help_text]


def start_agent(host: Path, helper: Path, compression: str, log_path: Path) -> subprocess.Popen:
    args = [
        sys.executable, "-m", "webhook.cli", "agent", "run", "--host-dir", str(host),
        "--helper-binary", str(helper), "--metrics-bind", "", "--unregistered", "node",
        "--compression", compression, "--rate-limit-count", "1000000", "--no-events",
        "--keep-free-bytes", str(256 << 20), "--max-concurrent-dumps", "2", "--log-level", "WARNING",
        *OPTIONAL_FLAGS,
    ]
    with open(log_path, "wb") as log:
        p = subprocess.Popen(args, cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=log)
    wait_for(lambda: read(CORE_PATTERN).startswith(f"|{host}/coredump-helper") or p.poll() is not None)
    if p.poll() is not None:
        raise RuntimeError(f"agent exited {p.returncode}: {log_path.read_text()[-2000:]}")
    return p


def stop_agent(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(60)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def vm(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reset_peak(pid: int) -> None:
    """Reset VmHWM to the current RSS (clear_refs "5", Linux >= 4.0)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def xxh128_file(path: Path) -> str:
    import xxhash

    d = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            d.update(chunk)
    return d.hexdigest()


def sha256_file(path: Path) -> str:
    d = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            d.update(chunk)
    return d.hexdigest()


def helper_script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return f"|{path} %P %t"


class Table:
    """Rows of: what, agent side, reference side, ratio, target, verdict."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, ...]] = []
        self.data: dict[str, object] = {}

    def add(self, what: str, agent: str, ref: str, ratio: str = "", target: str = "", ok: bool | None = None) -> None:
        verdict = "" if ok is None else ("OK" if ok else "MISS")
        self.rows.append((what, agent, ref, ratio, target, verdict))

    def print(self) -> None:
        head = ("measure", "agent", "reference", "ratio", "target", "")
        widths = [max(len(r[i]) for r in [head, *self.rows]) for i in range(len(head))]
        for r in [head, *self.rows]:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip())


def mbps(size: int, seconds: float) -> float:
    return size / seconds / 1e6


def pair(size: int, a: list[float], b: list[float]) -> tuple[str, str, float, float]:
    """'best / median MB/s' of both sides and the two ratios (speed a / speed b)."""
    fa = f"{mbps(size, min(a)):.0f} / {mbps(size, statistics.median(a)):.0f} MB/s"
    fb = f"{mbps(size, min(b)):.0f} / {mbps(size, statistics.median(b)):.0f} MB/s"
    return fa, fb, min(b) / min(a), statistics.median(b) / statistics.median(a)


# --- where the time goes ------------------------------------------------------------------------
def pipe_stages(work: Path, helper: Path, mib: int, rounds: int, cat_pattern: str,
                cat_out: Path) -> dict[str, list[float]]:
    """The real kernel pipe into an in-process AgentServer whose handler does one thing."""
    from prometheus_client import CollectorRegistry

    from webhook.agent import install, pipe_source, stream
    from webhook.agent.server import AgentServer, ServerOutcome
    from webhook.agent.settings import AgentSettings

    out = work / "stage.core"

    def read_only(fd: int) -> int:
        buf, n = bytearray(stream.CHUNK), 0
        pipe_source.enlarge_pipe(fd)
        while k := os.readv(fd, [buf]):
            n += k
        return n

    def plain_copy(fd: int) -> int:
        buf, n = bytearray(stream.CHUNK), 0
        view = memoryview(buf)
        pipe_source.enlarge_pipe(fd)
        dst = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            while k := os.readv(fd, [buf]):
                os.write(dst, view[:k])
                n += k
        finally:
            os.close(dst)
        return n

    def copy_core(fd: int) -> int:
        dst = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            r = stream.copy_core(fd, dst, stream.StreamLimits(deadline=time.monotonic() + 600))
        finally:
            os.close(dst)
        assert r.complete, r
        return r.size

    kinds: dict[str, Callable[[int], int]] = {
        "read only (pipe -> buffer)": read_only,
        "read + write (plain copy)": plain_copy,
        "copy_core (+holes +sha256)": copy_core,
    }
    current: dict[str, Callable[[int], int]] = {}

    def handler(request: object, fd: int) -> ServerOutcome:
        return ServerOutcome("written", "", str(out), current["fn"](fd))

    settings = AgentSettings(host_dir=str(work / "stage-host"), helper_binary=str(helper), metrics_bind="",
                             spool_drain_interval_seconds=3600)
    server = AgentServer(settings, handler, request_factory=lambda argv, spooled: argv,
                         registry=CollectorRegistry())
    server.start()
    times: dict[str, list[float]] = {"cat": []}
    try:
        pattern = install.install(settings).applied["kernel.core_pattern"]
        for _ in range(rounds):
            clear(cat_out)
            write(CORE_PATTERN, cat_pattern)
            times["cat"].append(crash_big(mib))
            clear(cat_out)
            write(CORE_PATTERN, pattern)
            for name, fn in kinds.items():
                current["fn"] = fn
                times.setdefault(name, []).append(crash_big(mib))
                out.unlink(missing_ok=True)
    finally:
        server.stop()
        install.uninstall(settings)
    return times


def memory_stages(directory: Path, mib: int = 96) -> dict[str, float]:
    """Each stage of the copy alone, in memory, on this machine: MB/s over the core's mix."""
    import zstandard

    from webhook.agent import core_sink, pipe_source, stream

    part = (mib << 20) // 3
    line = b"core dump benchmark: the quick brown fox jumps over the lazy dog 0123456789 ABCDEF\n"
    data = bytearray((line * (part // len(line) + 1))[:part] + os.urandom(part) + bytes(part))
    size = len(data)
    chunks = [bytearray(data[i:i + stream.CHUNK]) for i in range(0, size, stream.CHUNK)]
    res: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], None]) -> None:
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        res[name] = mbps(size, best)

    def pipe_read() -> None:
        r, w = os.pipe()
        pipe_source.enlarge_pipe(r)
        buf = bytearray(stream.CHUNK)

        def feed() -> None:
            for c in chunks:
                os.write(w, c)
            os.close(w)

        t = threading.Thread(target=feed)
        t.start()
        while os.readv(r, [buf]):
            pass
        t.join()
        os.close(r)

    def zero_detect() -> None:
        for i, c in enumerate(chunks):
            stream.zero_runs(c, len(c), i * stream.CHUNK)

    target = directory / "stage-write"

    def plain_write() -> None:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        for c in chunks:
            os.write(fd, c)
        os.close(fd)

    def sparse_write() -> None:  # zero detection included: what core_sink.Sink.put does
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        sink = core_sink.Sink(fd, stream.StreamLimits())
        for c in chunks:
            sink.put(c, len(c))
        sink.finish()
        os.close(fd)

    def sha256() -> None:
        d = hashlib.sha256()
        for c in chunks:
            d.update(c)

    def zstd(threads: int) -> Callable[[], None]:
        def run() -> None:
            cobj = zstandard.ZstdCompressor(level=1, threads=threads, write_checksum=True).compressobj()
            for c in chunks:
                cobj.compress(c)
            cobj.flush()
        return run

    timed("pipe read (thread -> pipe -> buffer)", pipe_read)
    timed("zero-block detection (zero_runs)", zero_detect)
    timed(f"write, plain ({directory})", plain_write)
    timed(f"write, sparse incl. detection ({directory})", sparse_write)
    timed("sha256 (hashlib, one thread)", sha256)
    timed("zstd -1, in the calling thread", zstd(0))
    timed("zstd -1, 2 worker threads", zstd(2))
    target.unlink(missing_ok=True)
    return res


# --- the run ------------------------------------------------------------------------------------
def run(opts: argparse.Namespace, work: Path, table: Table) -> None:
    bins = work / "bin"
    subprocess.run(["sh", str(REPO / "webhook/native/build.sh"), str(bins)], check=True, capture_output=True)
    helper = bins / "coredump-helper"
    host = work / "host"
    cat_out, pigz_out = work / "cat", work / "pigz"
    cat_pattern = helper_script(work / "cat-helper", f'exec cat > "{cat_out}/core.$1.$2"')
    pigz_pattern = helper_script(work / "pigz-helper", f'exec pigz -p2 > "{pigz_out}/core.$1.$2.gz"')
    agent_cores = host / "cores"
    data = table.data
    write(CORE_PIPE_LIMIT, "16")

    # 1. large ingest, alternating cat / agent; 4. peak RSS at two core sizes
    agent = start_agent(host, helper, "none", work / "agent.log")
    try:
        agent_pattern = read(CORE_PATTERN)
        data["agent_rss_idle_mib"] = round(vm(agent.pid)["VmRSS"], 1)
        reset_peak(agent.pid)
        cat_t, agent_t, agent_cpu, size = [], [], [], 0
        for i in range(opts.rounds):
            clear(cat_out)
            write(CORE_PATTERN, cat_pattern)
            cat_t.append(crash_big(opts.mib))
            (f,) = files(cat_out)
            size = f.stat().st_size
            clear(cat_out)
            clear(agent_cores)
            write(CORE_PATTERN, agent_pattern)
            cpu0 = cpu_seconds(agent.pid)
            agent_t.append(crash_big(opts.mib))
            agent_cpu.append(cpu_seconds(agent.pid) - cpu0)
            wait_for(lambda: files(agent_cores))
            (g,) = files(agent_cores)
            assert g.stat().st_size == size, (g, g.stat().st_size, size)
            if i == 0:  # the file is the core its metadata describes
                wait_for(lambda g=g: Path(str(g) + ".json").exists())
                meta = json.loads(Path(str(g) + ".json").read_text())
                assert meta["digest"] == "xxh128:" + xxh128_file(g) and meta["size"] == size and not meta["truncated"], meta
                data["agent_disk_bytes"] = g.stat().st_blocks * 512
            clear(agent_cores)
        rss_big = vm(agent.pid)["VmHWM"]
        reset_peak(agent.pid)
        clear(agent_cores)
        crash_big(opts.small_mib)
        rss_small = vm(agent.pid)["VmHWM"]
        clear(agent_cores)

        # 3. small-core latency, alternating
        cat_l, agent_l = [], []
        for _ in range(opts.small):
            write(CORE_PATTERN, cat_pattern)
            cat_l.append(crash_small())
            write(CORE_PATTERN, agent_pattern)
            agent_l.append(crash_small())
        clear(cat_out)
        clear(agent_cores)
    finally:
        stop_agent(agent)

    data["core_bytes"] = size
    a, c, best, med = pair(size, agent_t, cat_t)
    table.add(f"1. ingest {size / 2**20:.0f} MiB, uncompressed (best / median of {opts.rounds})", a,
              f"cat: {c}", f"{best:.2f}x / {med:.2f}x", f">= {TARGET_INGEST}x (median)", med >= TARGET_INGEST)
    data.update(ingest_ratio_best=round(best, 3), ingest_ratio_median=round(med, 3),
                agent_s=[round(t, 3) for t in agent_t], cat_s=[round(t, 3) for t in cat_t])
    extra = (statistics.median(agent_l) - statistics.median(cat_l)) * 1000
    table.add(f"3. crash-to-reap, small core (median of {opts.small})",
              f"{statistics.median(agent_l) * 1000:.1f} ms", f"cat: {statistics.median(cat_l) * 1000:.1f} ms",
              f"+{extra:.1f} ms", f"<= +{TARGET_EXTRA_MS:.0f} ms", extra <= TARGET_EXTRA_MS)
    data.update(reap_ms_agent=round(statistics.median(agent_l) * 1000, 1),
                reap_ms_cat=round(statistics.median(cat_l) * 1000, 1))
    flat = abs(rss_big - rss_small) <= 16
    table.add(f"4. agent peak RSS, {opts.mib} MiB vs {opts.small_mib} MiB core", f"{rss_big:.0f} MiB",
              f"{rss_small:.0f} MiB", f"{rss_big - rss_small:+.0f} MiB",
              f"<= {TARGET_RSS_MIB} MiB, flat", rss_big <= TARGET_RSS_MIB and flat)
    data.update(rss_mib_big=round(rss_big, 1), rss_mib_small=round(rss_small, 1))

    # 2. zstd agent vs pigz -p2
    if not opts.skip_zstd:
        agent = start_agent(host, helper, "zstd", work / "agent-zstd.log")
        try:
            zpattern = read(CORE_PATTERN)
            reset_peak(agent.pid)
            pigz_t, zstd_t, pigz_size, zstd_size = [], [], 0, 0
            for _ in range(max(1, opts.rounds - 2)):
                clear(pigz_out)
                write(CORE_PATTERN, pigz_pattern)
                pigz_t.append(crash_big(opts.mib))
                wait_for(lambda: files(pigz_out))
                (f,) = files(pigz_out)
                pigz_size = f.stat().st_size
                clear(pigz_out)
                clear(agent_cores)
                write(CORE_PATTERN, zpattern)
                zstd_t.append(crash_big(opts.mib))
                wait_for(lambda: files(agent_cores))
                (g,) = files(agent_cores)
                zstd_size = g.stat().st_size
                clear(agent_cores)
            zrss = vm(agent.pid)["VmHWM"]
        finally:
            stop_agent(agent)
        a, p, best, med = pair(size, zstd_t, pigz_t)
        table.add(f"2. ingest with zstd (best / median of {len(zstd_t)})", a, f"pigz -p2: {p}",
                  f"{best:.2f}x / {med:.2f}x", f">= {TARGET_ZSTD_SPEED:.0f}x (median)", med >= TARGET_ZSTD_SPEED)
        table.add("2. compressed size", f"{zstd_size / 2**20:.1f} MiB", f"pigz -p2: {pigz_size / 2**20:.1f} MiB",
                  f"{zstd_size / pigz_size:.3f}x", f"<= {TARGET_ZSTD_SIZE:.0f}x", zstd_size <= pigz_size)
        table.add("4. agent peak RSS with zstd", f"{zrss:.0f} MiB", "", "", f"<= {TARGET_RSS_MIB} MiB",
                  zrss <= TARGET_RSS_MIB)
        data.update(zstd_speed_ratio_median=round(med, 2), zstd_size_ratio=round(zstd_size / pigz_size, 3),
                    zstd_rss_mib=round(zrss, 1))

    # 5. where the time goes
    if not opts.skip_stages:
        times = pipe_stages(work, helper, opts.mib, opts.rounds, cat_pattern, cat_out)
        cat_s = times.pop("cat")
        for name, t in times.items():
            a, c, best, med = pair(size, t, cat_s)
            table.add(f"5. real pipe, in-process handler: {name}", a, f"cat: {c}", f"{best:.2f}x / {med:.2f}x")
            data[f"stage_pipe_{name.split(' (')[0].replace(' ', '_')}_ratio_median"] = round(med, 3)
        mem = memory_stages(Path(opts.dir or tempfile.gettempdir()))
        for name, speed in mem.items():
            table.add(f"5. alone in memory: {name}", f"{speed:.0f} MB/s", "")
        sha = mem["sha256 (hashlib, one thread)"]
        floor = size / (sha * 1e6)
        cat_best = min(cat_t + cat_s)
        bound = cat_best / floor
        table.add("5. sha256 floor: no ingest beats core size / sha256 speed", f"{floor * 1000:.0f} ms",
                  f"cat best (any section): {cat_best * 1000:.0f} ms", f"<= {bound:.2f}x at cat's best")
        table.add("5. agent CPU per large core (user+sys, all threads), median",
                  f"{statistics.median(agent_cpu) * 1000:.0f} ms", f"of which sha256 ~{floor * 1000:.0f} ms")
        data["agent_cpu_ms_median"] = round(statistics.median(agent_cpu) * 1000)
        data["memory_stages_MBps"] = {k: round(v) for k, v in mem.items()}
        data["sha256_bound_ratio_at_cat_best"] = round(bound, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=384, help="synthetic core payload (MiB), >= 384 for the target")
    ap.add_argument("--small-mib", type=int, default=96, help="second core size for the flat-RSS check")
    ap.add_argument("--rounds", type=int, default=5, help="large crashes per side (best and median shown)")
    ap.add_argument("--small", type=int, default=15, help="small crashes per side for the latency")
    ap.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                    help="filesystem for every output (default /dev/shm)")
    ap.add_argument("--skip-zstd", action="store_true")
    ap.add_argument("--skip-stages", action="store_true", help="skip section 5 (where the time goes)")
    opts = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (writes kernel.core_pattern)")
    if not opts.skip_zstd and shutil.which("pigz") is None:
        sys.exit("pigz not installed (apt-get install pigz), or pass --skip-zstd")

    def terminate(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through the guard: kernel settings restored

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    OPTIONAL_FLAGS[:] = optional_flags()
    work = Path(tempfile.mkdtemp(prefix="cdb-", dir=opts.dir))
    table = Table()
    table.data.update(core_payload_mib=opts.mib, output_dir=str(opts.dir), cpus=os.cpu_count(),
                      agent_flags=OPTIONAL_FLAGS,
                      loadavg_before=os.getloadavg()[0])
    print(f"waiting for the kernel lock; output under {work}", file=sys.stderr)
    try:
        with kernel_settings_guard():
            print("running (a few minutes)...", file=sys.stderr)
            run(opts, work, table)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table.data["loadavg_after"] = os.getloadavg()[0]
    table.print()
    print(json.dumps(table.data))


if __name__ == "__main__":
    main()
