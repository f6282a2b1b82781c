"""Per-client routes (vpnctl.reconcile.routes); the election is test_service_route_election."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Any

from tests.support import capi
from vpnctl.reconcile.allocation import allocate
from vpnctl.reconcile.routes import (
    ClientRoutes,
    client_routes,
    node_iroutes,
    tenant_routes,
)
from vpnctl.reconcile.tenant_spec import APISERVER_COMMON_NAME, TenantSpec

NET = IPv4Network


def tenant(*, spec: dict[str, Any] | None = None, nodes: bool = True, count: int = 3) -> TenantSpec:
    return capi.parsed_lab_tenant(spec, nodes=count, with_nodes=nodes)


def plan(t: TenantSpec, elected: str | None = "node-1") -> dict[str, ClientRoutes]:
    result = allocate(tunnel_cidr=t.spec.tunnel_cidr, previous=(), released=(), members=t.members)
    return {
        c.common_name: c
        for c in client_routes(tenant=t, allocations=result.allocations, service_route_node=elected)
    }


def nets(*texts: str) -> tuple[IPv4Network, ...]:
    return tuple(NET(t) for t in texts)


# --- routes ------------------------------------------------------------------------------------


def test_lab_plan_routes() -> None:
    routes = plan(tenant())
    assert list(routes) == [APISERVER_COMMON_NAME, "node-1", "node-2", "node-3"]
    api = routes[APISERVER_COMMON_NAME]
    assert api.tunnel_ip == IPv4Address("198.18.8.2")
    assert api.iroutes == ()
    assert api.machine is None
    # The apiserver role owns its routes; the server pushes it none, so its CCD is the
    # same whatever the nodes do.
    assert api.push_routes == ()
    # Node addresses one by one (collapsed): the lab lists no node subnet in extraRoutes.
    assert tenant_routes(tenant()) == nets(
        "198.19.0.11/32",
        "198.19.0.12/31",
        "198.19.64.0/18",
        "198.19.192.0/20",
    )
    # node-1 is elected: services go with it; the pod CIDR is split into node podCIDRs, so
    # it stays with the nodes.
    assert routes["node-1"].iroutes == nets("198.19.0.11/32", "198.19.65.0/24", "198.19.192.0/20")
    assert routes["node-2"].iroutes == nets("198.19.0.12/32", "198.19.66.0/24")
    assert routes["node-3"].iroutes == nets("198.19.0.13/32", "198.19.67.0/24")
    assert routes["node-2"].tunnel_ip == IPv4Address("198.18.8.4")
    assert routes["node-2"].kubelet == (IPv4Address("198.19.0.12"), 10250)
    assert routes["node-2"].machine == "tenant-a-md-2"
    assert all(r.push_routes == () for name, r in routes.items() if name != APISERVER_COMMON_NAME)


def test_node_subnet_in_extra_routes_covers_nodes_and_is_not_an_iroute() -> None:
    t = tenant(spec={"extraRoutes": [capi.LAB_NODES_CIDR]})
    routes = plan(t)
    assert tenant_routes(t) == nets(
        "198.19.0.0/24", "198.19.64.0/18", "198.19.192.0/20"
    )
    # The node subnet overlaps the nodes' /32s, so no client carries it whole.
    assert NET("198.19.0.0/24") not in routes["node-1"].iroutes


def test_apiserver_routes_do_not_change_as_nodes_join_when_the_subnet_is_listed() -> None:
    few = tenant(spec={"extraRoutes": [capi.LAB_NODES_CIDR]}, count=2)
    more = tenant(spec={"extraRoutes": [capi.LAB_NODES_CIDR]}, count=5)
    assert tenant_routes(few) == tenant_routes(more)


def test_elected_node_carries_the_pod_cidr_when_nodes_have_no_pod_cidrs() -> None:
    routes = plan(tenant(nodes=False), elected="node-2")
    assert routes["node-2"].iroutes == nets("198.19.0.12/32", "198.19.64.0/18", "198.19.192.0/20")
    assert routes["node-1"].iroutes == nets("198.19.0.11/32")


def test_elected_nodes_ccd_does_not_change_when_another_node_joins() -> None:
    a = plan(tenant(count=2), elected="node-1")
    b = plan(tenant(count=3), elected="node-1")
    assert a["node-1"] == b["node-1"]
    a = plan(tenant(count=2, nodes=False), elected="node-1")
    b = plan(tenant(count=3, nodes=False), elected="node-1")
    assert a["node-1"] == b["node-1"]


def test_no_elected_node_means_no_service_iroute() -> None:
    routes = plan(tenant(), elected=None)
    every = [n for r in routes.values() for n in r.iroutes]
    assert NET("198.19.192.0/20") not in every
    assert NET("198.19.192.0/20") in tenant_routes(tenant())


def test_iroutes_never_overlap_across_or_within_clients() -> None:
    for t in (
        tenant(),
        tenant(nodes=False),
        tenant(spec={"extraRoutes": ["198.19.0.0/16", "192.168.5.0/24", "192.168.4.0/24"]}),
    ):
        for elected in (None, "node-1", "node-3"):
            owned = [n for r in plan(t, elected).values() for n in r.iroutes]
            for i, a in enumerate(owned):
                for b in owned[i + 1 :]:
                    assert not a.overlaps(b), (a, b)


def test_extra_routes_are_collapsed_for_the_elected_node() -> None:
    t = tenant(spec={"extraRoutes": ["192.168.4.0/24", "192.168.5.0/24", "192.168.4.128/25"]})
    assert NET("192.168.4.0/23") in plan(t)["node-1"].iroutes
    assert NET("192.168.4.0/23") in tenant_routes(t)


def test_apiserver_ccd_does_not_change_as_nodes_come_and_go() -> None:
    """Issue 12 item 2: node churn must not kick the apiserver's client."""
    few = plan(tenant(count=2), elected="node-1")
    more = plan(tenant(count=4), elected="node-1")
    assert few[APISERVER_COMMON_NAME] == more[APISERVER_COMMON_NAME]
    assert few[APISERVER_COMMON_NAME].push_routes == ()


def test_pending_allocations_get_no_ccd() -> None:
    t = tenant()
    result = allocate(tunnel_cidr=t.spec.tunnel_cidr, previous=(), released=(), members=t.members)
    # An allocation kept for a Machine that is pending right now.
    from vpnctl.reconcile.allocation import Allocation

    extra = Allocation(machine="pending-m", node="pending-n", tunnel_ip=IPv4Address("198.18.8.99"))
    clients = client_routes(
        tenant=t, allocations=(*result.allocations, extra), service_route_node=None
    )
    assert "pending-n" not in {c.common_name for c in clients}


def test_node_iroutes() -> None:
    t = tenant()
    assert node_iroutes(t.members[0]) == nets("198.19.0.11/32", "198.19.65.0/24")
