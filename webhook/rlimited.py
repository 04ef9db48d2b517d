"""Run a program under resource limits of its own: ``python -m webhook.rlimited AS CPU -- PROG ARGS``.

The agent runs gdb over every core, inside the agent's own container: a large or odd core must
cost gdb its signature, never the agent its life. This tiny launcher sets, in the child only and
before ``exec`` (no ``preexec_fn`` in a threaded agent), an address-space cap (RLIMIT_AS: gdb
then fails with "memory exhausted" instead of growing the container into its memory limit), a
CPU-time cap (RLIMIT_CPU, next to the caller's wall-clock timeout), no core dump of its own
(RLIMIT_CORE 0: a gdb that crashes is not fed back into the node's core pattern), and the
highest OOM score, so that if the container runs out of memory anyway the kernel picks gdb.
"""

from __future__ import annotations

import os
import resource
import sys


def command(cmd: list[str], memory_bytes: int, cpu_seconds: int) -> list[str]:
    """``cmd`` wrapped so it runs with these limits (0 = that limit unchanged)."""
    return [sys.executable, "-m", "webhook.rlimited", str(int(memory_bytes)), str(int(cpu_seconds)), "--", *cmd]


def apply(memory_bytes: int, cpu_seconds: int) -> None:
    """Limit the calling process (about to exec)."""
    if memory_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    if cpu_seconds > 0:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 5))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass  # raising one's own score needs no privilege; a missing /proc is no reason to fail


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print("usage: python -m webhook.rlimited AS_BYTES CPU_SECONDS -- PROGRAM [ARGS...]", file=sys.stderr)
        return 2
    apply(int(argv[0]), int(argv[1]))
    os.execvp(argv[3], argv[3:])
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
