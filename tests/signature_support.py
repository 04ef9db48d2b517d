"""What the signature tests compare the unwinder with: gdb's own backtrace of the same core."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.suite_support import which_or_fail
from webhook.diagnose.signature import Frame

_FRAME = re.compile(r"^#(?P<index>\d+)\s+(?:(?P<address>0x[0-9a-fA-F]+) in )?(?P<rest>.*)$")
_FROM = re.compile(r"\) from (?P<library>\S+)\s*$")


def libraries(exe: Path) -> list[str]:
    """The shared libraries ``exe`` loads on this host (``ldd``): a core of this host's names its
    frames from them, as the agent's are named from the files the process mapped."""
    out = subprocess.run(["ldd", str(exe)], capture_output=True, text=True, check=True).stdout
    return [m[1] for m in re.finditer(r"=> (/\S+)", out)]


def gdb_frames(exe: Path, core: Path) -> list[Frame]:
    """gdb's ``bt`` of the crashing thread, with this host's libraries and no separate debug files."""
    gdb = which_or_fail("gdb")
    out = subprocess.run([gdb, "-batch", "-nx", "-iex", "set debug-file-directory", "-ex", "set width 0",
                          "-ex", "bt", str(exe), str(core)], capture_output=True, text=True, timeout=120).stdout
    frames: list[Frame] = []
    for line in out.splitlines():
        m = _FRAME.match(line.strip())
        if not m or int(m["index"]) < len(frames):
            continue  # gdb prints frame #0 once more when it loads the core
        rest = m["rest"]
        frm = _FROM.search(rest)
        frames.append(Frame(int(m["index"]), rest.split(" (", 1)[0].strip() or "??", m["address"],
                            library=frm["library"] if frm else None))
    return frames
