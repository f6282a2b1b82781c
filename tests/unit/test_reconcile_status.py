"""The Tunnel's status and `vpnctl status` tables (vpnctl.reconcile.status, .table)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast

import pytest
import yaml

from tests.support import capi
from tests.support.conditions import all_parts_done
from vpnctl.api import Tunnel, TunnelStatusBody
from vpnctl.reconcile.allocation import (
    AllocationResult,
    allocate,
    allocations_from_status,
    released_from_status,
)
from vpnctl.reconcile.conditions import (
    READY,
    SERVER_READY,
    derive_ready,
    rfc3339,
    set_condition,
)
from vpnctl.reconcile.service_route_election import elect_service_route_node
from vpnctl.reconcile.status import NodeObservation, build_status, connected_members
from vpnctl.reconcile.status_table import (
    format_table,
    human_duration,
    render_objects,
    render_status,
)
from vpnctl.reconcile.tenant_spec import TenantSpec, parse_tenant

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def tenant_with_pending() -> TenantSpec:
    t = capi.lab_tenant()
    return parse_tenant(
        tunnel=t.tunnel,
        cluster=t.cluster,
        machines=[*t.machines, capi.machine(name="tenant-a-md-9")],
        nodes=t.nodes,
    )


def reconcile_once(
    t: TenantSpec,
    previous: TunnelStatusBody | None,
    observations: dict[str, NodeObservation],
    now: datetime,
) -> TunnelStatusBody:
    """The pure half of a reconcile: everything from status, nothing from memory."""
    prev = previous or {}
    result: AllocationResult = allocate(
        tunnel_cidr=t.spec.tunnel_cidr,
        previous=allocations_from_status(prev.get("allocations")),
        released=released_from_status(prev.get("releasedTunnelIPs")),
        members=t.members,
        pending=[p.machine for p in t.pending],
    )
    holder = elect_service_route_node(
        current=prev.get("serviceRouteNode"),
        elected_at=None,
        members={m.node for m in t.members},
        connected=connected_members(tenant=t, observations=observations),
        now=None,
    ).holder
    conditions = all_parts_done(prev.get("conditions", []), generation=t.generation, now=now)
    return build_status(
        tenant=t,
        result=result,
        service_route_node=holder,
        observations=observations,
        conditions=conditions,
        previous=previous,
        now=now,
    )


def obs(*connected: str, rtt: float = 0.002) -> dict[str, NodeObservation]:
    return {
        n: NodeObservation(node=n, connected=True, rtt_seconds=rtt, kubelet_reachable=True)
        for n in connected
    }


def test_status_of_the_lab_with_one_pending_machine() -> None:
    status = reconcile_once(tenant_with_pending(), None, obs("node-1", "node-3"), T0)
    assert status["observedGeneration"] == 1
    assert status["nodeCount"] == 4
    assert status["connectedCount"] == 2
    assert status["serviceRouteNode"] == "node-1"
    rows = {r["name"]: r for r in status["nodes"]}
    assert rows["node-1"] == {
        "name": "node-1",
        "machine": "tenant-a-md-1",
        "tunnelIP": "198.18.8.3",
        "connected": True,
        "since": "2024-05-01T12:00:00Z",
        "rttSeconds": 0.002,
        "kubeletReachable": True,
    }
    assert rows["node-2"]["connected"] is False
    assert "rttSeconds" not in rows["node-2"]
    assert rows["tenant-a-md-9"] == {
        "name": "tenant-a-md-9",
        "machine": "tenant-a-md-9",
        "connected": False,
        "since": "2024-05-01T12:00:00Z",
    }
    assert [c["type"] for c in status["conditions"]] == [
        "AgentInstalled",
        "PKIReady",
        READY,
        "ServerReady",
    ]
    assert len(status["allocations"]) == 3


def test_resync_with_no_change_gives_an_identical_status() -> None:
    t = tenant_with_pending()
    first = reconcile_once(t, None, obs("node-1", "node-2", "node-3"), T0)
    second = reconcile_once(t, first, obs("node-1", "node-2", "node-3"), T0 + timedelta(minutes=10))
    assert second == first


def test_since_moves_when_connected_changes_and_holder_is_re_elected() -> None:
    t = tenant_with_pending()
    t1 = T0 + timedelta(seconds=30)
    first = reconcile_once(t, None, obs("node-1", "node-2"), T0)
    assert first["serviceRouteNode"] == "node-1"
    second = reconcile_once(t, first, obs("node-2", "node-3"), t1)
    rows = {r["name"]: r for r in second["nodes"]}
    assert rows["node-1"]["connected"] is False
    assert rows["node-1"]["since"] == "2024-05-01T12:00:30Z"
    assert rows["node-2"]["since"] == "2024-05-01T12:00:00Z"
    assert second["serviceRouteNode"] == "node-2"
    third = reconcile_once(t, second, obs("node-1", "node-2", "node-3"), t1 + timedelta(seconds=5))
    assert third["serviceRouteNode"] == "node-2"  # stays with the holder


def test_openvpn_connect_time_wins_for_since() -> None:
    t = tenant_with_pending()
    seen = {
        "node-1": NodeObservation(
            node="node-1", connected=True, connected_since=T0 - timedelta(hours=1)
        ),
        "node-2": NodeObservation(node="node-2", connected=True),  # the server gave no time
    }
    status = reconcile_once(t, None, seen, T0)
    rows = {r["name"]: r for r in status["nodes"]}
    assert rows["node-1"]["since"] == "2024-05-01T11:00:00Z"
    assert rows["node-1"]["connectedSince"] == "2024-05-01T11:00:00Z"
    assert rows["node-2"]["since"] == "2024-05-01T12:00:00Z"  # when we saw it
    assert "connectedSince" not in rows["node-2"]

    # node-1 reconnected: the new connection's time; then it is gone: no connect time.
    seen["node-1"] = NodeObservation(
        node="node-1", connected=True, connected_since=T0 + timedelta(seconds=40)
    )
    again = reconcile_once(t, status, seen, T0 + timedelta(minutes=1))
    assert next(r for r in again["nodes"] if r["name"] == "node-1")["connectedSince"] == (
        "2024-05-01T12:00:40Z"
    )
    seen["node-1"] = NodeObservation(node="node-1", connected=False)
    gone = reconcile_once(t, again, seen, T0 + timedelta(minutes=2))
    row = next(r for r in gone["nodes"] if r["name"] == "node-1")
    assert (row["connected"], row["since"]) == (False, "2024-05-01T12:02:00Z")
    assert "connectedSince" not in row


def test_no_connected_node_means_no_holder() -> None:
    status = reconcile_once(tenant_with_pending(), None, {}, T0)
    assert "serviceRouteNode" not in status
    assert status["connectedCount"] == 0


def test_addresses_survive_a_controller_restart_through_status() -> None:
    t = tenant_with_pending()
    first = reconcile_once(t, None, obs("node-1"), T0)
    # A different controller replica, with nothing in memory, reads the status back.
    read_back = cast(TunnelStatusBody, json.loads(json.dumps(first)))
    again = reconcile_once(t, read_back, obs("node-1"), T0 + timedelta(hours=1))
    assert again["allocations"] == first["allocations"]


# --- tables -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-5, "<invalid>"),
        (0, "0s"),
        (119, "119s"),
        (120, "2m"),
        (125, "2m5s"),
        (600, "10m"),
        (3 * 3600 - 1, "179m"),
        (3 * 3600, "3h"),
        (3 * 3600 + 60, "3h1m"),
        (10 * 3600, "10h"),
        (50 * 3600, "2d2h"),
        (48 * 3600, "2d"),
        (30 * 86400, "30d"),
        (3 * 365 * 86400 + 86400, "3y1d"),
        (9 * 365 * 86400, "9y"),
    ],
)
def test_human_duration_matches_kubectl(seconds: int, text: str) -> None:
    assert human_duration(timedelta(seconds=seconds)) == text


def test_format_table_is_kubectl_like() -> None:
    assert format_table(("A", "LONGER"), [("xx", "y"), ("x", "")]) == ("A    LONGER\nxx   y\nx\n")


def tunnel_with(status: TunnelStatusBody, **meta: Any) -> Tunnel:
    t = capi.tunnel(**meta)
    t["status"] = status
    return t


def test_render_status_for_one_tunnel() -> None:
    status = reconcile_once(tenant_with_pending(), None, obs("node-1", "node-3"), T0)
    out = render_status([tunnel_with(status)], now=T0 + timedelta(minutes=5))
    tunnels, nodes = out.split("\n\n")
    assert tunnels.splitlines() == [
        "NAMESPACE   CLUSTER    READY   REASON        NODES   CONNECTED   AGE",
        "tenant-a    tenant-a   True    TunnelReady   4       2           121d",
    ]
    lines = nodes.splitlines()
    assert lines[0].split() == ["NODE", "TUNNEL-IP", "CONNECTED", "SINCE", "RTT", "KUBELET"]
    assert lines[1].split() == ["node-1", "198.18.8.3", "yes", "5m", "2.0ms", "OK"]
    assert lines[2].split() == ["node-2", "198.18.8.4", "no", "5m", "-", "-"]
    assert lines[4].split() == ["tenant-a-md-9", "-", "no", "5m", "-", "-"]


def test_since_is_the_servers_connect_time_and_rtt_is_in_milliseconds() -> None:
    """SINCE ages the server's connect time (not when the controller noticed), RTT is
    the server's last probe; `-` where the server reports none."""
    seen = {
        "node-1": NodeObservation(
            node="node-1", connected=True, connected_since=T0 - timedelta(hours=3),
            rtt_seconds=0.0123, kubelet_reachable=True,
        ),
        "node-2": NodeObservation(
            node="node-2", connected=True, connected_since=T0 - timedelta(seconds=30),
            rtt_seconds=0.00042, kubelet_reachable=True,
        ),
        # Connected, kubelet not answering: no RTT; no connect time from the server.
        "node-3": NodeObservation(node="node-3", connected=True, kubelet_reachable=False),
    }  # fmt: skip
    status = reconcile_once(tenant_with_pending(), None, seen, T0)
    now = T0 + timedelta(minutes=1)
    _, nodes = render_status([tunnel_with(status)], now=now).split("\n\n")
    rows = {line.split()[0]: line.split() for line in nodes.splitlines()}
    assert rows["NODE"] == ["NODE", "TUNNEL-IP", "CONNECTED", "SINCE", "RTT", "KUBELET"]
    assert rows["node-1"][2:] == ["yes", "3h1m", "12ms", "OK"]
    assert rows["node-2"][2:] == ["yes", "90s", "0.42ms", "OK"]
    assert rows["node-3"][2:] == ["yes", "60s", "-", "FAIL"]

    # A row whose `since` disagrees shows the server's connect time all the same (a
    # status written before `since` followed it, or edited by hand).
    row = next(r for r in status["nodes"] if r["name"] == "node-2")
    row["since"] = rfc3339(T0)
    _, nodes = render_status([tunnel_with(status)], now=now, wide=True).split("\n\n")
    header, *lines = (line.split() for line in nodes.splitlines())
    assert header == ["NODE", "MACHINE", "TUNNEL-IP", "CONNECTED", "SINCE", "RTT", "KUBELET"]
    wide = {cells[0]: dict(zip(header, cells, strict=True)) for cells in lines}
    assert (wide["node-2"]["SINCE"], wide["node-2"]["RTT"]) == ("90s", "0.42ms")


def test_not_ready_shows_the_reason_and_wide_shows_the_parts() -> None:
    prev: TunnelStatusBody = {}
    t = tenant_with_pending()
    status = reconcile_once(t, prev, obs("node-1"), T0)
    conditions = set_condition(
        status["conditions"], type=SERVER_READY, status="False", reason="ServerNotRunning",
        message="the server Deployment has no ready pod\n(0 of 1)", observed_generation=1,
        now=T0,
    )  # fmt: skip
    status["conditions"] = derive_ready(conditions, observed_generation=1, now=T0)
    tunnel = tunnel_with(status)
    tunnels, nodes = render_status([tunnel], now=T0).split("\n\n")
    header, row = (line.split() for line in tunnels.splitlines())
    assert dict(zip(header, row, strict=False))["REASON"] == "ServerNotRunning"
    assert row[2:4] == ["False", "ServerNotRunning"]

    tunnels, nodes = render_status([tunnel], now=T0, wide=True).split("\n\n")
    header_line, row_line = tunnels.splitlines()
    assert header_line.split() == [
        "NAMESPACE", "CLUSTER", "READY", "REASON", "NODES", "CONNECTED", "AGE",
        "PKI", "SERVER", "AGENT", "ROUTE-NODE", "MESSAGE",
    ]  # fmt: skip
    message_at = header_line.index("MESSAGE")
    assert row_line.split()[7:11] == ["True", "False", "True", "node-1"]
    assert row_line[message_at:] == "the server Deployment has no ready pod (0 of 1)"
    assert nodes.splitlines()[0].split()[:3] == ["NODE", "MACHINE", "TUNNEL-IP"]
    assert nodes.splitlines()[1].split()[:3] == ["node-1", "tenant-a-md-1", "198.18.8.3"]


def test_render_status_for_many_tunnels_prefixes_namespace_and_cluster() -> None:
    status = reconcile_once(tenant_with_pending(), None, obs("node-1"), T0)
    a = tunnel_with(status, name="b-cluster", namespace="ns2", spec={"clusterName": "b-cluster"})
    b = tunnel_with(status, name="a-cluster", namespace="ns1", spec={"clusterName": "a-cluster"})
    out = render_status([a, b], now=T0)
    tunnels, nodes = out.split("\n\n")
    assert [line.split()[0] for line in tunnels.splitlines()] == ["NAMESPACE", "ns1", "ns2"]
    assert nodes.splitlines()[0].split()[:3] == ["NAMESPACE", "CLUSTER", "NODE"]
    assert nodes.splitlines()[1].split()[:3] == ["ns1", "a-cluster", "node-1"]


def test_render_status_before_any_status() -> None:
    out = render_status([capi.tunnel()], now=T0)
    assert out.splitlines()[1].split() == ["tenant-a", "tenant-a", "Unknown", "-", "0", "0", "121d"]
    assert render_status([], now=T0) == "No tunnels found.\n"


@pytest.mark.parametrize("output", ["json", "yaml"])
def test_objects_are_printed_like_kubectl(output: Literal["json", "yaml"]) -> None:
    status = reconcile_once(tenant_with_pending(), None, obs("node-1"), T0)
    a = tunnel_with(status, name="b", namespace="ns2", spec={"clusterName": "b"})
    b = tunnel_with(status, name="a", namespace="ns1", spec={"clusterName": "a"})
    # as items of a list response: no kind, no apiVersion; managedFields present
    for t in (a, b):
        t.pop("kind")
        t.pop("apiVersion")
        cast(dict[str, Any], t["metadata"])["managedFields"] = [{"manager": "vpnctl"}]
    load = json.loads if output == "json" else yaml.safe_load
    listed = load(render_objects([a, b], output=output))
    assert (listed["apiVersion"], listed["kind"]) == ("v1", "List")
    assert [i["metadata"]["name"] for i in listed["items"]] == ["a", "b"]
    for item in listed["items"]:
        assert (item["apiVersion"], item["kind"]) == ("vpnctl.io/v1alpha1", "Tunnel")
        assert "managedFields" not in item["metadata"]
        assert item["status"] == json.loads(json.dumps(status))
    assert "managedFields" in cast(dict[str, Any], a["metadata"])  # the input is not changed
    one = load(render_objects([a], output=output, single=True))
    assert (one["kind"], one["metadata"]["name"]) == ("Tunnel", "b")
