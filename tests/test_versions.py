"""The version is written once, in webhook/__init__.py (issue 10, packaging).

pyproject.toml reads it (setuptools dynamic version) and the default image tags derive from it in
code; the copies that cannot be derived (the chart's version and appVersion, the Dockerfile's
ARG VERSION, the tags in the README and the golden files) are held equal to it here.
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import yaml

import webhook
from webhook.admission.settings import AdmissionSettings
from webhook.inspect.settings import DEFAULT_DEBUG_IMAGE, InspectSettings

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts/coredump-webhook"


def test_version_is_declared_once_in_python() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", webhook.__version__)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"]
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "webhook.__version__"}
    # What pip installed (the suite's editable install) took its version from there.
    assert importlib.metadata.version("coredump-webhook") == webhook.__version__


def test_default_images_derive_from_the_version() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    expected = f"{values['image']['repository']}:{webhook.__version__}"
    assert webhook.DEFAULT_IMAGE == expected
    assert AdmissionSettings().image == expected
    assert DEFAULT_DEBUG_IMAGE == InspectSettings().debug_image == expected


def test_chart_versions_equal_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["version"] == webhook.__version__
    assert chart["appVersion"] == webhook.__version__


def test_dockerfile_version_arg_equals_the_package_version() -> None:
    args = re.findall(r"^ARG VERSION=(\S+)$", (REPO / "Dockerfile").read_text(), re.M)
    assert args == [webhook.__version__]


def test_literal_tags_in_readme_and_goldens_equal_the_package_version() -> None:
    """The README's build commands and the golden patches spell the tag out; they follow along."""
    tag = re.compile(r"coredump-webhook/coredump-webhook:([0-9][\w.+-]*)")
    readme_tags = re.findall(r"/coredump-webhook:([0-9][\w.+-]*)", (REPO / "README.md").read_text())
    golden_tags = [t for p in sorted((REPO / "tests/golden").rglob("*.json")) for t in tag.findall(p.read_text())]
    assert readme_tags and golden_tags
    assert set(readme_tags) == set(golden_tags) == {webhook.__version__}
