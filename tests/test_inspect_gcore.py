"""gcore of a real running process: a valid ELF core, and the process keeps running."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time

import pytest

from tests.suite_support import which_or_fail
from webhook.diagnose import gcore


def _counter(tmp_path):
    out = tmp_path / "count"
    proc = subprocess.Popen(["sh", "-c", f'i=0; while :; do i=$((i+1)); echo $i > {out}; sleep 0.02; done'])
    deadline = time.monotonic() + 5
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return proc, out


def _value(path) -> int:
    for _ in range(50):
        text = path.read_text().strip()
        if text:
            return int(text)
        time.sleep(0.01)
    raise AssertionError("counter file stayed empty")


@pytest.mark.root
def test_gcore_of_a_live_process_leaves_it_running(tmp_path):
    which_or_fail("gcore")
    proc, counter = _counter(tmp_path)
    try:
        snap = gcore.snapshot(proc.pid, str(tmp_path))
        assert gcore.elf_type(snap.path) == gcore.ET_CORE
        assert snap.size == os.path.getsize(snap.path) > 4096
        before = _value(counter)
        time.sleep(0.3)
        assert proc.poll() is None, "the process died"
        assert _value(counter) > before, "the process did not continue after the snapshot"
        with open(f"/proc/{proc.pid}/stat") as f:
            assert f.read().split(") ")[1][0] in "SR", "left stopped"

        received = {}

        def write(stream, facts):
            received["sha"] = hashlib.sha256(stream.read()).hexdigest()
            received["facts"] = facts
            return "/data/core.1"

        expected = hashlib.sha256(open(snap.path, "rb").read()).hexdigest()
        assert gcore.deliver(snap, write) == "/data/core.1"
        assert received["sha"] == expected
        facts = received["facts"]
        assert facts["kind"] == "gcore" and facts["global_pid"] == proc.pid and facts["comm"] == "sh"
        assert facts["exe"].endswith("sh") and facts["uid"] == os.getuid()
        assert not os.path.exists(snap.path), "work file left on the node"
    finally:
        proc.kill()
        proc.wait()


def test_gcore_of_a_missing_process_is_a_clear_error(tmp_path):
    with pytest.raises(gcore.GcoreError, match="no process"):
        gcore.snapshot(2**22 + 7, str(tmp_path))


def test_elf_type_rejects_non_elf(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"not an elf at all, really")
    assert gcore.elf_type(str(p)) is None
