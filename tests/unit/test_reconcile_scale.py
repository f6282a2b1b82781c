"""100 tenants with 3 Machines each through the whole pure pipeline.

No timing assertion (machines differ); the point is that every step stays cheap enough
to run for every tenant on every resync, that tenants do not leak into each other, and
that a second pass over the same inputs wants no writes at all.
"""

from __future__ import annotations

from datetime import UTC, datetime
from ipaddress import IPv4Network
from typing import Any

from agent.desired_state import parse_desired
from tests.support import capi
from vpnctl.api import KubeObject
from vpnctl.reconcile.agent_objects import tenant_objects
from vpnctl.reconcile.agentdocs import (
    apiserver_role_config,
    node_role_config,
    server_desired_state,
    server_role_config,
)
from vpnctl.reconcile.allocation import allocate
from vpnctl.reconcile.diff import needs_update
from vpnctl.reconcile.names import TenantNames
from vpnctl.reconcile.routes import client_routes
from vpnctl.reconcile.service_objects import (
    apiserver_config_map,
    server_config_map,
    server_deployment,
    server_service,
)
from vpnctl.reconcile.service_route_election import elect_service_route_node
from vpnctl.reconcile.settings import Settings
from vpnctl.reconcile.status import NodeObservation, build_status, connected_members
from vpnctl.reconcile.tenant_spec import parse_tenant

SETTINGS = Settings(agent_image="registry.example/vpnctl:1")
NOW = datetime(2024, 5, 1, tzinfo=UTC)
CRL = b"-----BEGIN X509 CRL-----\nx\n-----END X509 CRL-----\n"


def tenant_inputs(i: int) -> dict[str, Any]:
    """Tenant i: its own namespace; every tenant reuses the same private ranges."""
    name = f"t{i:03d}"
    return {
        "tunnel": capi.tunnel(name=name, namespace=name, spec={"clusterName": name}),
        "cluster": capi.cluster(
            name=name, namespace=name, pods=["10.244.0.0/16"], services=["10.96.0.0/12"]
        ),
        "machines": [
            capi.machine(
                name=f"{name}-md-{j}",
                cluster_name=name,
                namespace=name,
                node=f"{name}-node-{j}",
                internal_ip=f"192.168.{i % 250}.{10 + j}",
            )
            for j in range(3)
        ],
        "nodes": [
            capi.node(name=f"{name}-node-{j}", pod_cidrs=[f"10.244.{j}.0/24"]) for j in range(3)
        ],
    }


def reconcile_pure(inputs: dict[str, Any]) -> tuple[list[KubeObject], dict[str, Any]]:
    t = parse_tenant(**inputs)
    result = allocate(tunnel_cidr=t.spec.tunnel_cidr, previous=(), released=(), members=t.members)
    observations = {
        m.node: NodeObservation(node=m.node, connected=True, rtt_seconds=0.002) for m in t.members
    }
    holder = elect_service_route_node(
        current=None,
        elected_at=None,
        members={m.node for m in t.members},
        connected=connected_members(tenant=t, observations=observations),
        now=None,
    ).holder
    clients = client_routes(tenant=t, allocations=result.allocations, service_route_node=holder)
    desired = server_desired_state(clients=clients, apiserver_serial=1)
    parse_desired(desired, path="desired.json", tunnel_cidr=t.spec.tunnel_cidr)
    role = server_role_config(tenant=t, settings=SETTINGS)
    names = TenantNames.for_cluster(t.cluster_name)
    objects = [
        server_config_map(tenant=t, role_config=role, desired=desired, crl_pem=CRL),
        apiserver_config_map(
            tenant=t,
            role_config=apiserver_role_config(
                tenant=t, settings=SETTINGS, service_name=names.service
            ),
        ),
        server_deployment(tenant=t, settings=SETTINGS, role_config=role),
        server_service(tenant=t),
        *tenant_objects(
            cluster_name=t.cluster_name,
            settings=SETTINGS,
            role_config=node_role_config(
                tenant=t, settings=SETTINGS, remotes=[("203.0.113.1", 1194)]
            ),
            ca_pem=b"ca",
        ),
    ]
    status = build_status(
        tenant=t,
        result=result,
        service_route_node=holder,
        observations=observations,
        conditions=[],
        previous=None,
        now=NOW,
    )
    return objects, dict(status)


def test_one_hundred_tenants_with_three_machines_each() -> None:
    inputs = [tenant_inputs(i) for i in range(100)]
    first = [reconcile_pure(x) for x in inputs]
    second = [reconcile_pure(x) for x in inputs]

    for (objects, status), (again, status_again) in zip(first, second, strict=True):
        assert status == status_again
        assert status["nodeCount"] == 3
        assert status["connectedCount"] == 3
        assert [a["tunnelIP"] for a in status["allocations"]] == [
            "100.127.255.3",
            "100.127.255.4",
            "100.127.255.5",
        ]
        assert all(not needs_update(live, want) for live, want in zip(objects, again, strict=True))

    # Tenants share address ranges but never objects: every namespaced name is distinct.
    keys = {
        (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"])
        for objects, _ in first
        for o in objects[:4]
    }
    assert len(keys) == 100 * 4
    assert all(
        IPv4Network(a["tunnelIP"] + "/32").subnet_of(IPv4Network("100.64.0.0/10"))
        for _, status in first
        for a in status["allocations"]
    )
