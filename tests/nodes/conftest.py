"""Fixtures shared by the real-node tests: the node binaries and the base node images."""

from __future__ import annotations

import pytest

from vpnctl.lab.realnode.node_images import NodeImages, ensure_node_images
from vpnctl.testenv import Binaries, BuildError, ensure_binaries


@pytest.fixture(scope="module")
def node_binaries() -> Binaries:
    try:
        return ensure_binaries(with_nodes=True)
    except BuildError as exc:
        pytest.fail(f"building the node binaries failed: {exc}")


@pytest.fixture(scope="module")
def node_images() -> NodeImages:
    return ensure_node_images()
