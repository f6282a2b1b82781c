"""The netns tier's inputs come from the controller's planner, pod paths and all."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from agent.desired_state import parse_desired
from agent.role_config import load_role_config
from vpnctl.lab.address_plan import make_plan
from vpnctl.lab.dataplane import APISERVER_CN, DataPlane, prepare_dataplane
from vpnctl.reconcile.agentdocs import ApiserverPaths, NodePaths, ServerPaths

POD_ROOTS = ("/etc/vpnctl/", "/etc/vpnctl-apiserver/", "/run/vpnctl", "/var/lib/vpnctl")


@pytest.fixture(scope="module")
def dp(tmp_path_factory: pytest.TempPathFactory) -> DataPlane:
    plan = make_plan(prefix="vu", nodes=4)
    return prepare_dataplane(
        plan=plan, proto="udp", base=tmp_path_factory.mktemp("dp"), agent_count=3,
        extra_clients={"victim": IPv4Address("198.19.0.50"),
                       "spare-node": plan.nodes[3].internal_ip},
    )  # fmt: skip


def _paths(doc: Any) -> list[str]:
    if isinstance(doc, dict):
        return [p for v in doc.values() for p in _paths(v)]
    if isinstance(doc, list):
        return [p for v in doc for p in _paths(v)]
    return [doc] if isinstance(doc, str) and doc.startswith("/") else []


def test_role_configs_name_only_pod_paths_and_load(dp: DataPlane, tmp_path: Path) -> None:
    for role, doc in (("server", dp.server_config()), ("apiserver", dp.client_config("apiserver")),
                      ("node", dp.client_config("node"))):  # fmt: skip
        paths = _paths(doc)
        assert paths
        assert all(p.startswith(POD_ROOTS) for p in paths), (role, paths)
        (tmp_path / f"{role}.json").write_text(json.dumps(doc))
        load_role_config(str(tmp_path / f"{role}.json"), role=role)  # type: ignore[arg-type]
    assert dp.server_config()["desired_path"] == ServerPaths.desired
    assert dp.client_config("node")["openvpn"]["cert"] == NodePaths.cert
    assert dp.client_config("apiserver")["openvpn"]["key"] == ApiserverPaths.key


def test_nodes_dial_the_load_balancer_and_the_apiserver_the_services_name(dp: DataPlane) -> None:
    assert dp.client_config("node")["openvpn"]["remotes"] == [[str(dp.plan.server_ip), 1194]]
    ((host, port),) = dp.client_config("apiserver")["openvpn"]["remotes"]
    assert (host, port) == ("tenant-a-vpn.tenant-a.svc", 1194)


def test_every_client_is_pinned_to_the_serial_the_lab_issued(dp: DataPlane) -> None:
    doc = dp.desired_doc()
    parse_desired(doc, path="desired.json", tunnel_cidr=dp.plan.tunnel_cidr)
    assert doc["apiserver"]["common_name"] == APISERVER_CN
    assert doc["apiserver"]["serials"] == [format(dp.pki.clients[APISERVER_CN].serial, "x")]
    by_cn = {c["common_name"]: c for c in doc["clients"]}
    assert set(by_cn) == {"node-1", "node-2", "node-3", "victim", "spare-node"}
    for cn, entry in by_cn.items():
        assert entry["serials"] == [format(dp.pki.clients[cn].serial, "x")]
        assert IPv4Address(entry["ifconfig_ip"]) == dp.tunnel_ip(cn)


def test_each_node_carries_its_own_pods_through_its_own_tunnel(dp: DataPlane) -> None:
    """What the controller emits now that it reads the tenant's Nodes (issue 12): every
    lab node iroutes its own podCIDR; the elected node adds the service CIDR only."""
    by_cn = {c["common_name"]: c for c in dp.desired_doc()["clients"]}
    plan = dp.plan
    assert dp.tenant.service_route_node == "node-1"
    first = plan.nodes[0]
    assert by_cn["node-1"]["iroutes"] == [
        f"{first.internal_ip}/32", str(first.pod_cidr), str(plan.service_cidr)
    ]  # fmt: skip
    for n in plan.nodes[1:3]:
        assert by_cn[n.name]["iroutes"] == [f"{n.internal_ip}/32", str(n.pod_cidr)]


def test_the_apiserver_role_owns_its_routes_and_the_server_pushes_none(dp: DataPlane) -> None:
    """One owner (issue 12 item 2): the apiserver role keeps the tenant's networks on its
    tun; its CCD pushes nothing, so node churn does not rewrite it."""
    assert dp.desired_doc()["apiserver"]["push_routes"] == []
    routes = [IPv4Network(r) for r in dp.client_config("apiserver")["routes"]]
    plan = dp.plan
    assert IPv4Network(plan.pod_cidr) in routes
    assert IPv4Network(plan.service_cidr) in routes
    for n in plan.nodes[:3]:
        assert any(n.internal_ip in r for r in routes)
