"""Registry resolution against a real docker-registry (distribution) on 127.0.0.1.

Three registry processes share one storage directory: an open one (images are pushed through
it), one with htpasswd basic auth and one with real token auth, whose JWTs come from a tiny token
server written here and are verified by the registry itself. Pull secrets come through a real
kubernetes ApiClient from recorded API responses (tests/recorded/registry/).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.server
import io
import json
import os
import platform
import socket
import subprocess
import tarfile
import threading
import time
import urllib.parse
import warnings
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from tests.process_support import free_port
from tests.registry_support import LoopbackCA, self_signed_ca, serve
from tests.suite_support import which_or_fail
from webhook.registry.challenges import parse_challenge
from webhook.registry.config import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, ImageConfig
from webhook.registry.credentials import Credential, credentials_for, decode_pull_secret
from webhook.registry.platforms import choose_platform, host_platform
from webhook.registry.references import parse_image_ref
from webhook.registry.resolver import RegistryResolver
from webhook.registry.responses import ResolveError
from webhook.registry.secrets import read_pull_secrets, secret_reader_for
from webhook.registry.settings import RegistrySettings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt  # bcrypt through libxcrypt: the only htpasswd format distribution accepts

RECORDED = Path(__file__).parent / "recorded" / "registry"
USER, PASSWORD = "puller", "pull-secret-pw"
SERVICE, ISSUER = "test-registry", "test-token-issuer"


#: Set by the ``registries`` fixture: the CA that signed the token server's certificate.
TEST_CA: LoopbackCA | None = None


# --- the registries ----------------------------------------------------------------------------
class TokenIssuer:
    """Signs registry tokens (RS256 JWT with an x5c chain) the way a real token service does."""

    def __init__(self, tmp: Path) -> None:
        self.key, self.cert = self_signed_ca("test token signer")
        self.bundle = tmp / "token-signer.pem"
        self.bundle.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.requests: list[dict] = []

    @staticmethod
    def _b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    def token(self, subject: str, scope: str) -> str:
        kind, name, actions = scope.split(":", 2)
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256",
                  "x5c": [base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()]}
        claims = {"iss": ISSUER, "sub": subject, "aud": SERVICE, "exp": now + 300, "nbf": now - 10, "iat": now,
                  "jti": os.urandom(8).hex(), "access": [{"type": kind, "name": name, "actions": actions.split(",")}]}
        signing_input = f"{self._b64(json.dumps(header).encode())}.{self._b64(json.dumps(claims).encode())}"
        sig = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{self._b64(sig)}"


def token_handler(issuer: TokenIssuer):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
            auth = self.headers.get("Authorization", "")
            user = None
            if auth.startswith("Basic "):
                u, _, p = base64.b64decode(auth[6:]).decode().partition(":")
                if (u, p) != (USER, PASSWORD):
                    return self._send(401, {"details": "bad credentials"})
                user = u
            scope = query.get("scope", "")
            issuer.requests.append({"user": user, **query})
            repo = scope.split(":")[1] if scope.count(":") == 2 else ""
            if query.get("service") != SERVICE or not scope:
                return self._send(400, {"details": "service and scope required"})
            if not repo.startswith("public/") and user is None:
                return self._send(401, {"details": "authentication required"})
            self._send(200, {"token": issuer.token(user or "anonymous", scope), "expires_in": 300})

        def _send(self, code, obj):
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def start_registry(tmp: Path, name: str, storage: Path, auth: dict | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    config = {"version": 0.1, "log": {"level": "info", "accesslog": {"disabled": False}},
              "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
              "http": {"addr": f"127.0.0.1:{port}"}}
    if auth:
        config["auth"] = auth
    cfg = tmp / f"{name}.yml"
    cfg.write_text(json.dumps(config))  # JSON is YAML
    log = open(tmp / f"{name}.log", "w")
    proc = subprocess.Popen([which_or_fail("docker-registry"), "serve", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    host = f"127.0.0.1:{port}"
    for _ in range(200):
        try:
            if requests.get(f"http://{host}/v2/", timeout=1).status_code in (200, 401):
                return proc, host
        except requests.ConnectionError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.kill()
    raise RuntimeError(f"docker-registry {name} did not start: {(tmp / f'{name}.log').read_text()[-2000:]}")


class Registries:
    open: str
    basic: str
    token: str
    issuer: TokenIssuer


@pytest.fixture(scope="session")
def registries(tmp_path_factory):
    """The three registries (open, htpasswd, token) over one storage, stopped at the end."""
    tmp = tmp_path_factory.mktemp("registry")
    storage = tmp / "storage"
    storage.mkdir()
    htpasswd = tmp / "htpasswd"
    htpasswd.write_text(f"{USER}:{crypt.crypt(PASSWORD, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))}\n")
    issuer = TokenIssuer(tmp)
    global TEST_CA
    TEST_CA = LoopbackCA(tmp)
    token_srv, token_port = serve(token_handler(issuer), tls=TEST_CA)
    procs = []
    try:
        r = Registries()
        r.issuer = issuer
        proc, r.open = start_registry(tmp, "open", storage, None)
        procs.append(proc)
        proc, r.basic = start_registry(tmp, "basic", storage, {"htpasswd": {"realm": "test", "path": str(htpasswd)}})
        procs.append(proc)
        proc, r.token = start_registry(tmp, "token", storage, {"token": {
            "realm": f"https://127.0.0.1:{token_port}/token", "service": SERVICE, "issuer": ISSUER,
            "rootcertbundle": str(issuer.bundle)}})
        procs.append(proc)
        yield r
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        token_srv.shutdown()
        token_srv.server_close()


# --- pushing images through the v2 API ---------------------------------------------------------
def push_blob(host: str, repo: str, data: bytes) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = requests.post(f"http://{host}/v2/{repo}/blobs/uploads/", timeout=5)
    assert r.status_code == 202, r.text
    loc = urllib.parse.urljoin(f"http://{host}/", r.headers["Location"])
    r = requests.put(loc + ("&" if "?" in loc else "?") + urllib.parse.urlencode({"digest": digest}), data=data,
                     headers={"Content-Type": "application/octet-stream"}, timeout=5)
    assert r.status_code == 201, r.text
    return {"digest": digest, "size": len(data)}


def push_manifest(host: str, repo: str, ref: str, manifest: dict, media_type: str) -> dict:
    body = json.dumps(manifest, indent=3).encode()
    r = requests.put(f"http://{host}/v2/{repo}/manifests/{ref}", data=body, headers={"Content-Type": media_type}, timeout=5)
    assert r.status_code == 201, r.text
    return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(body).hexdigest(), "size": len(body)}


def tiny_layer(text: str) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        data = text.encode()
        info = tarfile.TarInfo("hello.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def push_image(host: str, repo: str, tag: str | None, entrypoint, cmd, arch="amd64", oci=False, extra_config=None) -> dict:
    """Config blob + one layer + a schema2 (or OCI) manifest; returns the manifest descriptor."""
    layer = tiny_layer(f"{repo} {arch} {entrypoint} {cmd}")
    diff_id = "sha256:" + hashlib.sha256(gzip.decompress(layer)).hexdigest()
    config = {"architecture": arch, "os": "linux", "config": {"Env": ["PATH=/usr/bin:/bin"], "Entrypoint": entrypoint,
              "Cmd": cmd, **(extra_config or {})}, "rootfs": {"type": "layers", "diff_ids": [diff_id]}}
    cdesc = push_blob(host, repo, json.dumps(config).encode())
    ldesc = push_blob(host, repo, layer)
    if oci:
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **cdesc},
                    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **ldesc}]}
        mt = OCI_MANIFEST
    else:
        manifest = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                    "config": {"mediaType": "application/vnd.docker.container.image.v1+json", **cdesc},
                    "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", **ldesc}]}
        mt = DOCKER_MANIFEST
    return push_manifest(host, repo, tag or "sha256:" + hashlib.sha256(json.dumps(manifest, indent=3).encode()).hexdigest(), manifest, mt)


@pytest.fixture(scope="session")
def images(registries):
    """Pushes every test image once; returns their descriptors by name."""
    h = registries.open
    out = {}
    out["single"] = push_image(h, "team/single", "1.0", ["/app/server", "--port", "8080"], ["--verbose"])
    out["nulls"] = push_image(h, "team/nulls", "latest", None, None)
    out["cmd-only"] = push_image(h, "library/busybox", "1.36", None, ["sh"])
    amd = push_image(h, "team/multi", None, ["/bin/amd64-entry"], ["a"], arch="amd64", oci=True)
    arm = push_image(h, "team/multi", None, ["/bin/arm64-entry"], ["b"], arch="arm64", oci=True)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {**amd, "platform": {"os": "linux", "architecture": "amd64"}},
        {**arm, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        {**amd, "platform": {"os": "unknown", "architecture": "unknown"}},  # like buildx attestations
    ]}
    out["index"] = push_manifest(h, "team/multi", "2.0", index, OCI_INDEX)
    out["index-amd64"], out["index-arm64"] = amd, arm
    l_amd = push_image(h, "team/listed", None, ["/list-amd64"], [], arch="amd64")
    l_arm = push_image(h, "team/listed", None, ["/list-arm"], [], arch="arm")
    mlist = {"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [
        {**l_arm, "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
        {**l_amd, "platform": {"os": "linux", "architecture": "amd64"}},
    ]}
    out["list"] = push_manifest(h, "team/listed", "3", mlist, DOCKER_LIST)
    out["private"] = push_image(h, "team/app", "1", ["/private-entry"], ["serve"])
    out["public"] = push_image(h, "public/tool", "1", ["/public-entry"], [])
    return out


class CountingSession(requests.Session):
    """A real requests.Session that records every request it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def request(self, method, url, *args, **kwargs):
        self.urls.append(url)
        return super().request(method, url, *args, **kwargs)


def resolver(**overrides) -> tuple[RegistryResolver, CountingSession]:
    session = CountingSession()
    reader = overrides.pop("secret_reader", None)
    # The registries of the tests are on loopback over plain HTTP: allowed only when configured.
    defaults = {"negative_ttl_seconds": 0, "insecure_registries": ("127.0.0.1",), "allowed_networks": ("127.0.0.1/32",),
                "ca_file": str(TEST_CA.bundle) if TEST_CA else None}
    settings = RegistrySettings(**{**defaults, **overrides})
    return RegistryResolver(settings, secret_reader=reader, session=session), session


def resolve(r: RegistryResolver, image: str, **kw) -> ImageConfig:
    return r(image, namespace=kw.pop("namespace", "team-a"), pull_secrets=kw.pop("pull_secrets", []), deadline=kw.pop("deadline", None))


# --- pure parts --------------------------------------------------------------------------------
@pytest.mark.parametrize("image,expected", [
    ("nginx", ("docker.io", "library/nginx", "latest", None)),
    ("nginx:1.25", ("docker.io", "library/nginx", "1.25", None)),
    ("bitnami/redis:7", ("docker.io", "bitnami/redis", "7", None)),
    ("docker.io/nginx", ("docker.io", "library/nginx", "latest", None)),
    ("index.docker.io/library/nginx:1", ("docker.io", "library/nginx", "1", None)),
    ("quay.io/prometheus/node-exporter:v1.8.0", ("quay.io", "prometheus/node-exporter", "v1.8.0", None)),
    ("localhost/app", ("localhost", "app", "latest", None)),
    ("localhost:5000/team/app:dev", ("localhost:5000", "team/app", "dev", None)),
    ("registry.example.com:443/a/b/c@sha256:" + "a" * 64, ("registry.example.com:443", "a/b/c", None, "sha256:" + "a" * 64)),
    ("gcr.io/distroless/static:nonroot@sha256:" + "b" * 64, ("gcr.io", "distroless/static", "nonroot", "sha256:" + "b" * 64)),
    ("[::1]:5000/x:y", ("[::1]:5000", "x", "y", None)),
])
def test_parse_image_ref(image, expected):
    ref = parse_image_ref(image)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == expected
    assert ref.reference == (expected[3] or expected[2])


@pytest.mark.parametrize("image", ["", " nginx", "Nginx", "nginx:", "nginx:-bad", "a//b", "nginx@sha256:short",
                                   "quay.io/UPPER/x", "x" * 300])
def test_parse_image_ref_rejects(image):
    with pytest.raises(ValueError):
        parse_image_ref(image)


def test_parse_challenge():
    scheme, params = parse_challenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                                     'scope="repository:library/ubuntu:pull,push",error="insufficient_scope"')
    assert scheme == "bearer"
    assert params == {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                      "scope": "repository:library/ubuntu:pull,push", "error": "insufficient_scope"}
    assert parse_challenge('Basic realm="Registry Realm"') == ("basic", {"realm": "Registry Realm"})


def test_choose_platform_arm64_variant_and_missing():
    index = {"manifests": [{"digest": "sha256:1", "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                           {"digest": "sha256:2", "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}}]}
    assert choose_platform(index, "linux/arm64")["digest"] == "sha256:1"
    assert choose_platform(index, "linux/arm64/v8")["digest"] == "sha256:1"
    assert choose_platform(index, "linux/arm")["digest"] == "sha256:2"
    with pytest.raises(ValueError, match="linux/amd64.*offers: linux/arm64/v8, linux/arm/v7"):
        choose_platform(index, "linux/amd64")


def test_decode_pull_secrets_from_recorded_objects():
    hub = decode_pull_secret(json.loads((RECORDED / "team-a__hub-pull.json").read_text()))
    assert hub["https://index.docker.io/v1/"] == Credential(USER, PASSWORD)
    assert hub["quay.io"] == Credential("other", "nope")
    legacy = decode_pull_secret(json.loads((RECORDED / "team-a__legacy-pull.json").read_text()))
    assert legacy == {"index.docker.io": Credential(USER, PASSWORD)}
    with pytest.raises(ValueError, match="Opaque"):
        decode_pull_secret(json.loads((RECORDED / "team-a__app-config.json").read_text()))
    with pytest.raises(ValueError, match="not base64 JSON"):
        decode_pull_secret({"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": "!!"}})


def test_credentials_matching():
    a, b, c, d = (Credential(n, "p") for n in "abcd")
    configs = [{"https://index.docker.io/v1/": a, "*.example.com": b, "registry.example.com/team": c,
                "localhost:5000": d}]
    assert credentials_for(parse_image_ref("nginx"), configs) is a
    assert credentials_for(parse_image_ref("registry.example.com/team/app"), configs) is c
    assert credentials_for(parse_image_ref("registry.example.com/other/app"), configs) is b
    assert credentials_for(parse_image_ref("a.b.example.com/x"), configs) is None  # one label per '*'
    assert credentials_for(parse_image_ref("localhost:5000/x"), configs) is d
    assert credentials_for(parse_image_ref("localhost:5001/x"), configs) is None
    assert credentials_for(parse_image_ref("quay.io/x"), configs) is None


def test_settings_validate():
    with pytest.raises(ValueError, match="platform"):
        RegistrySettings(platform="amd64")
    with pytest.raises(ValueError, match="timeout"):
        RegistrySettings(timeout_seconds=0)


def test_default_platform_is_this_machines():
    """Unset (the chart's default), the platform follows the node the webhook runs on."""
    machine = platform.machine()
    expected = {"x86_64": "linux/amd64", "aarch64": "linux/arm64"}[machine]
    assert host_platform() == RegistrySettings().platform == RegistrySettings(platform="").platform == expected
    assert [host_platform(m) for m in ("x86_64", "aarch64", "arm64", "armv7l", "s390x")] == [
        "linux/amd64", "linux/arm64", "linux/arm64", "linux/arm/v7", "linux/s390x"]
    assert RegistrySettings(platform="linux/arm64/v8").platform == "linux/arm64/v8"
    index = {"manifests": [{"digest": "sha256:1", "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                           {"digest": "sha256:2", "platform": {"os": "linux", "architecture": "amd64"}}]}
    picked = {"linux/amd64": "sha256:2", "linux/arm64": "sha256:1"}[expected]
    assert choose_platform(index, RegistrySettings().platform)["digest"] == picked


# --- against the real registry -----------------------------------------------------------------
def test_single_manifest(registries, images):
    r, session = resolver()
    got = resolve(r, f"{registries.open}/team/single:1.0")
    assert got == ImageConfig(["/app/server", "--port", "8080"], ["--verbose"], images["single"]["digest"])
    assert len(session.urls) == 2  # manifest + config blob


def test_null_entrypoint_and_cmd_are_empty(registries, images):
    r, _ = resolver()
    assert resolve(r, f"{registries.open}/team/nulls") == ImageConfig([], [], images["nulls"]["digest"])


def test_oci_index_picks_the_platform(registries, images):
    amd, _ = resolver()
    got = resolve(amd, f"{registries.open}/team/multi:2.0")
    assert got == ImageConfig(["/bin/amd64-entry"], ["a"], images["index"]["digest"])
    arm, _ = resolver(platform="linux/arm64")
    assert resolve(arm, f"{registries.open}/team/multi:2.0").entrypoint == ["/bin/arm64-entry"]
    s390, _ = resolver(platform="linux/s390x")
    with pytest.raises(ResolveError, match=r"team/multi:2.0.*no manifest for platform linux/s390x.*linux/amd64"):
        resolve(s390, f"{registries.open}/team/multi:2.0")


def test_docker_manifest_list(registries, images):
    r, _ = resolver()
    assert resolve(r, f"{registries.open}/team/listed:3").entrypoint == ["/list-amd64"]
    arm, _ = resolver(platform="linux/arm/v7")
    got = resolve(arm, f"{registries.open}/team/listed:3")
    assert got == ImageConfig(["/list-arm"], [], images["list"]["digest"])


def test_by_digest(registries, images):
    r, _ = resolver()
    got = resolve(r, f"{registries.open}/team/multi@{images['index-arm64']['digest']}")
    assert got.entrypoint == ["/bin/arm64-entry"] and got.digest == images["index-arm64"]["digest"]
    got = resolve(r, f"{registries.open}/team/multi:ignored@{images['index']['digest']}")
    assert got.entrypoint == ["/bin/amd64-entry"]


def test_docker_hub_defaulting_goes_to_the_configured_hub_host(registries, images):
    r, session = resolver(docker_hub_host=registries.open)
    assert resolve(r, "busybox:1.36") == ImageConfig([], ["sh"], images["cmd-only"]["digest"])
    assert session.urls[0] == f"http://{registries.open}/v2/library/busybox/manifests/1.36"


def test_missing_image_and_tag(registries, images):
    r, _ = resolver()
    with pytest.raises(ResolveError, match=r"team/nothing-here:1.*HTTP 404.*(NAME_UNKNOWN|MANIFEST_UNKNOWN)"):
        resolve(r, f"{registries.open}/team/nothing-here:1")
    with pytest.raises(ResolveError, match=r"team/single:9.9.*HTTP 404.*MANIFEST_UNKNOWN"):
        resolve(r, f"{registries.open}/team/single:9.9")
    with pytest.raises(ResolveError, match="cannot parse"):
        resolve(r, "Bad Image")


def test_unreachable_registry(registries):
    r, _ = resolver()
    with pytest.raises(ResolveError, match=r"cannot reach 127.0.0.1:\d+"):
        resolve(r, f"127.0.0.1:{free_port()}/team/x:1")


def test_cache_and_ttl(registries, images):
    r, session = resolver(cache_ttl_seconds=0.5)
    image = f"{registries.open}/team/single:1.0"
    first = resolve(r, image)
    n = len(session.urls)
    assert resolve(r, image) == first
    assert len(session.urls) == n, "a cached resolution must not touch the network"
    time.sleep(0.6)
    assert resolve(r, image) == first
    # after expiry the tag is looked up again, but the config of a known digest is not refetched
    assert session.urls[n:] == [f"http://{registries.open}/v2/team/single/manifests/1.0"]
    # digest references never expire
    pinned = f"{registries.open}/team/single@{images['single']['digest']}"
    resolve(r, pinned)
    n = len(session.urls)
    time.sleep(0.6)
    resolve(r, pinned)
    assert len(session.urls) == n


def test_failures_are_remembered_briefly(registries):
    r, session = resolver(negative_ttl_seconds=30)
    image = f"{registries.open}/team/later:1"
    with pytest.raises(ResolveError, match="404"):
        resolve(r, image)
    n = len(session.urls)
    with pytest.raises(ResolveError, match="cached failure"):
        resolve(r, image)
    assert len(session.urls) == n


def test_registry_that_stalls_is_abandoned_within_the_budget():
    with socket.socket() as listener:  # the kernel completes the handshake; nobody ever answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        host = f"127.0.0.1:{listener.getsockname()[1]}"
        r, _ = resolver(timeout_seconds=0.8)
        start = time.monotonic()
        with pytest.raises(ResolveError, match=r"did not answer within 0.8s"):
            resolve(r, f"{host}/team/app:1")
        assert time.monotonic() - start < 0.8 + 0.25
        # the admission deadline shortens the budget further
        r, _ = resolver(timeout_seconds=10)
        start = time.monotonic()
        with pytest.raises(ResolveError, match=r"did not answer within 0.[34]s"):
            resolve(r, f"{host}/team/app:2", deadline=time.monotonic() + 0.4)
        assert time.monotonic() - start < 0.4 + 0.25
        with pytest.raises(ResolveError, match="no time left"):
            resolve(r, f"{host}/team/app:3", deadline=time.monotonic() - 1)


def test_registry_that_trickles_is_abandoned_within_the_budget():
    """Each byte arrives before any socket timeout: only the overall budget stops this."""
    stop = threading.Event()

    class Trickle(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            while not stop.is_set():
                try:
                    self.wfile.write(b"X-Slow: y\r\n")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.05)

    srv, port = serve(Trickle)
    try:
        r, _ = resolver(timeout_seconds=0.6)
        start = time.monotonic()
        with pytest.raises(ResolveError, match="did not answer within"):
            resolve(r, f"127.0.0.1:{port}/team/app:1")
        assert time.monotonic() - start < 0.6 + 0.25
    finally:
        stop.set()
        srv.shutdown()
        srv.server_close()


# --- auth --------------------------------------------------------------------------------------
def test_bearer_token_anonymous(registries, images):
    r, session = resolver()
    before = len(registries.issuer.requests)
    got = resolve(r, f"{registries.token}/public/tool:1")
    assert got == ImageConfig(["/public-entry"], [], images["public"]["digest"])
    assert registries.issuer.requests[before:] == [
        {"user": None, "service": SERVICE, "scope": "repository:public/tool:pull"}]
    # manifest (401), token, manifest, config blob
    assert len(session.urls) == 4 and "/token?" in session.urls[1]


def test_bearer_token_needs_credentials(registries, images):
    r, _ = resolver()
    with pytest.raises(ResolveError, match=r"team/app:1.*token server .*HTTP 401"):
        resolve(r, f"{registries.token}/team/app:1")


def _api_server():
    """Serves the recorded API responses: GET /api/v1/namespaces/NS/secrets/NAME."""
    calls: list[str] = []

    class Api(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            calls.append(self.path)
            parts = urllib.parse.urlsplit(self.path).path.strip("/").split("/")
            file = None
            if len(parts) == 6 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "secrets":
                file = RECORDED / f"{parts[3]}__{parts[5]}.json"
            if file is None or not file.exists():
                body, code = b'{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}', 404
            else:
                body = file.read_bytes()
                obj = json.loads(body)
                code = obj.get("code", 200) if obj.get("kind") == "Status" else 200
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv, port = serve(Api)
    return srv, port, calls


@pytest.fixture
def core_api():
    from kubernetes import client

    srv, port, calls = _api_server()
    cfg = client.Configuration()
    cfg.host = f"http://127.0.0.1:{port}"
    api_client = client.ApiClient(cfg)
    try:
        yield client.CoreV1Api(api_client), calls
    finally:
        api_client.close()
        srv.shutdown()
        srv.server_close()


def test_read_pull_secrets_against_recorded_api(core_api):
    from kubernetes.client.rest import ApiException

    api, calls = core_api
    got = read_pull_secrets(api, "team-a", ["hub-pull", "gone", "legacy-pull"])
    assert [s["metadata"]["name"] for s in got] == ["hub-pull", "legacy-pull"]  # the missing one is skipped
    assert got[0]["type"] == "kubernetes.io/dockerconfigjson"
    assert calls == ["/api/v1/namespaces/team-a/secrets/hub-pull", "/api/v1/namespaces/team-a/secrets/gone",
                     "/api/v1/namespaces/team-a/secrets/legacy-pull"]
    with pytest.raises(ApiException) as e:
        read_pull_secrets(api, "locked", ["hub-pull"])
    assert e.value.status == 403


def test_bearer_token_with_pull_secret(registries, images, core_api):
    api, _ = core_api
    r, session = resolver(read_pull_secrets=True, secret_reader=secret_reader_for(api), docker_hub_host=registries.token)
    before = len(registries.issuer.requests)
    got = resolve(r, "team/app:1", pull_secrets=["gone", "hub-pull"])
    assert got == ImageConfig(["/private-entry"], ["serve"], images["private"]["digest"])
    assert registries.issuer.requests[before:] == [{"user": USER, "service": SERVICE, "scope": "repository:team/app:pull"}]
    # the token is reused for the same repository: a new tag costs no token request
    n = len(session.urls)
    with pytest.raises(ResolveError, match="MANIFEST_UNKNOWN"):
        resolve(r, "team/app:2", pull_secrets=["hub-pull"])
    assert len(registries.issuer.requests) == before + 1
    assert len(session.urls) == n + 1


def test_basic_auth_with_pull_secrets(registries, images, core_api):
    api, _ = core_api
    image = "team/app:1"
    anon, _ = resolver(docker_hub_host=registries.basic)
    with pytest.raises(ResolveError, match=r"team/app:1 \(docker.io/team/app:1\): manifest 1: HTTP 401.*needs pull credentials"):
        resolve(anon, image)
    for secret in ("hub-pull", "legacy-pull"):
        r, session = resolver(read_pull_secrets=True, secret_reader=secret_reader_for(api), docker_hub_host=registries.basic)
        assert resolve(r, image, pull_secrets=[secret]).entrypoint == ["/private-entry"]
        assert len(session.urls) == 3  # 401, manifest with Basic, config blob
    r, _ = resolver(read_pull_secrets=True, secret_reader=secret_reader_for(api), docker_hub_host=registries.basic)
    with pytest.raises(ResolveError, match="credentials were refused"):
        resolve(r, image, pull_secrets=["wrong-pull"])
    # reading secrets is forbidden: anonymous attempt, and the error says why credentials were missing
    with pytest.raises(ResolveError, match=r"HTTP 401.*pull secrets not readable.*403"):
        resolve(r, image, namespace="locked", pull_secrets=["hub-pull"])
    # read_pull_secrets off: the secrets are never read
    off, _ = resolver(read_pull_secrets=False, secret_reader=secret_reader_for(api), docker_hub_host=registries.basic)
    with pytest.raises(ResolveError, match="needs pull credentials"):
        resolve(off, image, pull_secrets=["hub-pull"])


def test_credentials_are_part_of_the_cache_key(registries, images, core_api):
    api, _ = core_api
    r, _ = resolver(read_pull_secrets=True, secret_reader=secret_reader_for(api), docker_hub_host=registries.basic)
    assert resolve(r, "team/app:1", pull_secrets=["hub-pull"]).entrypoint == ["/private-entry"]
    with pytest.raises(ResolveError, match="401"):  # another pod without the secret gets nothing from the cache
        resolve(r, "team/app:1", pull_secrets=[])


def test_click_options_fill_the_settings(monkeypatch):
    import click
    from click.testing import CliRunner

    from webhook.cli_options import settings_from, settings_options

    seen = {}

    @click.command()
    @settings_options(RegistrySettings)
    def cmd(**params):
        seen["settings"] = settings_from(RegistrySettings, params)

    env = {"COREDUMP_REGISTRY_TIMEOUT": "1.5", "COREDUMP_REGISTRY_INSECURE": "registry.local:5000 10.0.0.7",
           "COREDUMP_REGISTRY_READ_PULL_SECRETS": "true", "COREDUMP_REGISTRY_PLATFORM": "linux/arm64"}
    res = CliRunner().invoke(cmd, ["--registry-cache-ttl", "60"], env=env)
    assert res.exit_code == 0, res.output
    assert seen["settings"] == RegistrySettings(timeout_seconds=1.5, cache_ttl_seconds=60, platform="linux/arm64",
                                                insecure_registries=("registry.local:5000", "10.0.0.7"),
                                                read_pull_secrets=True)


def test_malformed_registry_answers_are_resolve_errors():
    """A broken or hostile registry yields ResolveError with a reason, never another exception."""
    good_config = json.dumps({"config": {"Entrypoint": ["/x"]}}).encode()
    good_digest = "sha256:" + hashlib.sha256(good_config).hexdigest()

    def manifest(config_digest=good_digest):
        return json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                           "config": {"mediaType": "x", "digest": config_digest, "size": 1}}).encode()

    bad_config = json.dumps({"config": {"Entrypoint": 7}}).encode()
    bad_config_digest = "sha256:" + hashlib.sha256(bad_config).hexdigest()
    routes = {
        "notjson": (200, b"<html>hello</html>"),
        "list": (200, b"[1, 2]"),
        "noconfig": (200, json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST}).encode()),
        "badindex": (200, json.dumps({"mediaType": OCI_INDEX, "manifests": "nope"}).encode()),
        "badentry": (200, json.dumps({"mediaType": OCI_INDEX, "manifests": [
            {"digest": 5, "platform": {"os": "linux", "architecture": "amd64"}}]}).encode()),
        "huge": (200, b" " * (5 << 20)),
        "mismatch": (200, manifest("sha256:" + "0" * 64)),
        "badtype": (200, manifest(bad_config_digest)),
        "oops": (500, b"<html>internal error</html>"),
        "teapot": (401, b"{}"),
        "blobs/" + good_digest: (200, good_config),
        "blobs/" + bad_config_digest: (200, bad_config),
        "blobs/sha256:" + "0" * 64: (200, good_config),
    }

    class Bad(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            key = self.path.rsplit("/manifests/", 1)[-1] if "/manifests/" in self.path else "blobs/" + self.path.rsplit("/", 1)[-1]
            code, body = routes.get(key, (404, b""))
            self.send_response(code)
            if code == 401:
                self.send_header("WWW-Authenticate", "Weird scheme")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv, port = serve(Bad)
    try:
        r, _ = resolver(timeout_seconds=5)
        expect = {
            "notjson": "manifest is not JSON", "list": "not a JSON object", "noconfig": "no config descriptor",
            "badindex": "index without a manifests list", "badentry": "without a valid digest",
            "huge": "larger than", "mismatch": "does not match digest", "badtype": "Entrypoint is not a list",
            "oops": "HTTP 500", "teapot": "HTTP 401",
        }
        for tag, reason in expect.items():
            with pytest.raises(ResolveError) as e:
                resolve(r, f"127.0.0.1:{port}/bad/image:{tag}")
            assert f"127.0.0.1:{port}/bad/image:{tag}" in str(e.value) and reason in str(e.value), str(e.value)
    finally:
        srv.shutdown()
        srv.server_close()


# --- issue 12: image commands keep their meaning, look-ups run side by side ------------------------
def k8s_expand(value: str, env: dict[str, str]) -> str:
    """What the kubelet does to a ``command``/``args`` item (its expansion rules): ``$$`` is a
    literal ``$``, ``$(VAR)`` a defined variable's value (kept as written when undefined), any
    other ``$`` stays."""
    out, i = [], 0
    while i < len(value):
        if value[i] == "$" and i + 1 < len(value):
            nxt = value[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = value.find(")", i + 2)
                if end != -1:
                    name = value[i + 2:end]
                    out.append(env[name] if name in env else value[i:end + 1])
                    i = end + 1
                    continue
        out.append(value[i])
        i += 1
    return "".join(out)


def test_image_commands_with_dollars_keep_their_meaning(registries):
    """A real registry image whose config holds $, $$ and $(VAR): copied into the pod, the
    kubelet's expansion must give back exactly what the image says."""
    from admission_support import make_pod, mutate_apply

    entrypoint = ["/bin/sh", "-c", "echo pid=$$ home=$(HOME) cost=$5 tail=$"]
    cmd = ["--price=$(PRICE)", "$$$", "plain"]
    push_image(registries.open, "team/dollars", "1", entrypoint, cmd)
    r, _ = resolver()
    image = f"{registries.open}/team/dollars:1"
    pod = make_pod([{"name": "app", "image": image, "env": [{"name": "HOME", "value": "/home/app"},
                                                             {"name": "PRICE", "value": "9"}]}])
    after, _ = mutate_apply(pod, resolve_image=r)
    c = after["spec"]["containers"][0]
    env = {"HOME": "/home/app", "PRICE": "9"}
    assert [k8s_expand(v, env) for v in c["command"][1:]] == entrypoint
    assert [k8s_expand(v, env) for v in c["args"]] == cmd
    assert c["command"][3] == "echo pid=$$$$ home=$$(HOME) cost=$$5 tail=$$"


class DelayProxy:
    """Forwards HTTP requests to a real registry after ``delay`` seconds: a slow registry."""

    def __init__(self, upstream: str, delay: float) -> None:
        self.active = 0
        self.peak = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                with proxy.lock:
                    proxy.active += 1
                    proxy.peak = max(proxy.peak, proxy.active)
                try:
                    time.sleep(delay)
                    resp = requests.get(f"http://{upstream}{self.path}", headers={"Accept": self.headers.get("Accept", "*/*")}, timeout=5)
                    body = resp.content
                    self.send_response(resp.status_code)
                    for key in ("Content-Type", "Docker-Content-Digest"):
                        if key in resp.headers:
                            self.send_header(key, resp.headers[key])
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                finally:
                    with proxy.lock:
                        proxy.active -= 1

        self.srv, port = serve(Handler)
        self.host = f"127.0.0.1:{port}"

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()


def test_a_pods_images_resolve_concurrently_with_a_per_registry_bound(registries):
    """20 images behind a 150 ms registry: one after another they would take 6 s (two requests
    each), over the 3 s admission budget; side by side, at most 4 at a time, all are wrapped."""
    from admission_support import make_pod, mutate_apply

    from webhook.admission.settings import AdmissionSettings

    for i in range(20):
        push_image(registries.open, "team/many", f"v{i}", [f"/entry-{i}"], [])
    proxy = DelayProxy(registries.open, 0.15)
    try:
        r, _ = resolver(per_registry_concurrency=4, timeout_seconds=3)
        pod = make_pod([{"name": f"c{i}", "image": f"{proxy.host}/team/many:v{i}"} for i in range(20)])
        deadline = time.monotonic() + AdmissionSettings().admission_budget_seconds
        start = time.monotonic()
        after, result = mutate_apply(pod, resolve_image=r, deadline=deadline)
        took = time.monotonic() - start
    finally:
        proxy.close()
    commands = [c.get("command") for c in after["spec"]["containers"]]
    assert commands == [[C_WRAPPER, f"/entry-{i}"] for i in range(20)], result.warnings
    # side by side at the registry, never more than 4 look-ups at once (the proxy's own count can
    # overlap by one: a handler finishes its bookkeeping after the client already has the answer)
    assert proxy.peak > 1 and 2 <= r.pool.peak[proxy.host] <= 4
    assert took < 3.0


C_WRAPPER = "/.coredump-webhook/coredump-wrapper"


def test_identical_lookups_in_flight_are_shared(registries, images):
    proxy = DelayProxy(registries.open, 0.2)
    try:
        r, session = resolver()
        image = f"{proxy.host}/team/single:1.0"
        results = []
        threads = [threading.Thread(target=lambda: results.append(resolve(r, image))) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        proxy.close()
    assert len(results) == 8 and all(x.entrypoint == ["/app/server", "--port", "8080"] for x in results)
    assert len(session.urls) == 2  # one manifest, one config blob for eight pods
