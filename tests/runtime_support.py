"""Real container runtimes for the end-to-end crash tests (tests/test_runtime_*.py).

The pod-to-container translation is tests/runc_support.py's (the OCI config a kubelet + runtime
would produce); what changes per runtime is who creates the container from it, and so who its
parent process is and how its cgroup is named:
- pure cgroup v2: runc in a private mount namespace where /sys/fs/cgroup is the cgroup2
  hierarchy alone (:func:`cgroup2_runc`);
- containerd: a daemon of the test's own (temp root/state/socket), driven with ``ctr``, the
  container a child of the real ``containerd-shim-runc-v2``;
- docker: a dockerd of the test's own (no iptables, no bridge), an image loaded from a tar
  built here, ``--cgroup-parent`` shaped like the kubelet's.
Nothing is pulled: images are built from busybox-static and the static wrapper.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tests.conftest import which_or_fail


def cgroup2_runc(workdir: Path) -> str:
    """A ``runc`` that runs in its own mount namespace with cgroup2 mounted at /sys/fs/cgroup:
    on this hybrid host, the same unified hierarchy (/sys/fs/cgroup/unified) seen as a pure v2
    one, so runc's cgroupfs driver places containers with v2 paths only. Every invocation (run,
    state, kill, delete) sees the same hierarchy; the host and the agent see the paths under
    /sys/fs/cgroup/unified and in the ``0::`` line of /proc/<pid>/cgroup."""
    runc = which_or_fail("runc")
    unshare = which_or_fail("unshare")
    script = workdir / "runc-cgroup2"
    script.write_text(
        "#!/bin/sh\n"
        f"exec {unshare} -m --propagation private sh -c "
        "'mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec \"$0\" \"$@\"' "
        f"{runc} \"$@\"\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def cgroup_lines(pid: int) -> dict[str, str]:
    """/proc/<pid>/cgroup as {hierarchy-id:controllers: path}."""
    out = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        hid, controllers, path = line.split(":", 2)
        out[f"{hid}:{controllers}"] = path
    return out


def parent_exe(pid: int) -> str:
    """The executable of ``pid``'s parent process."""
    ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return os.readlink(f"/proc/{ppid}/exe")
