"""plan_tenant: the whole pure reconcile of one tenant, restarted from status each time."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Network
from typing import Any, cast

import pytest

from agent.desired_state import parse_desired
from tests.support import capi
from tests.support.conditions import all_parts_done
from vpnctl.api import Tunnel, TunnelStatusBody
from vpnctl.reconcile.conditions import (
    AGENT_INSTALLED,
    READY,
    SERVER_READY,
    derive_ready,
    find_condition,
    set_error_condition,
)
from vpnctl.reconcile.errors import PermanentError, TemporaryError
from vpnctl.reconcile.settings import Settings
from vpnctl.reconcile.status import NodeObservation
from vpnctl.reconcile.tenant_plan import TenantPlan, plan_tenant

SETTINGS = Settings(agent_image="registry.example/vpnctl:1")
T0 = datetime(2024, 5, 1, tzinfo=UTC)


def up(*nodes: str) -> dict[str, NodeObservation]:
    return {n: NodeObservation(node=n, connected=True) for n in nodes}


def run(
    tunnel: Tunnel,
    machines: Any,
    observations: dict[str, NodeObservation],
    *,
    settings: Settings = SETTINGS,
) -> TenantPlan:
    t = capi.lab_tenant()
    return plan_tenant(
        tunnel=tunnel,
        cluster=t.cluster,
        machines=machines,
        nodes=t.nodes,
        observations=observations,
        settings=settings,
    )


def written(tunnel: Tunnel, plan: TenantPlan, now: datetime) -> Tunnel:
    """The Tunnel as the next reconcile reads it: status written, round-tripped as JSON."""
    conditions = all_parts_done([], generation=plan.tenant.generation, now=now)
    status = plan.status(conditions=conditions, previous=tunnel.get("status"), now=now)
    body = json.loads(json.dumps({**tunnel, "status": status}))
    return cast(Tunnel, body)


def test_restarts_keep_addresses_and_the_holder() -> None:
    lab = capi.lab_tenant()
    tunnel = lab.tunnel
    first = run(tunnel, lab.machines, up("node-2", "node-3"))
    assert first.service_route_node == "node-2"
    tunnel = written(tunnel, first, T0)
    # node-1 connects too; a fresh controller plans from status only.
    second = run(tunnel, lab.machines, up("node-1", "node-2", "node-3"))
    assert second.service_route_node == "node-2"
    assert second.allocation.allocations == first.allocation.allocations
    assert second.clients == first.clients
    tunnel2 = written(tunnel, second, T0 + timedelta(minutes=1))
    assert tunnel2["status"]["allocations"] == tunnel["status"]["allocations"]

    # A machine goes; its address is released, the others keep theirs; a new one gets a
    # never-used address.
    fewer = [m for m in lab.machines if m["metadata"]["name"] != "tenant-a-md-1"]
    third = run(tunnel2, fewer, up("node-2", "node-3"))
    assert [a.machine for a in third.allocation.removed] == ["tenant-a-md-1"]
    tunnel3 = written(tunnel2, third, T0 + timedelta(minutes=2))
    assert tunnel3["status"]["releasedTunnelIPs"] == ["198.18.8.3"]
    newcomer = capi.machine(name="tenant-a-md-4", node="node-4", internal_ip="198.19.0.14")
    fourth = run(tunnel3, [*fewer, newcomer], up("node-2", "node-3"))
    assert fourth.allocation.ip_of("tenant-a-md-4") == fourth.tenant.spec.tunnel_cidr[6]
    assert fourth.allocation.ip_of("tenant-a-md-2") == first.allocation.ip_of("tenant-a-md-2")


def test_desired_state_and_configs_come_with_the_plan() -> None:
    lab = capi.lab_tenant()
    plan = run(lab.tunnel, lab.machines, up("node-1"))
    doc = plan.desired_state(apiserver_serial=7)
    state = parse_desired(doc, path="desired.json", tunnel_cidr=IPv4Network("198.18.8.0/24"))
    assert [c.common_name for c in state.clients] == ["node-1", "node-2", "node-3"]
    assert plan.server_role_config["openvpn"]["tunnel_cidr"] == "198.18.8.0/24"
    assert plan.apiserver_role_config["openvpn"]["remotes"] == [["tenant-a-vpn.tenant-a.svc", 1194]]
    assert plan.names.service == "tenant-a-vpn"


def test_the_renegotiation_interval_reaches_both_role_configs_of_the_plan() -> None:
    lab = capi.lab_tenant()
    plan = run(lab.tunnel, lab.machines, up("node-1"))
    assert plan.server_role_config["openvpn"]["reneg_sec"] == 3600
    assert plan.apiserver_role_config["openvpn"]["reneg_sec"] == 3600
    spec = {**lab.tunnel["spec"], "transport": {"renegotiateSeconds": 45}}
    plan = run(cast(Tunnel, {**lab.tunnel, "spec": spec}), lab.machines, up("node-1"))
    assert plan.server_role_config["openvpn"]["reneg_sec"] == 45
    assert plan.apiserver_role_config["openvpn"]["reneg_sec"] == 45


def test_a_too_short_renegotiation_interval_stops_the_plan_with_a_readable_error() -> None:
    lab = capi.lab_tenant()
    spec = {**lab.tunnel["spec"], "transport": {"renegotiateSeconds": 5}}
    with pytest.raises(PermanentError) as info:
        run(cast(Tunnel, {**lab.tunnel, "spec": spec}), lab.machines, up())
    assert info.value.reason == "InvalidSpec"
    assert info.value.message == (
        "spec.transport.renegotiateSeconds 5 of Tunnel tenant-a/tenant-a is shorter than the "
        "minimum of 10 s: every node would redo its TLS handshake, and the server "
        "re-authorise it, that often; set 10 to 86400 (default 3600)"
    )


def _small_cidr_and_one_more_machine() -> tuple[Tunnel, list[Any]]:
    """A Tunnel whose /29 has addresses for 3 nodes (after the server's and the
    apiservers'), and the Machine of node 4 beside the lab's three: node-4 gets no
    address."""
    tunnel = capi.tunnel(spec={"clusterName": "tenant-a", "tunnelCIDR": "198.18.8.0/29"})
    extra = [
        capi.machine(name=f"tenant-a-md-{i}", node=f"node-{i}", internal_ip=f"198.19.0.{10 + i}")
        for i in (4,)
    ]
    return tunnel, extra


def test_waiting_lists_pending_and_unallocated_machines() -> None:
    lab = capi.lab_tenant()
    tunnel, extra = _small_cidr_and_one_more_machine()
    plan = run(tunnel, [*lab.machines, *extra, capi.machine(name="tenant-a-md-9")], {})
    waiting = {w.machine: w.error.reason for w in plan.waiting}
    assert waiting == {"tenant-a-md-9": "WaitingForNodeRef", "tenant-a-md-4": "TunnelCIDRExhausted"}
    assert plan.service_route_node is None
    status = plan.status(conditions=[], previous=None, now=T0)
    assert status["nodeCount"] == 5


def test_a_node_without_a_tunnel_address_is_never_elected() -> None:
    lab = capi.lab_tenant()
    tunnel, extra = _small_cidr_and_one_more_machine()
    plan = run(tunnel, [*lab.machines, *extra], up("node-4"))
    assert plan.service_route_node is None


def test_reserved_cidrs_come_from_settings() -> None:
    lab = capi.lab_tenant()
    settings = Settings(agent_image="i", reserved_cidrs=(IPv4Network("198.18.8.0/25"),))
    with pytest.raises(PermanentError) as info:
        run(lab.tunnel, lab.machines, {}, settings=settings)
    assert info.value.reason == "CIDROverlap"


def test_errors_become_conditions_and_ready_follows() -> None:
    conditions = set_error_condition(
        [],
        type=AGENT_INSTALLED,
        error=TemporaryError(reason="WaitingForKubeconfig", message="no kubeconfig yet"),
        observed_generation=2,
        now=T0,
    )
    conditions = set_error_condition(
        conditions,
        type=SERVER_READY,
        error=PermanentError(reason="CIDROverlap", message="tunnel CIDR overlaps"),
        observed_generation=2,
        now=T0,
    )
    conditions = derive_ready(conditions, observed_generation=2, now=T0)
    ready = find_condition(conditions, READY)
    assert ready is not None
    # PKIReady is missing (Unknown) but a part is False: Ready is False with that part's
    # reason, the first in READY_PARTS order.
    assert (ready["status"], ready["reason"]) == ("False", "CIDROverlap")


def test_status_of_a_fresh_tunnel_has_no_surprises() -> None:
    lab = capi.lab_tenant()
    plan = run(lab.tunnel, lab.machines, {})
    status: TunnelStatusBody = plan.status(conditions=[], previous=None, now=T0)
    assert status["connectedCount"] == 0
    assert "serviceRouteNode" not in status
    assert [n["tunnelIP"] for n in status["nodes"]] == ["198.18.8.3", "198.18.8.4", "198.18.8.5"]
