"""The core(5) pattern module: validation at admission and expansion at crash time."""

from __future__ import annotations

import pytest

from webhook.pattern import CrashInfo, PatternError, expand, parse

INFO = CrashInfo(
    pid=12, global_pid=4242, tid=13, global_tid=4243, uid=1000, gid=2000, signal=11,
    time=1700000000, hostname="web-7d9f", comm="my/app", exe="/usr/local/bin/server",
    rlimit_core=2**64 - 1, dump_mode=1, cpu=1,
)


def test_acs_seed_pattern_expands_like_the_kernel():
    p = parse("/data/dump-a/core-%E-%p-%t")
    assert p.directory == "/data/dump-a"
    assert expand(p, INFO) == "/data/dump-a/core-!usr!local!bin!server-12-1700000000"


def test_eci_pattern_gets_namespace_pid_appended():
    p = parse("/pod/data/dump/core-eci")
    assert expand(p, INFO) == "/pod/data/dump/core-eci.12"
    assert expand(p, INFO, append_pid=False) == "/pod/data/dump/core-eci"


def test_global_pid_does_not_stop_pid_append():
    assert expand(parse("/d/core-%P"), INFO) == "/d/core-4242.12"


@pytest.mark.parametrize(
    "spec,value",
    [("%%", "%"), ("%c", str(2**64 - 1)), ("%C", "1"), ("%d", "1"), ("%e", "my!app"),
     ("%f", "server"), ("%g", "2000"), ("%h", "web-7d9f"), ("%i", "13"), ("%I", "4243"),
     ("%P", "4242"), ("%s", "11"), ("%t", "1700000000"), ("%u", "1000")],
)
def test_every_specifier(spec, value):
    assert expand(parse(f"/cores/x{spec}y-%p"), INFO) == f"/cores/x{value}y-12"


def test_escaped_values_never_climb_or_vanish():
    info = CrashInfo(pid=1, global_pid=1, tid=1, global_tid=1, uid=0, gid=0, signal=6, time=0,
                     hostname="..", comm="", exe="/")
    assert expand(parse("/c/%h/%e/%p"), info) == "/c/!./!/1"


@pytest.mark.parametrize(
    "raw,reason",
    [("|/bin/sh -c x", "pipe"), ("/data/../etc/core", "'..'"), ("/data/core\n", "control"),
     ("/d/" + "x" * 130, "at most 127"), ("/data/core-%z", "unknown specifier '%z'"),
     ("/data/core-%", "lone '%'"), ("", "empty"), ("/core-%p", "directory is '/'"),
     ("/data/cores/", "ends with '/'"), ("../core", "'..'")],
)
def test_refused(raw, reason):
    with pytest.raises(PatternError) as exc:
        parse(raw)
    assert reason in exc.value.reason


def test_relative_pattern_is_admitted_with_a_warning():
    p = parse("core-%e")
    assert p.is_relative and p.directory is None
    assert "working directory" in p.warnings[0]
    assert expand(p, INFO) == "core-my!app.12"


def test_directory_stops_at_first_specifier():
    assert parse("/data/%h/cores/core-%p").directory == "/data"
    assert parse("/data//dump/core").directory == "/data/dump"


# --- the agent reads a registration as the kernel does (issue 15 section 6) -------------------------
def test_kernel_mode_drops_what_the_kernel_drops():
    from webhook.pattern import CrashInfo, expand, parse

    info = CrashInfo(pid=6, global_pid=4242, tid=6, global_tid=4242, uid=0, gid=0, signal=11, time=1700000000)
    p = parse("/d/unk.%z.%p.%", kernel=True)  # the kernel's own output was "unk..6." (facts.md)
    assert p.dropped == ("%z", "%")
    assert expand(p, info) == "/d/unk..6."
    assert expand(parse("/d/core-%y%e", kernel=True), CrashInfo(**{**info.__dict__, "comm": "app"})) == "/d/core-app.6"
    with pytest.raises(PatternError, match="unknown specifier"):
        parse("/d/unk.%z.%p")  # admission still refuses it
    with pytest.raises(PatternError, match="'..'"):
        parse("/d/.%z./core", kernel=True)  # what is left once %z is gone climbs out
