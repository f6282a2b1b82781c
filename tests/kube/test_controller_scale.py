"""100 tenants x 3 Machines converge to Ready (benchmark; records, asserts no timing)."""

from __future__ import annotations

import pytest

from bench.scale import run_controller_scale
from vpnctl.kube import Kube

from .kubefix import kube  # noqa: F401

pytestmark = pytest.mark.kube


@pytest.mark.timeout(900)
async def test_hundred_tenants_with_three_machines_converge(
    kube: Kube,  # noqa: F811
    namespace: str,
) -> None:
    result = await run_controller_scale(kube=kube, namespace=namespace, tenants=100, machines=3)
    print("\n" + result.table(), end="")
    # The figures are printed, not recorded: `python -m bench` writes the results file,
    # so a test run never dirties the tree.
    assert result.tenants == 100
    assert result.reconciles >= 100
