"""The Dockerfile, checked without a Docker engine (none runs on these machines).

The Dockerfile is parsed; every file it copies from the build context must exist and survive
.dockerignore; the build steps it runs are run here for real on a copy of the build context
(the same `webhook/native/build.sh`, the same `pip install .` as a wheel build), and their
outputs checked: static binaries at the paths webhook/constants.py names, a wheel holding
every module and the C sources. The final stage's user, entry point and labels are asserted.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import struct
import subprocess
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest
import yaml

import webhook
from tests.crash_support import gdb_core
from tests.native_support import is_static_elf
from webhook import constants as C

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
VENV_PIP = REPO / ".venv" / "bin" / "pip"


# --- a small Dockerfile parser ----------------------------------------------------------------


@dataclass
class Instruction:
    name: str
    args: str


@dataclass
class Stage:
    base: str
    alias: str | None
    instructions: list[Instruction] = field(default_factory=list)
    #: FROM --platform=... (unexpanded), or None.
    platform: str | None = None

    def all(self, name: str) -> list[Instruction]:
        return [i for i in self.instructions if i.name == name]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages). Handles comments, line continuations and `AS` aliases."""
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # comment lines inside a continued instruction are dropped by Docker
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    assert not buf, "dangling line continuation"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        name, _, rest = line.partition(" ")
        name = name.upper()
        rest = rest.strip()
        if name == "FROM":
            parts = rest.split()
            platform = next((p.partition("=")[2] for p in parts if p.startswith("--platform=")), None)
            parts = [p for p in parts if not p.startswith("--platform")]
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), parts[0])
            alias = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base, alias, platform=platform))
        elif not stages and name == "ARG":
            key, _, default = rest.partition("=")
            args[key] = default
        else:
            assert stages, f"{name} before FROM"
            stages[-1].instructions.append(Instruction(name, rest))
    return args, stages


def copy_parts(instruction: Instruction) -> tuple[dict[str, str], list[str], str]:
    """(flags, sources, destination) of a COPY (shell form only, as this Dockerfile uses)."""
    words = shlex.split(instruction.args)
    flags = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        flags[key] = value
    return flags, words[:-1], words[-1]


# --- .dockerignore, with Docker's semantics ---------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out + "$")


def load_dockerignore(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        line = line[1:].strip() if negate else line
        line = os.path.normpath(line).lstrip("/")
        rules.append((negate, _pattern_regex(line)))
    return rules


def excluded(rules: list[tuple[bool, re.Pattern[str]]], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for negate, regex in rules:
        if any(regex.match(c) for c in candidates):
            result = not negate
    return result


def context_files() -> list[str]:
    """Every file of the repository (git's view: tracked and untracked, not ignored)."""
    proc = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                          capture_output=True, text=True, check=True)
    return [p for p in proc.stdout.splitlines() if (REPO / p).is_file()]


@pytest.fixture(scope="module")
def parsed() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def build_context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of what `docker build .` would send: the repository minus .dockerignore."""
    rules = load_dockerignore(DOCKERIGNORE.read_text())
    ctx = tmp_path_factory.mktemp("docker-context")
    for rel in context_files():
        if not excluded(rules, rel):
            dest = ctx / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest)
    return ctx


# --- the tests ------------------------------------------------------------------------------


def test_dockerignore_matcher_follows_docker_rules() -> None:
    rules = load_dockerignore("*\n!webhook/\n**/__pycache__\n!keep.txt\n")
    assert excluded(rules, "tests/test_x.py")
    assert excluded(rules, ".venv/bin/python")
    assert not excluded(rules, "webhook/cli.py")
    assert not excluded(rules, "webhook/native/build.sh")
    assert excluded(rules, "webhook/__pycache__/cli.cpython-311.pyc")
    assert not excluded(rules, "keep.txt")


def test_stages_and_final_image(parsed: tuple[dict[str, str], list[Stage]]) -> None:
    args, stages = parsed
    aliases = [s.alias for s in stages]
    assert aliases == ["native", "venv", None]
    final = stages[-1]
    assert final.base == "python:3.11-slim-bookworm"
    assert stages[1].base == final.base  # the venv's interpreter path exists in the final image
    # Only the venv and the static binaries come into the final image; no compiler there.
    sources = {copy_parts(i)[0].get("from") for i in final.all("COPY")}
    assert sources == {"venv", "native"}
    # The final stage installs gdb (signatures, gcore, `coredump debug`), elfutils and zstd (the
    # debug image) and nothing else.
    (run,) = final.all("RUN")
    assert re.search(r"apt-get install -y --no-install-recommends gdb elfutils zstd\s", run.args)
    assert "rm -rf /var/lib/apt/lists/*" in run.args and "gcc" not in run.args
    (user,) = final.all("USER")
    uid, _, gid = user.args.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit()
    chart_values = yaml.safe_load((REPO / "charts/coredump-webhook/values.yaml").read_text())
    assert int(uid) == chart_values["podSecurityContext"]["runAsUser"]
    assert int(gid) == chart_values["podSecurityContext"]["runAsGroup"]
    (entrypoint,) = final.all("ENTRYPOINT")
    assert entrypoint.args == '["coredump"]'
    env = " ".join(i.args for i in final.all("ENV"))
    assert "PATH=/opt/venv/bin:" in env


def test_oci_labels_and_versions(parsed: tuple[dict[str, str], list[Stage]]) -> None:
    from webhook.admission.settings import AdmissionSettings

    _, stages = parsed
    final = stages[-1]
    labels = dict(re.findall(r'(org\.opencontainers\.image\.[a-z]+)="([^"]*)"', " ".join(i.args for i in final.all("LABEL"))))
    for key in ("title", "description", "version", "revision", "created", "licenses", "source"):
        assert f"org.opencontainers.image.{key}" in labels, key
    version_arg = next(i.args for i in final.all("ARG") if i.args.startswith("VERSION="))
    version = version_arg.partition("=")[2]
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    chart = yaml.safe_load((REPO / "charts/coredump-webhook/Chart.yaml").read_text())
    values = yaml.safe_load((REPO / "charts/coredump-webhook/values.yaml").read_text())
    # pyproject.toml takes its version from webhook.__version__ (tests/test_versions.py).
    assert version == webhook.__version__ == chart["appVersion"]
    assert labels["org.opencontainers.image.licenses"] == pyproject["license"]["text"]
    # The image the webhook injects by default is the one the chart deploys.
    assert AdmissionSettings().image == f"{values['image']['repository']}:{chart['appVersion']}"


def test_every_copied_file_is_in_the_build_context(parsed: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = parsed
    rules = load_dockerignore(DOCKERIGNORE.read_text())
    files = context_files()
    aliases = {s.alias for s in stages if s.alias}
    checked = 0
    for stage in stages:
        for copy in stage.all("COPY"):
            flags, sources, _ = copy_parts(copy)
            if "from" in flags:
                assert flags["from"] in aliases, copy.args
                continue
            for src in sources:
                path = REPO / src
                assert path.exists(), f"COPY {src}: missing from the repository"
                inside = [f for f in files if f == src.rstrip("/") or f.startswith(src.rstrip("/") + "/")]
                kept = [f for f in inside if not excluded(rules, f)]
                assert kept, f"COPY {src}: everything excluded by .dockerignore"
                checked += 1
    assert checked >= 5


def test_native_stage_runs_the_shared_build_script(parsed: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = parsed
    native = stages[0]
    runs = " ".join(i.args for i in native.all("RUN"))
    assert "gcc" in runs and "libc6-dev" in runs
    assert 'sh webhook/native/build.sh /out/bin --arch "${TARGETARCH:-$BUILDARCH}"' in runs
    # The same script the test suite and scripts/lib.sh use.
    assert "webhook/native/build.sh" in (REPO / "scripts/lib.sh").read_text()
    assert "webhook/native/build.sh" in (REPO / "tests/conftest.py").read_text()
    (copy,) = [c for c in stages[-1].all("COPY") if copy_parts(c)[0].get("from") == "native"]
    _, sources, dest = copy_parts(copy)
    assert sources == ["/out/bin/"]
    assert dest.rstrip("/") == os.path.dirname(C.IMAGE_WRAPPER_PATH) == os.path.dirname(C.IMAGE_HELPER_PATH)


#: The ELF machine each TARGETARCH's binaries must be for (EM_X86_64, EM_AARCH64).
ELF_MACHINES = {"amd64": 62, "arm64": 183}


def _apt_packages(stage: Stage, tmp: Path, **env: str) -> list[str]:
    """Run the stage's package RUN line with apt-get (and rm) recorded instead of run, under
    these build arguments: the packages it installs (none when it skips apt-get)."""
    (run,) = [i for i in stage.all("RUN") if "apt-get install" in i.args]
    fake = tmp / ("fake-" + "-".join(f"{k}={v}" for k, v in sorted(env.items())) + f"-{stage.alias}")
    fake.mkdir()
    for name in ("apt-get", "rm"):
        (fake / name).write_text(f'#!/bin/sh\necho {name} "$@" >> {fake}/log\n')
        (fake / name).chmod(0o755)
    proc = subprocess.run(["sh", "-c", run.args], capture_output=True, text=True,
                          env={"PATH": f"{fake}:{os.environ['PATH']}", **env})
    assert proc.returncode == 0, proc.stderr
    log = (fake / "log").read_text().splitlines() if (fake / "log").exists() else []
    installs = [ln for ln in log if ln.startswith("apt-get install ")]
    assert len(installs) <= 1, installs
    return [w for ln in installs for w in ln.split()[2:] if not w.startswith("-")]


def _native_toolchain_packages(native: Stage, targetarch: str, buildarch: str, tmp: Path) -> list[str]:
    """The packages the native stage installs when building ``targetarch`` on ``buildarch``."""
    return _apt_packages(native, tmp, TARGETARCH=targetarch, BUILDARCH=buildarch)


def test_multi_platform_native_stage(parsed: tuple[dict[str, str], list[Stage]], tmp_path: Path) -> None:
    """linux/amd64 and linux/arm64 from one build: the helpers are cross-compiled on the build
    machine for each TARGETARCH with Debian's cross toolchain; the Python stages run on the target."""
    _, stages = parsed
    native = stages[0]
    assert native.platform == "$BUILDPLATFORM"  # no emulation for the C build
    assert [s.platform for s in stages[1:]] == [None, None]  # pip picks the target's wheels
    assert {i.args for i in native.all("ARG")} >= {"TARGETARCH", "BUILDARCH"}
    assert _native_toolchain_packages(native, "amd64", "amd64", tmp_path) == ["gcc", "libc6-dev"]
    assert _native_toolchain_packages(native, "arm64", "arm64", tmp_path) == ["gcc", "libc6-dev"]
    assert _native_toolchain_packages(native, "arm64", "amd64", tmp_path) == ["gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross"]
    assert _native_toolchain_packages(native, "amd64", "arm64", tmp_path) == ["gcc-x86-64-linux-gnu", "libc6-dev-amd64-cross"]
    # a plain `docker build` (no buildx: TARGETARCH unset) builds for the build machine
    assert _native_toolchain_packages(native, "", "amd64", tmp_path) == ["gcc", "libc6-dev"]
    proc = subprocess.run(["/bin/sh", "-c", next(i.args for i in native.all("RUN") if "apt-get install" in i.args)],
                          capture_output=True, text=True, env={"PATH": "/nonexistent", "TARGETARCH": "s390x",
                                                               "BUILDARCH": "amd64"})
    assert proc.returncode == 1 and "unsupported TARGETARCH s390x" in proc.stderr


@pytest.mark.parametrize("targetarch", sorted(ELF_MACHINES))
def test_native_build_in_the_build_context(build_context: Path, tmp_path: Path, targetarch: str) -> None:
    """Run the Dockerfile's RUN line on the context copy for each target (this machine is amd64:
    the arm64 build is the cross build buildx does); the outputs are what each image ships."""
    out = tmp_path / "out" / "bin"
    subprocess.run(["sh", "webhook/native/build.sh", str(out), "--arch", targetarch], cwd=build_context, check=True,
                   capture_output=True, timeout=300)
    built = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    sources = {p.stem for p in (REPO / "webhook/native").glob("*.c")}
    assert built == sources
    for image_path in (C.IMAGE_WRAPPER_PATH, C.IMAGE_HELPER_PATH):
        binary = out / os.path.basename(image_path)
        assert binary.is_file() and os.access(binary, os.X_OK), image_path
        assert is_static_elf(binary), f"{binary.name} is not a static ELF"
        assert struct.unpack_from("<H", binary.read_bytes(), 18)[0] == ELF_MACHINES[targetarch]
    if targetarch != "amd64":
        return  # run under qemu by tests/test_arm64.py
    # The init container's command, for real: the wrapper installs itself where targets exec it.
    dest = tmp_path / "shared" / os.path.basename(C.WRAPPER_PATH)
    dest.parent.mkdir()
    proc = subprocess.run([str(out / os.path.basename(C.IMAGE_WRAPPER_PATH)), C.WRAPPER_INSTALL_FLAG, str(dest)],
                          capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert dest.read_bytes() == (out / os.path.basename(C.IMAGE_WRAPPER_PATH)).read_bytes()
    assert dest.stat().st_mode & stat.S_IXUSR


def test_pip_install_builds_a_complete_wheel(build_context: Path, tmp_path: Path) -> None:
    """`pip install .` in the venv stage builds this wheel: every module, the C sources and
    build.sh, and the `coredump` console script must be in it."""
    out = tmp_path / "wheels"
    proc = subprocess.run([str(VENV_PIP), "wheel", "--no-deps", "--disable-pip-version-check", "-q", ".", "-w", str(out)],
                          cwd=build_context, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = out.glob("coredump_webhook-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
        metadata = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
        licenses = [zf.read(n).decode() for n in names if re.search(r"\.dist-info/(licenses/)?LICENSE$", n)]
    # The certs/ folder is installed as webhook.certs (pyproject.toml's package-dir).
    installed_as = {"webhook": "webhook", "certs": "webhook/certs"}
    expected = {f"{installed_as[pkg]}/{p.relative_to(build_context / pkg)}" for pkg in installed_as
                for p in (build_context / pkg).rglob("*.py")}
    expected |= {str(p.relative_to(build_context)) for p in (build_context / "webhook/native").glob("*.c")}
    expected.add("webhook/native/build.sh")
    # Whatever pyproject.toml declares as package data (demo inputs, the page's static files...).
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for package, patterns in package_data.items():
        for pattern in patterns:
            expected |= {str(p.relative_to(build_context)) for p in (build_context / package).glob(pattern) if p.is_file()}
    assert len(expected) > 20
    missing = expected - names
    assert missing == set(), f"missing from the wheel: {sorted(missing)}"
    # The context copy held every module of the repository (nothing lost to .dockerignore).
    repo_modules = {f"{installed_as[pkg]}/{p.relative_to(REPO / pkg)}" for pkg in installed_as
                    for p in (REPO / pkg).rglob("*.py") if "__pycache__" not in p.parts}
    assert repo_modules <= names
    # One top-level name: nothing the wheel installs can collide with another distribution's
    # `certs` (or any other) package.
    top_level = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert top_level == {"webhook"}
    assert "webhook/certs/__init__.py" in names and "webhook/certs/generate.py" in names
    assert {"webhook/native/build.sh", "webhook/native/coredump-wrapper.c", "webhook/native/coredump-helper.c"} <= names
    assert re.search(r"^coredump\s*=\s*webhook\.cli:main$", entry_points, re.M)
    # Packaging metadata: typed, licensed, classified, the version from webhook/__init__.py.
    assert "webhook/py.typed" in names
    assert len(licenses) == 1 and "Apache License" in licenses[0] and "Version 2.0" in licenses[0]
    assert re.search(rf"^Version: {re.escape(webhook.__version__)}$", metadata, re.M)
    for line in ("Classifier: License :: OSI Approved :: Apache Software License", "Classifier: Typing :: Typed",
                 "Project-URL: Source, https://github.com/coredump-webhook/coredump-webhook"):
        assert line in metadata.splitlines(), line
    assert not any(n.startswith(("tests/", "charts/", "deploy/")) for n in names)


# --- constraints.txt: every image build resolves the same dependencies -----------------------


def _pins(text: str) -> dict[str, str]:
    from packaging.utils import canonicalize_name

    pins = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"constraints.txt: {line!r} is not pinned with =="
            pins[canonicalize_name(name)] = version
    return pins


def test_image_build_installs_with_the_constraints(parsed: tuple[dict[str, str], list[Stage]]) -> None:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    _, stages = parsed
    venv = stages[1]
    copied = {src for c in venv.all("COPY") for src in copy_parts(c)[1]}
    assert "constraints.txt" in copied
    (install,) = [i for i in venv.all("RUN") if "pip install" in i.args]
    assert re.search(r"/opt/venv/bin/pip install -c constraints\.txt \.(\s|$)", install.args), install.args
    pins = _pins((REPO / "constraints.txt").read_text())
    # Every runtime dependency pyproject.toml declares is pinned, at a version its range allows.
    runtime = [Requirement(r) for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]]
    assert len(runtime) >= 10
    for req in runtime:
        key = canonicalize_name(req.name)
        assert key in pins, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[key], prereleases=True), f"{key}=={pins[key]} outside {req.specifier}"
    # ... and so is everything they depend on, and nothing else (no test extras, not the project):
    # the same walk scripts/update-constraints.py makes over this venv's installed metadata.
    proc = subprocess.run([str(REPO / ".venv/bin/python"), str(REPO / "scripts/update-constraints.py"), "--print"],
                          capture_output=True, text=True, check=True, timeout=60)
    assert set(_pins(proc.stdout)) == set(pins)
    assert "pytest" not in pins and "coredump-webhook" not in pins


def test_constraints_resolve_to_exactly_the_pins(build_context: Path, tmp_path: Path) -> None:
    """pip resolves the venv stage's install in the build context copy (a dry run with a report):
    it installs exactly the pinned versions, nothing more, nothing less."""
    import json

    from packaging.utils import canonicalize_name

    report = tmp_path / "report.json"
    proc = subprocess.run([str(VENV_PIP), "install", "--dry-run", "--ignore-installed", "--disable-pip-version-check",
                           "-q", "-c", "constraints.txt", ".", "--report", str(report)],
                          cwd=build_context, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resolved = {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"]
                for i in json.loads(report.read_text())["install"]}
    assert resolved.pop("coredump-webhook") == webhook.__version__
    assert resolved == _pins((build_context / "constraints.txt").read_text())


def test_nothing_imports_a_top_level_certs_package() -> None:
    """The certificate code is installed only as webhook.certs: an import of the bare ``certs``
    name would work from the repository root yet fail (or pick another distribution's ``certs``)
    where the package is installed."""
    import ast

    offenders = []
    files = [p for folder in ("webhook", "certs", "tests", "benchmarks", "scripts") for p in (REPO / folder).rglob("*.py")]
    assert len(files) > 50
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            offenders += [f"{path.relative_to(REPO)}:{node.lineno}: {n}" for n in names if n.split(".")[0] == "certs"]
    cli = (REPO / "webhook/cli.py").read_text()
    assert '"webhook.certs.commands:certs"' in cli
    assert offenders == []


def test_the_venv_stage_can_build_drgn_where_it_has_no_wheel(parsed: tuple[dict[str, str], list[Stage]],
                                                              tmp_path: Path) -> None:
    _, stages = parsed
    venv = next(s for s in stages if s.alias == "venv")
    assert _apt_packages(venv, tmp_path, TARGETARCH="amd64") == []  # a wheel: nothing to build
    arm = _apt_packages(venv, tmp_path, TARGETARCH="arm64")
    assert {"gcc", "make", "autoconf", "automake", "libtool", "pkg-config", "libelf-dev", "libdw-dev"} <= set(arm)
    final = stages[-1]
    (run,) = final.all("RUN")
    assert " elfutils " in run.args  # libdw1 and libelf1 at run time, for a drgn built from its sdist


def test_the_pinned_drgn_builds_from_its_sdist_against_debians_elfutils(tmp_path: Path) -> None:
    """What an arm64 image build does (there is no aarch64 wheel), done here on amd64: the
    pinned drgn's sdist builds against this Debian's libdw and the unwinder runs on it."""
    pin = next(ln for ln in (REPO / "constraints.txt").read_text().splitlines() if ln.startswith("drgn=="))
    wheels = tmp_path / "wheels"
    proc = subprocess.run([str(REPO / ".venv/bin/python"), "-m", "pip", "wheel", "-q", "--no-deps",
                           "--no-binary", "drgn", "-w", str(wheels), pin], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = wheels.glob("drgn-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    (ext,) = site.glob("_drgn*.so")
    linked = subprocess.run(["ldd", str(ext)], capture_output=True, text=True, check=True).stdout
    assert re.search(r"libdw\.so\.1 => /(usr/)?lib/", linked), linked  # Debian's, not a bundled copy
    src = tmp_path / "crash.c"
    src.write_text("#include <signal.h>\nstatic void crash_here(void) { raise(SIGSEGV); }\n"
                   "int main(void) { crash_here(); return 0; }\n")
    subprocess.run(["gcc", "-g", "-o", str(tmp_path / "crash"), str(src)], check=True)
    core = tmp_path / "core"
    gdb_core(tmp_path / "crash", core)
    libc = re.search(r"=> (/\S+libc\.so\.6)", subprocess.run(["ldd", str(tmp_path / "crash")], capture_output=True,
                                                             text=True, check=True).stdout)[1]
    code = ("import os, sys; sys.path.insert(0, sys.argv[1]); "
            "import drgn; assert drgn.__file__.startswith(sys.argv[1]), drgn.__file__; "
            "from webhook.diagnose.signature import analyze; "
            "print(analyze(sys.argv[2], sys.argv[3], [sys.argv[4]]).signature_frames)")
    out = subprocess.run([str(REPO / ".venv/bin/python"), "-c", code, str(site), str(tmp_path / "crash"), str(core),
                          libc], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": f"{site}:{REPO}"})
    assert out.stdout.strip() == "['crash_here', 'main']", out.stderr[-2000:]
