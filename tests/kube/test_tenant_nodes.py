"""The tenant side's Node watch against a real tenant apiserver (issue 12 item 1): the
controller learns each node's podCIDRs, keeps only what the plan reads, and re-plans a
tenant when a routed node's podCIDRs change.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from tests.support import capi as samples
from vpnctl.controller.budgets import Budgets
from vpnctl.controller.interfaces import TenantRef
from vpnctl.kube import NODE, KubeObject
from vpnctl.reconcile.tenant_spec import parse_tenant

from .conftest import TenantFactory
from .tenantsidefix import real_tenant_side
from .test_tenant_side import (
    CLUSTER,
    TENANT,
    admin_of,
    ensure,
    eventually,
    inline_kubeconfig,
    tunnel_ca,
    wait_synced,
)

pytestmark = pytest.mark.kube


def node_object(name: str, *, pod_cidr: str | None = None) -> KubeObject:
    spec = {} if pod_cidr is None else {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": spec,
    }


def pod_cidr_patch(cidr: str) -> KubeObject:
    return {"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}}


def machine(node: str, ip: str) -> KubeObject:
    return dict(
        samples.machine(
            name=f"{CLUSTER}-md-{node}",
            cluster_name=CLUSTER,
            namespace=TENANT.namespace,
            node=node,
            internal_ip=ip,
        )
    )


def pod_cidrs(nodes: Sequence[KubeObject] | None) -> dict[str, list[str]]:
    return {
        str(n["metadata"]["name"]): list((n.get("spec") or {}).get("podCIDRs") or [])
        for n in nodes or ()
    }


async def test_nodes_feed_the_plan_and_a_pod_cidr_given_later_re_plans(
    tenant_cluster_factory: TenantFactory,
) -> None:
    cluster = await tenant_cluster_factory(name="ts-nodes")
    text = inline_kubeconfig(cluster.kubeconfig_path)
    ca = tunnel_ca()
    machines = [machine("node-1", "198.19.0.11"), machine("node-2", "198.19.0.12")]
    queued: list[TenantRef] = []
    async with real_tenant_side() as ts, admin_of(cluster) as admin:
        ts.follow_nodes(queued.append)
        await admin.create(NODE, node_object("node-1", pod_cidr="198.19.65.0/24"))
        await admin.create(NODE, node_object("node-2"))
        await admin.create(NODE, node_object("stray"))  # no Machine
        assert ts.nodes(TENANT) is None  # never listed: the plan falls back

        result = await ensure(ts, text, ca, machines=machines)
        assert result.installed, result.message
        await wait_synced(ts, TENANT)
        assert pod_cidrs(ts.nodes(TENANT)) == {
            "node-1": ["198.19.65.0/24"],
            "node-2": [],
            "stray": [],
        }
        # Only what the plan reads is cached: no labels, no managedFields.
        for cached in ts.nodes(TENANT) or ():
            assert set(cached["metadata"]) <= {"name", "uid", "resourceVersion"}
        assert TENANT in queued  # the first listing re-plans the tenant

        # The planner turns them into per-node pod CIDRs.
        lab = samples.lab_tenant(nodes=2, name=CLUSTER, namespace=TENANT.namespace)
        spec = parse_tenant(
            tunnel=lab.tunnel,
            cluster=lab.cluster,
            machines=machines,  # type: ignore[arg-type]
            nodes=ts.nodes(TENANT),  # type: ignore[arg-type]
        )
        by_node = {m.node: [str(n) for n in m.pod_cidrs] for m in spec.members}
        assert by_node == {"node-1": ["198.19.65.0/24"], "node-2": []}

        # The node IPAM controller gives node-2 its podCIDR: the tenant is re-planned.
        queued.clear()
        await admin.patch_merge(NODE, "node-2", pod_cidr_patch("198.19.66.0/24"))

        async def re_planned() -> bool:
            return queued == [TENANT] and pod_cidrs(ts.nodes(TENANT))["node-2"] == [
                "198.19.66.0/24"
            ]

        await eventually(re_planned, timeout=10, what="node-2's podCIDR re-plans the tenant")

        # A change the plan does not read (a label), or of a node no Machine names: nothing.
        queued.clear()
        await admin.patch_merge(NODE, "node-1", {"metadata": {"labels": {"x": "y"}}})
        await admin.patch_merge(NODE, "stray", pod_cidr_patch("198.19.99.0/24"))

        async def stray_seen() -> bool:
            return pod_cidrs(ts.nodes(TENANT))["stray"] == ["198.19.99.0/24"]

        await eventually(stray_seen, timeout=10, what="the stray node's change is cached")
        # One watch delivers in resourceVersion order: node-1's label event came before.
        assert queued == []

        # A routed node deleted: re-planned.
        await admin.delete(NODE, "node-2")

        async def deleted() -> bool:
            return queued == [TENANT] and "node-2" not in pod_cidrs(ts.nodes(TENANT))

        await eventually(deleted, timeout=10, what="node-2's deletion re-plans the tenant")


async def test_nodes_count_towards_the_tenants_cache_budget(
    tenant_cluster_factory: TenantFactory,
) -> None:
    """Nodes are the tenant's objects: too many of them pause the tenant like too many
    CSRs would, and the last complete listing stands in meanwhile (no route flaps)."""
    cluster = await tenant_cluster_factory(name="ts-nodes-budget")
    text = inline_kubeconfig(cluster.kubeconfig_path)
    ca = tunnel_ca()
    budgets = Budgets(max_objects=12, pause_base=60.0, pause_cap=60.0)
    async with real_tenant_side(budgets=budgets) as ts, admin_of(cluster) as admin:
        await admin.create(NODE, node_object("node-1", pod_cidr="198.19.65.0/24"))
        result = await ensure(ts, text, ca, machines=[machine("node-1", "198.19.0.11")])
        assert result.installed, result.message
        await wait_synced(ts, TENANT)
        assert pod_cidrs(ts.nodes(TENANT)) == {"node-1": ["198.19.65.0/24"]}

        for i in range(2, 20):
            await admin.create(NODE, node_object(f"node-{i}"))

        async def paused() -> bool:
            return ts.degraded(TENANT) is not None

        await eventually(paused, timeout=15, what="the tenant paused over its cache budget")
        reason, _ = ts.degraded(TENANT) or ("", "")
        assert reason == "CacheBudgetExceeded"
        # The last complete listing stands in while paused.
        assert pod_cidrs(ts.nodes(TENANT)).get("node-1") == ["198.19.65.0/24"]
