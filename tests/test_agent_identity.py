"""Identity from the cgroup and the pod watch (issue 8 section 1): the resolver's rules on a
recorded pod list, the mismatch metric, and the pending store's durability. The real crashes
are in tests/test_identity_e2e.py."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from prometheus_client import CollectorRegistry

from webhook.agent.identity import HOST, UNVERIFIED, VERIFIED, report_mismatches, resolve
from webhook.agent.metrics import AgentMetrics
from webhook.agent.pending import PendingIdentities
from webhook.agent.podwatch import PodIndex
from webhook.agent.procinfo import CgroupIdentity, Registration

AGENT = Path(__file__).resolve().parent / "recorded" / "agent"
WEB_UID = "6f1c2a7e-3b9d-4c51-9a0e-2d8f4b7c1e93"
WEB_CID = "8e2a4c6b1d3f5a7c9e0b2d4f6a8c0e1f3b5d7f9a1c3e5b7d9f0a2c4e6b8d0f1a"


def index() -> PodIndex:
    idx = PodIndex()
    idx.replace(json.loads((AGENT / "podlist-node-3.json").read_text())["items"])
    return idx


def registration(**kw) -> Registration:
    base = dict(pattern="/data/core", pod_name="web-7d9f8c6b5-x2kqp", namespace="shop", pod_uid=WEB_UID,
                container="app")
    base.update(kw)
    return Registration(**base)


def test_names_come_from_the_watch_and_claims_are_only_compared():
    cg = CgroupIdentity(pod_uid=WEB_UID, container_id=WEB_CID, runtime="containerd")
    honest = resolve(cg, registration(), index().lookup)
    assert (honest.namespace, honest.pod, honest.container, honest.state) == ("shop", "web-7d9f8c6b5-x2kqp", "app",
                                                                              VERIFIED)
    assert honest.mismatches == {} and honest.image == "registry.example.com/shop/web:1.4.2"
    forged = resolve(cg, registration(namespace="payments", pod_name="billing-0", container="fresh-1"), index().lookup)
    assert (forged.namespace, forged.pod, forged.container) == ("shop", "web-7d9f8c6b5-x2kqp", "app")
    assert forged.mismatches == {"namespace": ("payments", "shop"), "pod": ("billing-0", "web-7d9f8c6b5-x2kqp"),
                                 "container": ("fresh-1", "app")}
    # the rate limit's key is the cgroup's: the claimed container name plays no part
    assert forged.rate_key("") == honest.rate_key("") == (WEB_UID, WEB_CID)


def test_unknown_pod_or_container_names_nothing():
    unknown = resolve(CgroupIdentity(pod_uid="00000000-0000-4000-8000-000000000000", container_id="a" * 64),
                      registration(), index().lookup)
    assert (unknown.namespace, unknown.pod, unknown.container, unknown.state) == (None, None, None, UNVERIFIED)
    assert unknown.mismatches == {}  # nothing to compare with: the claim is simply not used
    # the pod is known but this container ID is not (yet) in its status: no container name
    fresh = resolve(CgroupIdentity(pod_uid=WEB_UID, container_id="b" * 64), registration(), index().lookup)
    assert (fresh.namespace, fresh.container) == ("shop", None) and fresh.state == VERIFIED
    broken = resolve(CgroupIdentity(pod_uid=WEB_UID, container_id=WEB_CID), None, lambda uid: 1 / 0)
    assert broken.state == UNVERIFIED  # a failing cache never fails the crash path
    assert resolve(CgroupIdentity(), None, index().lookup).state == HOST


def test_mismatches_are_logged_and_counted(caplog):
    metrics = AgentMetrics(CollectorRegistry())
    forged = resolve(CgroupIdentity(pod_uid=WEB_UID, container_id=WEB_CID), registration(namespace="payments"),
                     index().lookup)
    with caplog.at_level(logging.WARNING, logger="webhook.agent.identity"):
        report_mismatches(forged, metrics, 4242)
    assert metrics.identity_mismatches.labels("namespace")._value.get() == 1
    (rec,) = caplog.records
    assert rec.field == "namespace" and rec.claimed == "payments" and rec.namespace == "shop" and rec.pid == 4242


def test_pending_survives_a_restart_and_forgets_pods_never_seen(tmp_path):
    now = [1_700_000_000.0]
    published: list[dict] = []
    summary = {"pod_uid": WEB_UID, "container_id": WEB_CID, "outcome": "written", "destination": "pod",
               "path": "/data/core.1", "identity": UNVERIFIED, "global_pid": 7}
    first = PendingIdentities(str(tmp_path), str(tmp_path / "cores"), clock=lambda: now[0])
    first.add(summary)
    first.add({**summary, "pod_uid": "00000000-0000-4000-8000-000000000000"})
    first.close()
    again = PendingIdentities(str(tmp_path), str(tmp_path / "cores"), publish=published.append,
                              clock=lambda: now[0], proc=str(tmp_path / "no-proc"))
    assert len(again) == 2
    for record in (index().record(WEB_UID),):
        again.on_pod(record)
    assert again.flush(10)
    (done,) = published
    assert (done["namespace"], done["pod"], done["container"], done["identity"]) == (
        "shop", "web-7d9f8c6b5-x2kqp", "app", VERIFIED)
    assert len(again) == 1
    again.close()
    now[0] += 8 * 24 * 3600  # a week later the other pod was never seen: forgotten at start
    assert len(PendingIdentities(str(tmp_path), str(tmp_path / "cores"), clock=lambda: now[0])) == 0


def test_a_node_core_moved_to_its_verified_directory_keeps_its_sysroot_working(tmp_path):
    """The core's sysroot goes with it, and its links (relative, into ``_unverified/.symbols``)
    point into the namespace's build-id store, where each stored file is then hard-linked."""
    cores = tmp_path / "cores"
    d = cores / "_unverified" / f"pod-{WEB_UID}" / WEB_CID[:12]
    (d / "core.7.sysroot" / "usr" / "bin").mkdir(parents=True)
    (d / "core.7.sysroot" / "usr" / "lib").mkdir()
    (d / "core.7").write_bytes(b"\x7fELF core")
    stored = cores / "_unverified" / ".symbols" / "buildid" / "ab12" / "executable"
    stored.parent.mkdir(parents=True)
    stored.write_bytes(b"\x7fELF app")
    (d / "core.7.sysroot" / "usr" / "bin" / "app").symlink_to("../../../../../.symbols/buildid/ab12/executable")
    (d / "core.7.sysroot" / "lib").symlink_to("usr/lib")  # a root link: stays as it is
    summary = {"pod_uid": WEB_UID, "container_id": WEB_CID, "outcome": "written", "destination": "node",
               "path": str(d / "core.7"), "host_path": str(d / "core.7"), "identity": UNVERIFIED, "global_pid": 7,
               "sysroot": str(d / "core.7.sysroot"), "symbols_store": str(cores / "_unverified" / ".symbols")}
    (d / "core.7.json").write_text(json.dumps({"schema": 1, **summary}))
    published: list[dict] = []
    pending = PendingIdentities(str(tmp_path), str(cores), publish=published.append, proc=str(tmp_path / "no-proc"))
    pending.add(summary)
    pending.on_pod(index().record(WEB_UID))
    assert pending.flush(10)
    pending.close()
    new = cores / "shop" / "web-7d9f8c6b5-x2kqp" / "app"
    assert sorted(p.name for p in new.iterdir()) == ["core.7", "core.7.json", "core.7.sysroot"]
    assert not d.exists() and not (d.parent).exists()
    app = new / "core.7.sysroot" / "usr" / "bin" / "app"
    assert os.readlink(app) == "../../../../../.symbols/buildid/ab12/executable"
    assert app.resolve() == cores / "shop" / ".symbols" / "buildid" / "ab12" / "executable"
    assert app.read_bytes() == b"\x7fELF app" and app.stat().st_ino == stored.stat().st_ino
    assert os.readlink(new / "core.7.sysroot" / "lib") == "usr/lib"
    doc = json.loads((new / "core.7.json").read_text())
    (done,) = published
    for record in (doc, done):
        assert record["sysroot"] == str(new / "core.7.sysroot") and record["identity"] == VERIFIED
        assert record["symbols_store"] == str(cores / "shop" / ".symbols")
