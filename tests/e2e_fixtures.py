"""The end-to-end fixtures (a pytest plugin registered by tests/conftest.py; never imported):
the real agent subprocess with its pod watch, and the factory of runc test nodes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e_support import ADMISSION, APP_IMAGE, NODE_NAME, SIDECAR_IMAGE, running_agent
from tests.runc_support import Node, busybox_rootfs, kill_all, processes_rooted_under, single_binary_rootfs
from tests.suite_support import which_or_fail
from webhook import constants as C


@pytest.fixture
def agent(kernel, bin_dir, pod_api):
    """The agent with its pod watch (Events off); stopped (SIGTERM) and checked by the tests."""
    with running_agent(bin_dir, pod_api, "--no-events") as a:
        yield a


@pytest.fixture
def node_factory(tmp_path, bin_dir, pod_api):
    """Factory for a test node; every container is deleted and its cgroups removed afterwards."""
    runc = which_or_fail("runc")
    which_or_fail("busybox")
    nodes: list[Node] = []
    images = {
        ADMISSION.image: single_binary_rootfs(bin_dir / "coredump-wrapper", C.IMAGE_WRAPPER_PATH),
        APP_IMAGE: busybox_rootfs,
        SIDECAR_IMAGE: busybox_rootfs,
    }

    def make(flavour: str = "cgroupfs", remote: dict[str, Path] | None = None) -> Node:
        n = Node(tmp_path / f"node{len(nodes)}", runc, images, node_name=NODE_NAME, flavour=flavour,
                 remote=remote or {}, on_start=pod_api.container_started)
        nodes.append(n)
        return n

    yield make
    for n in nodes:
        n.cleanup()
    kill_all(processes_rooted_under(tmp_path))
