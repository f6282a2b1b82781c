"""The running controller routes each node's pods through that node's own tunnel (issue
12 item 1): it reads the tenant's Nodes from a real tenant apiserver (real tenant side)
and a podCIDR given later re-plans the tenant, while the apiserver's CCD stays as it is.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support import kubeconfigs
from tests.support.capi import create_kubeconfig_secret, create_tenant
from tests.support.polling import aeventually
from vpnctl.kube import CONFIG_MAP, NODE, TUNNEL, Kube, KubeObject, connect
from vpnctl.reconcile.names import TenantNames

from .conftest import TenantFactory
from .controllerfix import (
    FakeObservations,
    all_connected,
    controller_settings,
    running_controller,
    wait_ready,
)
from .kubefix import kube  # noqa: F401
from .tenantsidefix import real_tenant_side

pytestmark = pytest.mark.kube

NAME = "pods"


def node_object(name: str, pod_cidr: str | None) -> KubeObject:
    spec = {} if pod_cidr is None else {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]}
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": spec}


async def test_the_controller_routes_each_nodes_pods_through_its_own_tunnel(
    kube: Kube,  # noqa: F811
    namespace: str,
    tenant_cluster_factory: TenantFactory,
) -> None:
    cluster = await tenant_cluster_factory()
    names = TenantNames.for_cluster(NAME)
    node_1, node_2 = f"{NAME}-node-1", f"{NAME}-node-2"
    observations = FakeObservations(default=all_connected([node_1, node_2]))
    async with (
        await connect(kubeconfig=str(cluster.kubeconfig_path)) as tenant,
        real_tenant_side() as side,
        running_controller(kube, controller_settings(namespace), side=side,
                           observations=observations),
    ):  # fmt: skip
        await tenant.create(NODE, node_object(node_1, "198.19.65.0/24"))
        await tenant.create(NODE, node_object(node_2, None))  # no podCIDR yet
        await create_tenant(kube, namespace, NAME, nodes=2, kubeconfig=False)
        await create_kubeconfig_secret(
            kube, namespace, NAME, text=kubeconfigs.inlined(cluster.kubeconfig_path)
        )
        await wait_ready(kube, namespace, NAME, nodes=2, connected=2, timeout=60)

        async def desired() -> dict[str, Any]:
            cm = await kube.get(CONFIG_MAP, names.server_config, namespace)
            assert cm is not None
            return dict(json.loads(cm["data"]["desired.json"]))

        def iroutes(doc: dict[str, Any]) -> dict[str, list[str]]:
            return {c["common_name"]: c["iroutes"] for c in doc["clients"]}

        async def node_1_routed() -> dict[str, Any] | None:
            doc = await desired()
            return doc if "198.19.65.0/24" in iroutes(doc).get(node_1, []) else None

        first = await aeventually(node_1_routed, what="node-1 iroutes its podCIDR", timeout=30)
        # node-2 has no podCIDR: its pods go with the elected node, and the rest of the
        # pod CIDR with them. The apiserver is pushed nothing.
        assert first["apiserver"]["push_routes"] == []

        # The node IPAM controller gives node-2 its podCIDR: re-planned within seconds.
        given = {"spec": {"podCIDR": "198.19.66.0/24", "podCIDRs": ["198.19.66.0/24"]}}
        await tenant.patch_merge(NODE, node_2, given)

        async def node_2_routed() -> dict[str, Any] | None:
            doc = await desired()
            return doc if "198.19.66.0/24" in iroutes(doc).get(node_2, []) else None

        after = await aeventually(node_2_routed, what="node-2 iroutes its podCIDR", timeout=30)
        assert not any("198.19.64.0/18" in nets for nets in iroutes(after).values())
        assert after["apiserver"] == first["apiserver"]  # its CCD never moved

        # The podCIDRs are remembered in the status, for a restarted controller.
        async def recorded() -> dict[str, Any] | None:
            tunnel = await kube.get(TUNNEL, NAME, namespace)
            allocations = ((tunnel or {}).get("status") or {}).get("allocations") or []
            pods = {a["node"]: a.get("podCIDRs") for a in allocations}
            return pods if pods.get(node_2) == ["198.19.66.0/24"] else None

        pods = await aeventually(recorded, what="status records the podCIDRs", timeout=30)
        assert pods[node_1] == ["198.19.65.0/24"]
