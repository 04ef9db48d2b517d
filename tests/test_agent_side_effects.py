"""Rate limit, retention, and the side effects that must never delay a dump: the pod Event
(a real kubernetes ApiClient against recorded API responses) and the notification webhook."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC

import pytest

from tests.kube_apiserver import FakeApiServer, Recorded, recorded
from webhook.agent.events import EventPoster, build_event
from webhook.agent.limits import RateLimiter, apply_retention
from webhook.agent.notify import Notifier

pytestmark = pytest.mark.timeout(60)
EVENTS_PATH = "/api/v1/namespaces/shop/events"
INFO = {
    "outcome": "written", "namespace": "shop", "pod": "web-7d9c-abcde", "pod_uid": "0c3a7f5e-9b1d-4e2a-8f6c-1234567890ab",
    "container": "app", "pid": 12, "comm": "app", "signal": 11, "signal_name": "SIGSEGV", "node": "node-1",
    "path": "/data/dump/core-eci.12", "size": 1048576, "truncated_reason": None, "digest": "xxh128:" + "00" * 16,
}


def test_rate_limit_per_container():
    now = [1000.0]
    rl = RateLimiter(count=1, window=300, clock=lambda: now[0])
    a, b = ("uid-a", "app"), ("uid-a", "sidecar")
    assert rl.allow(a) and rl.allow(b)
    assert not rl.allow(a) and not rl.allow(a)
    assert rl.dropped(a) == 2 and rl.dropped(b) == 0
    now[0] += 299
    assert not rl.allow(a)
    now[0] += 2
    assert rl.allow(a)
    rl.prune()
    assert RateLimiter(count=0).allow(a)  # 0 disables


def test_retention_by_age_then_total(tmp_path):
    now = time.time()
    d = tmp_path / "shop" / "web" / "app"
    d.mkdir(parents=True)
    files = {}
    for i, age in enumerate((10 * 86400, 3600, 600, 60)):
        core = d / f"core.{i}"
        core.write_bytes(os.urandom(100_000))
        (d / f"core.{i}.json").write_text("{}")
        for p in (core, d / f"core.{i}.json"):
            os.utime(p, (now - age, now - age))
        files[i] = core
    inflight = d / ".coredump-tmp.abc.core.9"
    inflight.write_bytes(os.urandom(100_000))
    (tmp_path / "old-empty" / "x").mkdir(parents=True)
    res = apply_retention(str(tmp_path), max_age_seconds=7 * 86400, max_total_bytes=250_000, now=now)
    assert not files[0].exists() and not (d / "core.0.json").exists()  # too old
    assert not files[1].exists()  # oldest left, over the total
    assert files[2].exists() and files[3].exists() and (d / "core.3.json").exists()
    assert inflight.exists()  # a dump in flight is never touched
    assert not (tmp_path / "old-empty").exists() and tmp_path.exists()
    assert res.kept_bytes <= 250_000 and len(res.removed) == 4


def _api_client(url):
    from kubernetes import client

    cfg = client.Configuration()
    cfg.host = url
    return client.ApiClient(cfg)


def test_event_posted_with_a_real_api_client():
    with FakeApiServer() as rec:
        rec.route("POST", EVENTS_PATH, Recorded(201, "event-created.json", area="agent"))
        poster = EventPoster(_api_client(rec.url), clock=lambda: 1700000001.0)
        assert poster.submit(INFO)
        assert poster.flush(10)
        assert poster.sent == 1 and poster.failed == 0
        req = rec.requests[0]
        assert (req["method"], req["path"]) == ("POST", "/api/v1/namespaces/shop/events")
        body = json.loads(req["body"])
        assert body["reason"] == "CoreDumped" and body["type"] == "Warning"
        assert body["involvedObject"] == {"apiVersion": "v1", "kind": "Pod", "namespace": "shop",
                                          "name": "web-7d9c-abcde", "uid": INFO["pod_uid"],
                                          "fieldPath": "spec.containers{app}"}
        assert "/data/dump/core-eci.12" in body["message"] and "1048576 bytes" in body["message"]
        assert body["metadata"] == {"generateName": "web-7d9c-abcde.", "namespace": "shop"}
        from datetime import datetime

        stamp = datetime.fromisoformat(body["firstTimestamp"].replace("Z", "+00:00"))
        assert stamp == datetime(2023, 11, 14, 22, 13, 21, tzinfo=UTC)
        assert body["source"] == {"component": "coredump-agent", "host": "node-1"}
        # the recorded response is exactly what the API returns for this body
        answer = recorded("event-created.json", "agent")
        assert answer["message"] == body["message"] and answer["involvedObject"] == body["involvedObject"]


def test_event_failure_is_counted_not_raised():
    with FakeApiServer() as rec:
        rec.route("POST", EVENTS_PATH, Recorded(403, "event-forbidden.json", area="agent"))
        poster = EventPoster(_api_client(rec.url))
        poster.submit(INFO)
        assert poster.flush(10) and poster.failed == 1
        assert not poster.submit(dict(INFO, pod=None))  # host processes get no Event
        assert build_event(dict(INFO, namespace=None), 0) is None


@pytest.mark.parametrize("fmt,key", [("json", "event"), ("slack", "text"), ("feishu", "msg_type"),
                                     ("dingtalk", "msgtype")])
def test_notifier_posts_in_the_background(fmt, key):
    with FakeApiServer() as rec:
        rec.route("POST", "/hook", Recorded(200, {"ok": True}, delay=0.5))
        notifier = Notifier(rec.url + "/hook", fmt, timeout=5)
        start = time.monotonic()
        notifier.submit(INFO)
        assert time.monotonic() - start < 0.2  # never waits for the server
        assert notifier.flush(10) and notifier.sent == 1
        req = rec.requests[0]
        assert req["path"] == "/hook" and req["headers"]["content-type"] == "application/json"
        assert key in json.loads(req["body"])


def test_notifier_timeout_is_a_failure_not_a_hang():
    with FakeApiServer() as rec:
        rec.route("POST", "/", Recorded(200, {}, delay=3))
        notifier = Notifier(rec.url, "slack", timeout=0.5)
        notifier.submit(INFO)
        assert notifier.flush(10) and notifier.failed == 1
