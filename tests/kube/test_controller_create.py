"""The controller against the real apiserver: a Cluster with Machines becomes a tunnel."""

from __future__ import annotations

import base64
import json

import pytest

import certs
from tests.support.capi import create_tenant
from tests.support.polling import aeventually
from vpnctl.controller.interfaces import TenantRef
from vpnctl.kube import CONFIG_MAP, DEPLOYMENT, SECRET, SERVICE, TUNNEL, Kube
from vpnctl.reconcile.service_objects import APISERVER_JSON
from vpnctl.testenv import ServiceCluster

from .controllerfix import (
    FakeObservations,
    FakeTenantSide,
    all_connected,
    condition,
    controller_settings,
    running_controller,
    wait_ready,
)
from .kubefix import kube  # noqa: F401

pytestmark = pytest.mark.kube


async def test_cluster_with_three_machines_becomes_a_ready_tunnel(
    kube: Kube,  # noqa: F811
    namespace: str,
    service_cluster: ServiceCluster,
) -> None:
    side = FakeTenantSide()
    nodes = [f"acme-node-{i}" for i in (1, 2, 3)]
    observations = FakeObservations(default=all_connected(nodes))
    settings = controller_settings(namespace)
    async with running_controller(kube, settings, side=side, observations=observations):
        assert await create_tenant(kube, namespace, "acme") == nodes
        tunnel = await wait_ready(kube, namespace, "acme", nodes=3, connected=3)

    status = tunnel["status"]
    assert status["nodeCount"] == 3
    assert status["connectedCount"] == 3
    assert [n["name"] for n in status["nodes"]] == nodes
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Ready": "True", "PKIReady": "True", "ServerReady": "True", "AgentInstalled": "True"
    }  # fmt: skip
    assert status["observedGeneration"] == tunnel["metadata"]["generation"]
    assert tunnel["metadata"]["finalizers"] == ["vpnctl.io/cleanup"]
    owner = tunnel["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("Cluster", "acme")

    secrets = {
        name: await kube.get(SECRET, name, namespace)
        for name in (
            "acme-vpn-ca",
            "acme-vpn-server-tls",
            "acme-vpn-tls-crypt",
            "acme-vpn-apiserver-tls",
        )
    }
    assert all(secrets.values())
    server_cm = await kube.get(CONFIG_MAP, "acme-vpn-server", namespace)
    assert server_cm is not None
    desired = json.loads(server_cm["data"]["desired.json"])
    assert [c["common_name"] for c in desired["clients"]] == nodes
    assert desired["apiserver"]["common_name"] == "vpnctl-apiserver"
    ca_secret = secrets["acme-vpn-ca"]
    assert ca_secret is not None
    ca_pem = base64.b64decode(ca_secret["data"]["tls.crt"])
    assert certs.crl_serials(server_cm["data"]["crl.pem"].encode(), ca_pem=ca_pem) == frozenset()
    assert await kube.get(DEPLOYMENT, "acme-vpn-server", namespace) is not None
    assert await kube.get(SERVICE, "acme-vpn", namespace) is not None
    assert await kube.get(CONFIG_MAP, "acme-vpn-apiserver", namespace) is not None
    assert side.ensures(TenantRef(namespace, "acme")) >= 1
    agent = condition(tunnel, "AgentInstalled")
    assert agent is not None
    assert agent["reason"] == "Installed"

    printed = await service_cluster.kubectl("get", "tunnels", "-n", namespace)
    header, row = printed.strip().splitlines()
    assert header.split() == ["NAME", "CLUSTER", "READY", "NODES", "CONNECTED", "AGE"]
    assert row.split()[:5] == ["acme", "acme", "True", "3", "3"]


async def test_routes_come_from_cluster_network_and_machine_addresses(
    kube: Kube,  # noqa: F811
    namespace: str,
) -> None:
    nodes = ["routes-node-1", "routes-node-2"]
    observations = FakeObservations(default=all_connected(nodes))
    settings = controller_settings(namespace)
    async with running_controller(kube, settings, side=FakeTenantSide(), observations=observations):
        await create_tenant(
            kube, namespace, "routes", nodes=2,
            pods=["198.19.64.0/18"], services=["198.19.192.0/20"],
        )  # fmt: skip
        tunnel = await wait_ready(kube, namespace, "routes", nodes=2, connected=2)
        server_cm = await kube.get(CONFIG_MAP, "routes-vpn-server", namespace)
        apiserver_cm = await kube.get(CONFIG_MAP, "routes-vpn-apiserver", namespace)
    assert server_cm is not None
    assert apiserver_cm is not None
    desired = json.loads(server_cm["data"]["desired.json"])
    by_name = {c["common_name"]: c for c in desired["clients"]}
    holder = tunnel["status"]["serviceRouteNode"]
    assert holder == "routes-node-1"  # connected, and first by name
    # Every node owns its InternalIP; the elected node also the service CIDR and (no
    # per-node podCIDRs known) the whole pod CIDR.
    assert by_name["routes-node-1"]["iroutes"] == [
        "198.19.0.11/32", "198.19.64.0/18", "198.19.192.0/20",
    ]  # fmt: skip
    assert by_name["routes-node-2"]["iroutes"] == ["198.19.0.12/32"]
    assert by_name["routes-node-1"]["kubelet"] == "198.19.0.11:10250"
    # Stable tunnel addresses, in the default tunnel CIDR, recorded in status.
    allocations = {a["node"]: a["tunnelIP"] for a in tunnel["status"]["allocations"]}
    assert allocations == {"routes-node-1": "100.127.255.3", "routes-node-2": "100.127.255.4"}
    assert {c["common_name"]: c["ifconfig_ip"] for c in desired["clients"]} == allocations
    # The apiserver reaches pods, services and every node address through the tunnel:
    # routes its own role owns (restored within a second), none pushed by the server.
    assert desired["apiserver"]["ifconfig_ip"] == "100.127.255.2"
    assert desired["apiserver"]["push_routes"] == []
    role = json.loads(apiserver_cm["data"][APISERVER_JSON])
    assert sorted(role["routes"]) == sorted(
        ["198.19.0.11/32", "198.19.0.12/32", "198.19.64.0/18", "198.19.192.0/20"]
    )


async def _versions(kube: Kube, namespace: str) -> dict[str, str]:  # noqa: F811
    """resourceVersion of everything the controller writes (generation for the
    Deployment, whose status kube-controller-manager keeps writing) and Event counts."""
    from vpnctl.kube import EVENT

    out: dict[str, str] = {}
    for res in (TUNNEL, SECRET, CONFIG_MAP, SERVICE):
        items, _ = await kube.list(res, namespace)
        for obj in items:
            meta = obj["metadata"]
            out[f"{res.plural}/{meta['name']}"] = meta["resourceVersion"]
    deployments, _ = await kube.list(DEPLOYMENT, namespace)
    for obj in deployments:
        out[f"deployments/{obj['metadata']['name']}"] = str(obj["metadata"]["generation"])
    events, _ = await kube.list(EVENT, namespace)
    for obj in events:
        out[f"events/{obj['metadata']['name']}"] = str(obj.get("count"))
    return out


async def test_resync_of_an_unchanged_world_writes_nothing(
    kube: Kube,  # noqa: F811
    namespace: str,
) -> None:
    nodes = [f"calm-node-{i}" for i in (1, 2, 3)]
    observations = FakeObservations(default=all_connected(nodes))
    settings = controller_settings(namespace, resync_period=0.5)
    async with running_controller(
        kube, settings, side=FakeTenantSide(), observations=observations
    ) as run:
        await create_tenant(kube, namespace, "calm")
        await wait_ready(kube, namespace, "calm", nodes=3, connected=3)
        await run.wait_settled()  # the events of our own last writes are behind us
        before = await _versions(kube, namespace)
        writes_before = run.writes()
        reconciles_before = run.reconciles_ok()
        await run.wait_reconciles(6)  # six resyncs (period 0.5 s), nothing else moves
        after = await _versions(kube, namespace)
        writes_after = run.writes()
        reconciles_after = run.reconciles_ok()
    assert reconciles_after - reconciles_before >= 6  # the resyncs did run
    changed = {k: (before.get(k), after.get(k)) for k in before.keys() | after.keys()
               if before.get(k) != after.get(k)}  # fmt: skip
    assert changed == {}
    assert writes_after == writes_before


async def test_a_cluster_can_opt_out_of_the_automatic_tunnel(
    kube: Kube,  # noqa: F811
    namespace: str,
) -> None:
    observations = FakeObservations(default=all_connected(["in-node-1"]))
    settings = controller_settings(namespace)
    side = FakeTenantSide()
    async with running_controller(kube, settings, side=side, observations=observations):
        await create_tenant(
            kube, namespace, "out", nodes=1, annotations={"vpnctl.io/auto-tunnel": "false"}
        )
        await create_tenant(kube, namespace, "in", nodes=1)
        await wait_ready(kube, namespace, "in", nodes=1)
        # The opted-out Cluster was seen (its key reconciled) and got nothing.
        await aeventually(
            lambda: TenantRef(namespace, "out") in side.forgotten, what="out seen", timeout=20
        )
        assert await kube.get(TUNNEL, "out", namespace) is None
        assert await kube.get(SECRET, "out-vpn-ca", namespace) is None
        # A Tunnel made by hand for it is served like any other.
        await kube.create(
            TUNNEL,
            {
                "metadata": {"name": "out", "namespace": namespace},
                "spec": {"clusterName": "out", "expose": {"serviceType": "ClusterIP"}},
            },
        )
        observations.per_tenant[TenantRef(namespace, "out")] = all_connected(["out-node-1"])
        tunnel = await wait_ready(kube, namespace, "out", nodes=1, connected=1)
    assert tunnel["metadata"]["ownerReferences"][0]["kind"] == "Cluster"  # adopted
