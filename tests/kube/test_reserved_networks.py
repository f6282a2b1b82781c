"""Reserved networks by default (issue 9, item 8), against the real service cluster.

Without `--reserved-cidr`, a tenant used to be able to claim the service cluster's own
Service CIDR. Now the controller reads the Nodes' pod CIDRs and InternalIPs and the
ServiceCIDR objects at start, and a tenant overlapping them gets CIDROverlap.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator
from ipaddress import IPv4Network

import pytest
import pytest_asyncio

from tests.support.capi import create_tenant
from tests.support.polling import aeventually
from vpnctl.controller.cli import _with_reserved_networks, add_run_arguments, settings_from_args
from vpnctl.controller.networks import (
    NetworkDetectionError,
    ServiceClusterNetworks,
    detect,
    reserved_networks,
)
from vpnctl.kube import NODE, Kube, KubeObject, NotFound, Resource
from vpnctl.testenv import ServiceCluster

from .controllerfix import (
    FakeObservations,
    FakeTenantSide,
    all_connected,
    condition,
    controller_settings,
    events_for,
    running_controller,
    wait_condition,
)
from .kubefix import kube, unique  # noqa: F401

pytestmark = pytest.mark.kube

NODE_POD_CIDR = "198.18.128.0/24"
NODE_IP = "198.18.129.5"


@pytest_asyncio.fixture(loop_scope="session")
async def service_node(kube: Kube) -> AsyncIterator[str]:  # noqa: F811
    """A Node object as a kubelet and the node IPAM would leave it (deleted afterwards).
    Nodes may carry status on create, so no kubelet is needed."""
    name = unique("vpnctl-reserved")
    await kube.create(
        NODE,
        {
            "metadata": {"name": name},
            "spec": {"podCIDR": NODE_POD_CIDR, "podCIDRs": [NODE_POD_CIDR]},
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": NODE_IP},
                    {"type": "Hostname", "address": name},
                ]
            },
        },
    )
    try:
        yield name
    finally:
        with contextlib.suppress(NotFound):
            await kube.delete(NODE, name)


async def test_detects_node_pod_and_service_networks(
    kube: Kube,  # noqa: F811
    service_cluster: ServiceCluster,
    service_node: str,
) -> None:
    found = await detect(kube)
    assert found.problems == ()
    assert IPv4Network(NODE_POD_CIDR) in found.pods
    assert IPv4Network(f"{NODE_IP}/32") in found.nodes
    # The apiserver's own --service-cluster-ip-range, from its default ServiceCIDR.
    assert IPv4Network(service_cluster.service_cidr) in found.services


class _NoServiceCidrApi:
    """Our `Lister` seam, as a cluster older than 1.33 answers: no ServiceCIDR API."""

    def __init__(self, client: Kube) -> None:
        self._kube = client

    async def list(
        self, res: Resource, namespace: str | None = None, *, label_selector: str | None = None
    ) -> tuple[list[KubeObject], str]:
        if res.plural == "servicecidrs":
            raise NotFound("the server could not find the requested resource", status=404)
        return await self._kube.list(res, namespace, label_selector=label_selector)


async def test_without_the_service_cidr_the_flag_is_required(
    kube: Kube,  # noqa: F811
    service_node: str,
) -> None:
    old_cluster = _NoServiceCidrApi(kube)
    with pytest.raises(NetworkDetectionError, match=r"ServiceCIDR API .* --reserved-cidr"):
        await reserved_networks(old_cluster, flags=())
    flag = IPv4Network("198.19.255.0/24")
    reserved = await reserved_networks(old_cluster, flags=(flag,))
    assert flag in reserved
    assert IPv4Network(NODE_POD_CIDR) in reserved  # what could be found is still added
    # --no-detect-reserved-cidrs: the flags alone.
    assert await reserved_networks(old_cluster, flags=(flag,), detect_networks=False) == (flag,)


async def test_a_tenant_claiming_the_service_cidr_gets_a_condition_and_an_event(
    kube: Kube,  # noqa: F811
    service_cluster: ServiceCluster,
    namespace: str,
) -> None:
    # `vpnctl run` without --reserved-cidr, as the chart runs it by default.
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    args = parser.parse_args(["--agent-image", "vpnctl:test"])
    assert args.detect_reserved_cidrs is True
    detected = await _with_reserved_networks(settings_from_args(args), kube, detect=True)
    reserved = detected.tenant.build.reserved_cidrs
    service_cidr = IPv4Network(service_cluster.service_cidr)
    assert service_cidr in reserved

    settings = controller_settings(namespace, build=detected.tenant.build)
    side = FakeTenantSide()
    observations = FakeObservations(default=all_connected(["fine-node-1", "fine-node-2"]))
    async with running_controller(kube, settings, side=side, observations=observations):
        await create_tenant(kube, namespace, "fine", nodes=2)
        # Tenant services = the service cluster's own Service CIDR.
        await create_tenant(kube, namespace, "claim", nodes=1, services=[str(service_cidr)])
        claim = await wait_condition(
            kube, namespace, "claim", "Ready", status="False", reason="CIDROverlap"
        )
        ready = condition(claim, "Ready")
        assert ready is not None
        assert f"overlaps the service cluster's network {service_cidr}" in ready["message"]

        async def overlap_event() -> bool:
            events = await events_for(kube, namespace, name="claim")
            return "CIDROverlap" in {e.get("reason") for e in events}

        # The Event is written after the status: wait for it rather than read once.
        await aeventually(overlap_event, timeout=10, what="a CIDROverlap Event on the Tunnel")
        await wait_condition(kube, namespace, "fine", "Ready", status="True")
    assert not [c for c in side.calls if c.tenant.cluster == "claim"]  # nothing installed


def test_the_networks_add_up() -> None:
    found = ServiceClusterNetworks(
        pods=(IPv4Network("10.244.0.0/24"),),
        nodes=(IPv4Network("10.0.0.5/32"),),
        services=(IPv4Network("10.96.0.0/12"),),
    )
    assert found.all == (
        IPv4Network("10.0.0.5/32"),
        IPv4Network("10.96.0.0/12"),
        IPv4Network("10.244.0.0/24"),
    )
