"""Listing: the exec script run by real shells over real metadata files, grouping, rendering."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml

from tests.inspect_data import write_core
from webhook.inspect import listing
from webhook.inspect.records import find_record, newest_first, record_from_metadata
from webhook.inspect.rendering import group_by_signature, render

SIG_A = "a" * 64
SIG_B = "b" * 64


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "root"
    write_core(root, "data/dump-a/core-!usr!local!bin!web-7-1700000000", namespace="shop", pod="web-1",
               container="app", t=1700000000, signature=SIG_A, frames=["f", "h", "main"])
    write_core(root, "data/dump-a/core-!usr!local!bin!web-7-1700000500", namespace="shop", pod="web-1",
               container="app", t=1700000500, signature=SIG_A, frames=["f", "h", "main"])
    write_core(root, "data/dump-a/sub/core-!usr!local!bin!web-9-1700000900", namespace="shop", pod="web-1",
               container="app", t=1700000900, signal=6, signature=SIG_B, frames=["g", "main"])
    write_core(root, "data/dump-a/core-old", namespace="shop", pod="web-1", container="app", t=1690000000)
    (root / "data/dump-a/core-old").unlink()  # metadata left, core deleted by hand
    (root / "data/dump-a/config.json").write_text('{"not": "metadata"}')
    (root / "data/dump-a/broken.json").write_text("{oops")
    return root


@pytest.mark.parametrize("shell", [["sh"], ["busybox", "sh"]])
def test_listing_script_in_real_shells(tree, shell):
    if shutil.which(shell[0]) is None:
        pytest.skip(f"{shell[0]} missing")
    cmd = listing.listing_command([str(tree / "data/dump-a"), str(tree / "nonexistent")])
    out = subprocess.run(shell + cmd[1:], capture_output=True, text=True, check=True).stdout
    records, warnings = listing.parse_listing(out, namespace="shop", pod="web-1")
    assert len(records) == 4
    assert any("broken.json" in w for w in warnings)
    by_time = newest_first(records)
    assert [r.time for r in by_time] == [1700000900, 1700000500, 1700000000, 1690000000]
    assert by_time[0].signal_name == "SIGABRT" and by_time[0].path.endswith("sub/core-!usr!local!bin!web-9-1700000900")
    assert [r.present for r in by_time] == [True, True, True, False]


def test_scan_directory_matches_the_exec_listing(tree):
    local, _ = listing.scan_directory(str(tree))
    out = subprocess.run(listing.listing_command([str(tree)]), capture_output=True, text=True, check=True).stdout
    remote, _ = listing.parse_listing(out)
    assert sorted(r.digest for r in local) == sorted(r.digest for r in remote) and all(r.digest for r in local)
    # the metadata path is the container's view; the local one is kept apart
    assert all(r.path.startswith("/data/dump-a/") for r in local)
    assert all(r.location.startswith(str(tree)) and r.location.endswith(r.name) for r in local)


def test_grouping_counts_and_orders(tree):
    records, _ = listing.scan_directory(str(tree))
    groups = group_by_signature(records)
    assert [(g.signature, g.count) for g in groups] == [(SIG_A, 2), (SIG_B, 1), ("", 1)]
    assert groups[0].top_frames() == ["f", "h", "main"]
    assert groups[0].last.time == 1700000500 and groups[0].first_seen == 1700000000


def test_snapshots_are_never_grouped_with_crashes(tree):
    """A gcore of a live process in the same function is not one more crash of that bug."""
    snap = write_core(tree, "data/dump-a/core-snap", namespace="shop", pod="web-1", container="app", t=1700000600,
                      signal=0, signature=SIG_A, frames=["f", "h", "main"])
    meta_path = snap.with_name(snap.name + ".json")
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "gcore": True, "snapshot": True}))
    records, _ = listing.scan_directory(str(tree))
    groups = group_by_signature(records)
    assert [(g.signature, g.kind, g.count) for g in groups][:2] == [(SIG_A, "crash", 2), (SIG_B, "crash", 1)]
    assert (SIG_A, "snapshot", 1) in [(g.signature, g.kind, g.count) for g in groups]
    assert "(snapshot)" in render(records, group=True)
    assert {g["kind"] for g in json.loads(render(records, "json", group=True))["groups"]} == {"crash", "snapshot"}


def test_render_table_wide_group_json_yaml(tree):
    records, _ = listing.scan_directory(str(tree))
    table = render(records)
    lines = table.splitlines()
    assert lines[0].split() == ["NAMESPACE", "POD", "CONTAINER", "TIME", "SIGNAL", "SIZE", "SIGNATURE", "CORE"]
    assert "SIGABRT" in lines[1] and "bbbbbbbbbbbb" in lines[1]
    assert "(missing)" in lines[-1]
    wide = render(records, "wide").splitlines()
    assert "COUNT" in wide[0] and "TOP FRAME" in wide[0]
    assert wide[2].split()[-3:] == ["2", "node-3", "f"]
    grouped = render(records, group=True).splitlines()
    assert grouped[1].split()[:2] == ["aaaaaaaaaaaa", "2"] and "f < h < main" in grouped[1]
    data = json.loads(render(records, "json"))
    assert [c["time"] for c in data["cores"]] == [1700000900, 1700000500, 1700000000, 1690000000]
    assert data["cores"][0]["time_iso"].startswith("2023-11-14T")
    ydata = yaml.safe_load(render(records, "yaml", group=True))
    assert ydata["groups"][0]["count"] == 2 and ydata["groups"][0]["pods"] == ["shop/web-1"]


def test_find_record_by_name_path_or_digest(tree):
    records, _ = listing.scan_directory(str(tree))
    r = records[0]
    assert r.digest.startswith("xxh128:")
    assert find_record(records, r.name) is r
    assert find_record(records, r.path) is r
    assert find_record(records, r.digest.partition(":")[2][:10]) is r  # the hex digits
    assert find_record(records, r.digest[:17]) is r  # with the algorithm
    assert find_record(records, r.digest.partition(":")[2][:7]) is None  # too short to be sure
    assert find_record(records, "nope") is None


def test_metadata_of_older_agents_with_only_sha256_is_listed_found_and_verified(tmp_path):
    """Metadata written before the ``digest`` key (``sha256``: bare hex) keeps working: listed with
    ``sha256:<hex>``, found by that prefix, and a download is checked with sha256."""
    import hashlib

    from webhook.inspect import download as dl

    core = write_core(tmp_path, "data/dump-a/core.old", namespace="shop", pod="web-1", container="app",
                      t=1690000000, legacy_sha256=True)
    doc = json.loads((tmp_path / "data/dump-a/core.old.json").read_text())
    assert "digest" not in doc and doc["schema"] == 1
    sha = hashlib.sha256(core.read_bytes()).hexdigest()
    out = subprocess.run(listing.listing_command([str(tmp_path / "data/dump-a")]), capture_output=True, text=True,
                         check=True).stdout
    (rec,) = listing.parse_listing(out, namespace="shop", pod="web-1")[0]
    assert rec.digest == "sha256:" + sha and find_record([rec], sha[:12]) is rec
    got = dl.download(dl.FileSource(rec.location), str(tmp_path / "got"), digest=rec.digest, size=rec.stored_size)
    assert got.digest == "sha256:" + sha and (tmp_path / "got").read_bytes() == core.read_bytes()
    core.write_bytes(b"\0" * core.stat().st_size)  # damaged: the old metadata's sha256 catches it
    with pytest.raises(dl.DownloadError, match="digest mismatch"):
        dl.download(dl.FileSource(rec.location), str(tmp_path / "bad"), digest=rec.digest, size=rec.stored_size)


def test_a_digest_that_was_not_computed_is_shown_as_none(tmp_path):
    """null (the agent could not read the core back) or a malformed value: no digest, never a guess."""
    for value in (None, "xxh128:", "xxh128:" + "g" * 32, "crc32:12345678"):
        meta = {"digest": value, "size": 3, "time": 5}
        rec = record_from_metadata(meta, "/d/core.1.json")
        assert rec is not None and rec.digest == ""
    assert record_from_metadata({"size": 3, "time": 5}, "/d/x.json") is None  # no digest key: not a core's


def test_core_path_command_offsets(tmp_path):
    f = tmp_path / "core"
    f.write_bytes(bytes(range(256)) * 4)
    out = subprocess.run(listing.core_path_command(str(f), 1000), capture_output=True, check=True).stdout
    assert out == f.read_bytes()[1000:]
    assert subprocess.run(listing.core_path_command(str(f)), capture_output=True).stdout == f.read_bytes()


# --- the wrapper's framed listing: one parser for both readers --------------------------------


def test_wrapper_listing_parses_like_the_shell_script(tree, bin_dir):
    """The real wrapper and the real shell script over the same tree give the same records."""
    cmd = listing.wrapper_listing_command([str(tree / "data/dump-a"), str(tree / "nonexistent")],
                                          wrapper=str(bin_dir / "coredump-wrapper"))
    framed = subprocess.run(cmd, capture_output=True, check=True).stdout
    assert framed.startswith(b"coredump-list/1\n")
    script = subprocess.run(listing.listing_command([str(tree / "data/dump-a"), str(tree / "nonexistent")]),
                            capture_output=True, check=True).stdout
    got, got_warn = listing.parse_listing(framed, namespace="shop", pod="web-1")
    ref, ref_warn = listing.parse_listing(script, namespace="shop", pod="web-1")

    def key(r):
        return (r.location, r.present, r.digest, r.time, r.signature)

    assert sorted(map(key, got)) == sorted(map(key, ref)) and len(got) == 4
    assert [w for w in got_warn if "broken.json" in w] and [w for w in ref_warn if "broken.json" in w]


def _frame(kind: str, path: bytes, body: bytes) -> bytes:
    return f"{kind} {len(path)} {len(body)}\n".encode() + path + body + b"\n"


def test_framed_listing_is_unambiguous_and_damage_is_reported():
    meta = json.dumps({"sha256": "ab" * 32, "size": 3, "time": 5, "pod": "p"}).encode()
    odd = b"/d/x\x1e\tpresent\nend 9\n.json"  # a path holding the script format's separators and a fake end
    good = b"coredump-list/1\n" + _frame("missing", odd, meta) + _frame("error", b"/d/big.json", b"larger than 1048576 bytes") + b"end 2\n"
    records, warnings = listing.parse_listing(good, namespace="ns", pod="p")
    assert [(r.location, r.present) for r in records] == [(odd[:-5].decode(), False)]
    assert warnings == ["ns/p: /d/big.json: larger than 1048576 bytes"]
    # cut anywhere: what came before is kept, and the cut is reported
    for cut in (len(good) - 3, len(good) - 10, 40):
        recs, warns = listing.parse_listing(good[:cut])
        assert len(recs) == (1 if cut > 40 else 0) and any("cut short" in w for w in warns), (cut, warns)
    recs, warns = listing.parse_listing(good.replace(b"end 2", b"end 3"))
    assert len(recs) == 1 and "announces 3 files, 2 read" in warns[0]
    recs, warns = listing.parse_listing(b"coredump-list/1\nbogus 1 2\n")
    assert recs == [] and "damaged at byte 16" in warns[0]
    # text (the shell script's output) never goes through the framed parser
    assert listing.listing_entries("coredump-list/1\n") == ([], [])


def test_listing_through_a_pod_never_shows_another_namespace(tmp_path):
    """Issue 8: a process can write any JSON into its volume; read through a pod of ``shop``,
    every record is ``shop``'s, and only a name the agent verified in ``shop`` is kept."""
    root = tmp_path / "root"
    write_core(root, "data/forged", namespace="payments", pod="billing-0", container="api", t=1700000000)
    write_core(root, "data/unverified", namespace="shop", pod="web-9", container="app", t=1700000001,
               identity="unverified")
    write_core(root, "data/sibling", namespace="shop", pod="web-2", container="app", t=1700000002)
    out = subprocess.run(listing.listing_command([str(root / "data")]), capture_output=True).stdout
    records, _ = listing.parse_listing(out, namespace="shop", pod="web-1")
    shown = {r.name: (r.namespace, r.pod, r.container) for r in records}
    assert shown == {"forged": ("shop", "web-1", "api"), "unverified": ("shop", "web-1", ""),
                     "sibling": ("shop", "web-2", "app")}
    # read from a directory (the page's node location): unverified names are not shown at all
    scanned = {r.name: (r.namespace, r.pod) for r in listing.scan_directory(str(root))[0]}
    assert scanned["unverified"] == ("", "") and scanned["forged"] == ("payments", "billing-0")
