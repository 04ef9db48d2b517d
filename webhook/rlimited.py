"""Resource limits a child of the agent sets on itself before it reads anything untrusted.

The agent unwinds every core (webhook/diagnose/unwind.py) inside the agent's own container: a
large or odd core must cost its signature, never the agent its life. The child sets on itself,
before it parses a byte: an address-space cap (RLIMIT_AS: it then fails with "out of memory"
instead of growing the container into its memory limit), a CPU-time cap (RLIMIT_CPU, next to
the caller's wall-clock timeout), no core dump of its own (RLIMIT_CORE 0: a crashing unwinder
is not fed back into the node's core pattern), and the highest OOM score, so that if the
container runs out of memory anyway the kernel picks the child. Set by the child on itself,
not by ``preexec_fn``: the agent is threaded.
"""

from __future__ import annotations

import resource


def apply(memory_bytes: int, cpu_seconds: int) -> None:
    """Limit the calling process (0 = that limit unchanged)."""
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
