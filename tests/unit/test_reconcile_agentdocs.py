"""The documents the agent reads, checked by the agent's own parsers (agent.role_config,
agent.desired_state)."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from agent.desired_state import parse_desired
from agent.openvpn.config import (
    DEFAULT_RENEG_SEC,
    MAX_RENEG_SEC,
    MIN_RENEG_SEC,
    ServerConfig,
    render_client,
    render_server,
)
from agent.role_config import ClientRoleConfig, Role, ServerRoleConfig, load_role_config
from tests.support import capi
from vpnctl.reconcile.agentdocs import (
    PROBE_PORT,
    ServerPaths,
    apiserver_role_config,
    canonical_json,
    node_role_config,
    server_desired_state,
    server_role_config,
    service_remotes,
)
from vpnctl.reconcile.allocation import allocate, record_serial
from vpnctl.reconcile.errors import TemporaryError
from vpnctl.reconcile.routes import client_routes, tenant_routes
from vpnctl.reconcile.settings import Settings
from vpnctl.reconcile.tenant_spec import (
    APISERVER_COMMON_NAME,
    DEFAULT_RENEGOTIATE_SECONDS,
    MAX_RENEGOTIATE_SECONDS,
    MIN_RENEGOTIATE_SECONDS,
    TenantSpec,
    parse_tenant,
)

SETTINGS = Settings(agent_image="registry.example/vpnctl:1")
NET = IPv4Network


def lab_tenant(
    nodes: bool = True, extra: list[str] | None = None, transport: dict[str, Any] | None = None
) -> TenantSpec:
    t = capi.lab_tenant()
    spec: dict[str, Any] = {"clusterName": "tenant-a", "tunnelCIDR": capi.LAB_TUNNEL_CIDR}
    if extra:
        spec["extraRoutes"] = extra
    if transport:
        spec["transport"] = transport
    return parse_tenant(
        tunnel=capi.tunnel(spec=spec),  # type: ignore[arg-type]
        cluster=t.cluster,
        machines=t.machines,
        nodes=t.nodes if nodes else None,
    )


def desired_for(t: TenantSpec, *, elected: str | None = "node-2") -> dict[str, Any]:
    result = allocate(tunnel_cidr=t.spec.tunnel_cidr, previous=(), released=(), members=t.members)
    allocations = record_serial(result.allocations, machine="tenant-a-md-1", serial=0x5B01)
    clients = client_routes(tenant=t, allocations=allocations, service_route_node=elected)
    return server_desired_state(clients=clients, apiserver_serial="3F:9A")


def test_desired_state_round_trips_through_the_agents_parser() -> None:
    t = lab_tenant()
    doc = desired_for(t)
    # Through JSON text, as the server role reads it from the file.
    state = parse_desired(
        json.loads(canonical_json(doc)), path="desired.json", tunnel_cidr=t.spec.tunnel_cidr
    )
    assert state.apiserver is not None
    assert state.apiserver.common_name == APISERVER_COMMON_NAME
    assert state.apiserver.ifconfig_ip == IPv4Address("198.18.8.2")
    assert state.apiserver.serial == 0x3F9A
    # The apiserver role owns its routes (apiserver.json); the server pushes none.
    assert state.apiserver.push_routes == ()
    by_name = {c.common_name: c for c in state.clients}
    assert list(by_name) == ["node-1", "node-2", "node-3"]
    assert by_name["node-1"].serial == 0x5B01
    assert by_name["node-2"].serial is None
    assert by_name["node-2"].kubelet == (IPv4Address("198.19.0.12"), 10250)
    assert NET("198.19.192.0/20") in by_name["node-2"].iroutes
    assert by_name["node-3"].ifconfig_ip == IPv4Address("198.18.8.5")
    # The server's kernel routes (the agent derives them): every node and the services.
    assert NET("198.19.0.13/32") in state.routes


@pytest.mark.parametrize("elected", [None, "node-1", "node-3"])
@pytest.mark.parametrize("nodes", [True, False])
@pytest.mark.parametrize("extra", [None, ["198.19.0.0/24"], ["198.19.0.0/16", "10.1.0.0/16"]])
def test_every_plan_passes_the_agents_semantic_checks(
    elected: str | None, nodes: bool, extra: list[str] | None
) -> None:
    t = lab_tenant(nodes=nodes, extra=extra)
    parse_desired(desired_for(t, elected=elected), path="d", tunnel_cidr=t.spec.tunnel_cidr)


def test_desired_state_without_apiserver_entry_is_null() -> None:
    assert server_desired_state(clients=(), apiserver_serial=None) == {
        "apiserver": None,
        "clients": [],
    }


def test_desired_state_is_canonical() -> None:
    t = lab_tenant()
    assert canonical_json(desired_for(t)) == canonical_json(desired_for(t))
    assert canonical_json(desired_for(t)).endswith("}\n")


def test_server_role_config_loads_with_the_agents_loader(tmp_path: Path) -> None:
    t = lab_tenant()
    path = tmp_path / "server.json"
    path.write_text(canonical_json(server_role_config(tenant=t, settings=SETTINGS)))
    cfg = load_role_config(str(path), role="server")
    assert isinstance(cfg, ServerRoleConfig)
    assert cfg.openvpn.tunnel_cidr == NET("198.18.8.0/24")
    assert (cfg.openvpn.proto, cfg.openvpn.port) == ("udp", 1194)
    assert cfg.openvpn.ca == ServerPaths.ca
    assert cfg.desired_path == ServerPaths.desired
    assert cfg.crl_source == ServerPaths.crl_source
    assert cfg.common.health_port == SETTINGS.server_health_port
    assert cfg.probe_port == PROBE_PORT
    assert cfg.server_ip == IPv4Address("198.18.8.1")


def test_apiserver_role_config_loads_with_the_agents_loader(tmp_path: Path) -> None:
    t = lab_tenant()
    path = tmp_path / "apiserver.json"
    doc = apiserver_role_config(tenant=t, settings=SETTINGS, service_name="tenant-a-vpn")
    path.write_text(canonical_json(doc))
    cfg = load_role_config(str(path), role="apiserver")
    assert isinstance(cfg, ClientRoleConfig)
    assert tuple(cfg.openvpn.remotes) == (("tenant-a-vpn.tenant-a.svc", 1194),)
    assert cfg.probe.target == (IPv4Address("198.18.8.1"), PROBE_PORT)
    # The role owns the tenant's networks (the server pushes it none): pods, services,
    # and the node addresses the lab's extraRoutes do not cover.
    assert cfg.routes == tenant_routes(t)
    assert NET("198.19.64.0/18") in cfg.routes
    assert NET("198.19.192.0/20") in cfg.routes
    assert NET("198.19.0.11/32") in cfg.routes


def test_node_role_config_loads_with_the_agents_loader(tmp_path: Path) -> None:
    t = lab_tenant()
    path = tmp_path / "node.json"
    doc = node_role_config(tenant=t, settings=SETTINGS, remotes=[("198.18.0.1", 1194)])
    path.write_text(canonical_json(doc))
    cfg = load_role_config(str(path), role="node")
    assert isinstance(cfg, ClientRoleConfig)
    assert tuple(cfg.openvpn.remotes) == (("198.18.0.1", 1194),)
    assert cfg.common.health_port == SETTINGS.node_health_port


@pytest.mark.parametrize("seconds", [None, 10, 900])
def test_every_role_gets_the_tunnels_renegotiation_interval(
    tmp_path: Path, seconds: int | None
) -> None:
    # openvpn renegotiates when the shorter of the two ends' intervals runs out, so the
    # server and both kinds of client get the same value, and render it.
    t = lab_tenant(transport=None if seconds is None else {"renegotiateSeconds": seconds})
    want = 3600 if seconds is None else seconds
    docs: dict[Role, dict[str, Any]] = {
        "server": server_role_config(tenant=t, settings=SETTINGS),
        "apiserver": apiserver_role_config(tenant=t, settings=SETTINGS, service_name="t-vpn"),
        "node": node_role_config(tenant=t, settings=SETTINGS, remotes=[("198.18.0.1", 1194)]),
    }
    for role, doc in docs.items():
        assert doc["openvpn"]["reneg_sec"] == want, role
        path = tmp_path / f"{role}.json"
        path.write_text(canonical_json(doc))
        cfg = load_role_config(str(path), role=role)
        assert cfg.openvpn.reneg_sec == want, role
        text = (
            render_server(cfg.openvpn)
            if isinstance(cfg.openvpn, ServerConfig)
            else render_client(cfg.openvpn)
        )
        assert f"\nreneg-sec {want}\n" in text, role


def test_the_spec_allows_what_the_agent_accepts() -> None:
    # The controller cannot import the agent (import-linter), so the bounds are written
    # twice; a value the spec admits must never be one every agent refuses at start.
    assert (MIN_RENEGOTIATE_SECONDS, MAX_RENEGOTIATE_SECONDS) == (MIN_RENEG_SEC, MAX_RENEG_SEC)
    assert DEFAULT_RENEGOTIATE_SECONDS == DEFAULT_RENEG_SEC


def test_node_role_config_waits_for_a_server_address() -> None:
    with pytest.raises(TemporaryError) as info:
        node_role_config(tenant=lab_tenant(), settings=SETTINGS, remotes=[])
    assert info.value.reason == "WaitingForServerAddress"


def service(kind: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "spec": {"type": kind, "ports": [{"port": 1194, "protocol": "UDP", "nodePort": 31194}]},
    }
    body["spec"].update(extra.pop("spec", {}))
    body.update(extra)
    return body


def test_service_remotes() -> None:
    lb = service(
        "LoadBalancer",
        status={"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}, {"hostname": "vpn.example"}]}},
    )
    assert service_remotes(lb) == (("203.0.113.7", 1194), ("vpn.example", 1194))
    assert service_remotes(service("LoadBalancer")) == ()
    assert service_remotes(service("NodePort"), node_addresses=["192.0.2.2", "192.0.2.1"]) == (
        ("192.0.2.1", 31194),
        ("192.0.2.2", 31194),
    )
    assert service_remotes(service("ClusterIP", spec={"clusterIP": "10.96.0.9"})) == (
        ("10.96.0.9", 1194),
    )
    assert service_remotes(service("ClusterIP", spec={"clusterIP": "None"})) == ()
    assert service_remotes({"spec": {}}) == ()


def test_desired_state_pins_every_serial_vpnctl_signed_for_each_client() -> None:
    # Issue 9: the server admits a client only with a serial listed for its name. The
    # planner lists every certificate recorded when signing (the node may still run an
    # older one until it has picked up the renewal), and the apiserver's.
    t = lab_tenant()
    result = allocate(tunnel_cidr=t.spec.tunnel_cidr, previous=(), released=(), members=t.members)
    allocations = record_serial(result.allocations, machine="tenant-a-md-1", serial=0x4A77)
    allocations = record_serial(allocations, machine="tenant-a-md-1", serial="5b:01")
    clients = client_routes(tenant=t, allocations=allocations, service_route_node=None)
    doc = server_desired_state(clients=clients, apiserver_serial=["3f99", 0x3F9A])
    assert doc["apiserver"]["serial"] == "3f9a"
    assert doc["apiserver"]["serials"] == ["3f99", "3f9a"]
    by_name = {c["common_name"]: c for c in doc["clients"]}
    assert by_name["node-1"]["serial"] == "5b01"
    assert by_name["node-1"]["serials"] == ["4a77", "5b01"]
    assert by_name["node-2"]["serials"] == []  # nothing signed yet: nobody gets in as node-2
    state = parse_desired(doc, path="desired.json", tunnel_cidr=t.spec.tunnel_cidr)
    assert state.apiserver is not None
    assert state.apiserver.allowed_serials == {0x3F99, 0x3F9A}
    assert {c.common_name: c.allowed_serials for c in state.clients} == {
        "node-1": {0x4A77, 0x5B01}, "node-2": frozenset(), "node-3": frozenset()
    }  # fmt: skip
    # A single current serial, as the controller passes it today.
    single = server_desired_state(clients=clients, apiserver_serial="3F:9A")
    assert single["apiserver"]["serials"] == ["3f9a"]
