"""The agent tests' fixtures (a pytest plugin registered by tests/conftest.py; never imported):
a kubelet-shaped cgroup, the kernel agent's host dir and servers, the helper's host dir and
server, a directory uid 1000 can reach, the CoreDump CRD and its strict schema check."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
import tempfile
import uuid
from pathlib import Path

import jsonschema
import pytest
import yaml
from prometheus_client import CollectorRegistry

from tests.agent_support import UNIFIED, kill_cgroup
from tests.helper_support import make_request
from tests.runc_support import remove_cgroup_dirs
from tests.suite_support import REPO
from webhook.agent import install
from webhook.agent.server import AgentServer, crash_request
from webhook.agent.settings import AgentSettings


@pytest.fixture
def k8s_cgroup():
    """A v2 cgroup shaped like kubelet's (cgroupfs driver) to put a process in."""
    pod_uid = str(uuid.uuid4())
    cid = hashlib.sha256(pod_uid.encode()).hexdigest()
    rel = f"kubepods/besteffort/pod{pod_uid}/{cid}"
    path = Path(UNIFIED) / rel
    path.mkdir(parents=True)
    yield pod_uid, cid, path
    kill_cgroup(path)
    remove_cgroup_dirs(rel)


@pytest.fixture
def agent_env(kernel, bin_dir):
    """A short host dir; install() against the real /proc/sys; servers stopped; uninstall."""
    host = Path(tempfile.mkdtemp(prefix="cdh-"))
    servers: list[AgentServer] = []

    def settings(**kw) -> AgentSettings:
        base = dict(host_dir=str(host), helper_binary=str(bin_dir / "coredump-helper"), metrics_bind="",
                    spool_drain_interval_seconds=3600)
        base.update(kw)
        return AgentSettings(**base)

    def serve(s: AgentSettings, handler, **kw) -> AgentServer:
        server = AgentServer(s, handler, request_factory=kw.pop("request_factory", crash_request),
                             registry=CollectorRegistry(), **kw)
        server.start()
        servers.append(server)
        return server

    try:
        yield host, settings, serve
    finally:
        for server in servers:
            server.stop(wait_seconds=5)
        try:
            install.uninstall(settings())
        finally:
            shutil.rmtree(host, ignore_errors=True)


_LABEL = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _strict(schema: dict) -> dict:
    """The CRD schema with unknown fields refused (the API server would silently prune them)."""
    out = copy.deepcopy(schema)
    if out.get("type") == "object" and "properties" in out and out is not None:
        out.setdefault("additionalProperties", False)
        for key, sub in out["properties"].items():
            if key != "metadata":
                out["properties"][key] = _strict(sub)
    if out.get("type") == "array" and "items" in out:
        out["items"] = _strict(out["items"])
    return out


@pytest.fixture(scope="module")
def crd() -> dict:
    return yaml.safe_load(CRD.read_text())


@pytest.fixture(scope="module")
def validate(crd):
    (version,) = crd["spec"]["versions"]
    checker = jsonschema.Draft7Validator(_strict(version["schema"]["openAPIV3Schema"]),
                                         format_checker=jsonschema.FormatChecker())

    def check(obj: dict) -> None:
        assert obj["apiVersion"] == f"{crd['spec']['group']}/{version['name']}" and obj["kind"] == crd["spec"]["names"]["kind"]
        checker.validate(obj)
        meta = obj["metadata"]
        assert len(meta["name"]) <= 253 and _DNS_SUBDOMAIN.match(meta["name"]), meta["name"]
        for key, value in meta["labels"].items():
            assert len(value) <= 63 and _LABEL.match(value), (key, value)
        assert len(json.dumps(obj)) < 4096  # small: top frames only
    return check


@pytest.fixture
def shared_dir():
    """A directory uid 1000 can reach (pytest's tmp_path is root-only)."""
    base = Path(tempfile.mkdtemp(prefix="cdh-sym-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def host(bin_dir):
    """A short host dir holding the helper, as the agent installs it."""
    d = Path(tempfile.mkdtemp(prefix="cdh-"))
    shutil.copy2(bin_dir / "coredump-helper", d / "coredump-helper")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def serve():
    servers: list[AgentServer] = []

    def start(settings: AgentSettings, handler, **kw) -> AgentServer:
        server = AgentServer(settings, handler, request_factory=make_request, registry=CollectorRegistry(), **kw)
        server.start()
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop(wait_seconds=5)


CRD = REPO / "charts" / "coredump-webhook" / "crds" / "coredumps.coredump-webhook.io.yaml"
