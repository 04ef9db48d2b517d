"""`coredump page` as it runs in the chart: gunicorn in a subprocess, real HTTP(S), real files.

The cores root holds cores and metadata written with the agent's own metadata builder
(tests/inspect_data.py). The page is fetched and a core downloaded over a real socket; the bytes
and their digest must be the file's. With RBAC on, the page's authorizer talks to a stand-in
API server replaying recorded TokenReview/SubjectAccessReview responses. As root, the server
also runs the way the chart runs it: uid 0 with every capability dropped, reading the
root-only (0700/0600) node location.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import xxhash

from tests.inspect_data import write_core
from tests.kube_apiserver import FakeApiServer, Recorded
from tests.process_support import coredump_command, free_port, stop_group
from webhook.certs import generate as gen

REPO = Path(__file__).resolve().parent.parent
SIG = hashlib.sha256(b"crash\nmain").hexdigest()


@pytest.fixture
def cores(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "cores"
    return {
        "shop": write_core(root, "shop/web-1/app/core-web-7-1700000000", namespace="shop", pod="web-1",
                           container="app", t=1700000000, signature=SIG, frames=["crash", "main"],
                           payload=os.urandom(300_000) + bytes(200_000)),
        "payments": write_core(root, "payments/pay-0/api/core-api-1-1700000300", namespace="payments", pod="pay-0",
                               container="api", t=1700000300, signal=6),
    }


class Page:
    def __init__(self, proc: subprocess.Popen, url: str, log_path: Path) -> None:
        self.proc, self.url, self.log_path = proc, url, log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]


@contextlib.contextmanager
def running_page(tmp: Path, *args: str, env: dict[str, str] | None = None, scheme: str = "http",
                 verify: str | bool = True, prefix: tuple[str, ...] = (), host: str = "127.0.0.1") -> Iterator[Page]:
    port = free_port()
    log_path = tmp / "page.log"
    full_env = {**os.environ, "HOME": str(tmp), "COREDUMP_PAGE_BIND": f"127.0.0.1:{port}", **(env or {})}
    full_env.pop("KUBERNETES_SERVICE_HOST", None)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*prefix, *coredump_command(), "page", *args], env=full_env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    page = Page(proc, f"{scheme}://{host}:{port}/", log_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"coredump page exited {proc.returncode}:\n{page.log()}"
            try:
                if requests.get(page.url + "healthz", timeout=2, verify=verify).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, page.log()
            time.sleep(0.1)
        yield page
    finally:
        code = stop_group(proc)
        assert code == 0, f"exit {code}:\n{page.log()}"  # a clean, graceful shutdown


def _check_download(page: Page, core: Path, root: Path, verify: str | bool = True, headers: dict | None = None) -> None:
    rel = core.relative_to(root)
    r = requests.get(page.url + f"download/{rel}", timeout=30, verify=verify, headers=headers or {})
    assert r.status_code == 200, r.text[:300]
    expected = hashlib.sha256(core.read_bytes()).hexdigest()
    assert r.content == core.read_bytes()
    assert hashlib.sha256(r.content).hexdigest() == expected
    meta = json.loads(Path(str(core) + ".json").read_text())
    assert r.headers["X-Core-Digest"] == meta["digest"] == "xxh128:" + xxhash.xxh3_128(r.content).hexdigest()
    assert f'filename={core.name}' in r.headers["Content-Disposition"]


def test_gunicorn_serves_the_list_and_exact_downloads(tmp_path: Path, cores: dict[str, Path]) -> None:
    root = tmp_path / "cores"
    with running_page(tmp_path, "--cores-root", str(root), "--insecure-no-auth") as page:
        html = requests.get(page.url, timeout=10).text
        assert "Namespace shop" in html and "Namespace payments" in html
        assert "web-1" in html and "pay-0" in html and SIG[:12] in html and "#0 crash at web.c:10" in html
        for core in cores.values():
            assert f'href="download/{core.relative_to(root)}"' in html
            _check_download(page, core, root)
        assert requests.get(page.url + "download/../../etc/passwd", timeout=10).status_code == 404
        assert len(page.worker_pids()) == 1  # one gthread worker by default
    log = page.log()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    start = next(x for x in lines if x.get("event") == "page.start")
    assert start["settings"]["insecureNoAuth"] is True and start["settings"]["coresRoot"] == str(root)
    assert any("gunicorn" in x.get("logger", "") for x in lines)
    assert "Werkzeug" not in log and "development server" not in log


def test_tls_with_the_cert_dir(tmp_path: Path, cores: dict[str, Path]) -> None:
    root = tmp_path / "cores"
    cert_dir = tmp_path / "certs"
    gen.write_bundle(gen.generate("coredump-webhook-page", "coredump-webhook", 30), cert_dir)
    ca = str(cert_dir / "ca.crt")
    # every option through its environment variable, as the chart passes them
    env = {"COREDUMP_PAGE_CORES_ROOT": str(root), "COREDUMP_PAGE_CERT_DIR": str(cert_dir),
           "COREDUMP_PAGE_INSECURE_NO_AUTH": "1", "COREDUMP_PAGE_THREADS": "2", "COREDUMP_PAGE_LOG_LEVEL": "warning"}
    # the certificate names the Service and localhost: verified against its CA by name
    with running_page(tmp_path, env=env, scheme="https", verify=ca, host="localhost") as page:
        html = requests.get(page.url, timeout=10, verify=ca).text
        assert "web-1" in html and "pay-0" in html
        _check_download(page, cores["shop"], root, verify=ca)
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(page.url, timeout=10)  # the system CAs do not know it: it is really that certificate
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(page.url.replace("https://", "http://"), timeout=5)  # no plain HTTP on that port
    assert "page.start" not in page.log()  # log level warning from the env var


def test_rbac_through_token_review_and_subject_access_review(tmp_path: Path, cores: dict[str, Path]) -> None:
    """The production authorizer, in the gunicorn worker, against recorded API responses."""
    root = tmp_path / "cores"
    tr, sar = "/apis/authentication.k8s.io/v1/tokenreviews", "/apis/authorization.k8s.io/v1/subjectaccessreviews"
    with FakeApiServer() as api:
        kubeconfig = api.kubeconfig(tmp_path / "kubeconfig")
        api.route("POST", tr, Recorded(201, "tokenreview-alice.json"))
        # namespaces are scanned in order: payments (denied), then shop (allowed)
        api.route("POST", sar, Recorded(201, "sar-denied.json"), Recorded(201, "sar-allowed.json"))
        with running_page(tmp_path, "--cores-root", str(root), env={"KUBECONFIG": str(kubeconfig)}) as page:
            anonymous = requests.get(page.url, timeout=10)
            assert anonymous.status_code == 401 and 'name="token"' in anonymous.text
            assert api.requests == []  # no token: no API call at all
            html = requests.get(page.url, headers={"Authorization": "Bearer alice-token"}, timeout=10).text
            assert "web-1" in html and "pay-0" not in html and "payments" not in html
            reviews = [json.loads(r["body"]) for r in api.requests]
            assert reviews[0]["kind"] == "TokenReview" and reviews[0]["spec"]["token"] == "alice-token"
            asked = [r["spec"]["resourceAttributes"] for r in reviews if r["kind"] == "SubjectAccessReview"]
            assert [a["namespace"] for a in asked] == ["payments", "shop"]
            assert all((a["verb"], a["resource"], a["subresource"]) == ("create", "pods", "exec") for a in asked)
            api.route("POST", sar, Recorded(201, "sar-allowed.json"))
            _check_download(page, cores["shop"], root, headers={"Authorization": "Bearer alice-token"})
            api.route("POST", sar, Recorded(201, "sar-denied.json"))
            rel = cores["payments"].relative_to(root)
            denied = requests.get(page.url + f"download/{rel}", headers={"Authorization": "Bearer alice-token"},
                                  timeout=10)
            assert denied.status_code == 404 and cores["payments"].read_bytes() not in denied.content


def test_without_api_access_it_refuses_to_start(tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "none")}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    proc = subprocess.run([*coredump_command(), "page", "--cores-root", str(tmp_path), "--bind", f"127.0.0.1:{free_port()}"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "TokenReview" in proc.stderr and "--insecure-no-auth" in proc.stderr
    bad = subprocess.run([*coredump_command(), "page", "--insecure-no-auth", "--bind", "nowhere"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "HOST:PORT" in bad.stderr


@pytest.mark.root
def test_as_uid_0_without_any_capability_it_reads_the_root_only_node_location(tmp_path: Path) -> None:
    """The chart's page container: uid 0, every capability dropped, no new privileges. The agent
    writes the node location root-owned, directories 0700 and cores 0600: the owner uid reads
    them by its permission bits alone, no DAC_OVERRIDE/DAC_READ_SEARCH needed."""
    root = tmp_path / "cores"
    core = write_core(root, "shop/web-1/app/core-web-7-1700000000", namespace="shop", pod="web-1",
                      container="app", t=1700000000)
    os.chmod(root, 0o700)  # as webhook/agent/crash.py makes it
    core.chmod(0o600)
    for d in (root / "shop", root / "shop/web-1", root / "shop/web-1/app"):
        d.chmod(0o700)  # stricter than the agent's 0755 subdirectories
    # and a file the owner bits do not cover: readable only with a capability
    other = tmp_path / "other"
    other.write_bytes(b"x")
    os.chown(other, 12345, 12345)
    other.chmod(0o600)
    setpriv = ["setpriv", "--reuid=0", "--regid=0", "--clear-groups", "--inh-caps=-all", "--ambient-caps=-all",
               "--bounding-set=-all", "--no-new-privs"]
    probe = subprocess.run([*setpriv, "cat", str(other)], capture_output=True, text=True)
    assert probe.returncode != 0 and "Permission denied" in probe.stderr  # the capabilities really are gone
    with running_page(tmp_path, "--cores-root", str(root), "--insecure-no-auth", prefix=tuple(setpriv)) as page:
        (worker,) = page.worker_pids()
        status = Path(f"/proc/{worker}/status").read_text()
        caps = {line.split(":")[0]: int(line.split()[1], 16) for line in status.splitlines() if line.startswith("Cap")}
        assert caps["CapEff"] == caps["CapPrm"] == caps["CapBnd"] == 0
        assert "NoNewPrivs:\t1" in status
        html = requests.get(page.url, timeout=10).text
        assert "web-1" in html
        _check_download(page, core, root)
