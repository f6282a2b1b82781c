"""The Tunnel's status, as a pure function of what this reconcile decided and observed.

Status is also the controller's memory (allocations, release history, the service-route
holder), so everything written here is read back by the next reconcile, possibly by a
different controller replica after a restart. Lists are sorted and timestamps only move
when their value changes, so an unchanged world gives an identical status and no write.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from vpnctl.api import Condition, TunnelNodeStatus, TunnelStatusBody
from vpnctl.reconcile.allocation import (
    AllocationResult,
    allocations_to_status,
    released_to_status,
)
from vpnctl.reconcile.conditions import rfc3339
from vpnctl.reconcile.tenant_spec import TenantSpec


@dataclass(frozen=True, kw_only=True)
class NodeObservation:
    """What the server role reports about one node client."""

    node: str
    connected: bool
    # When the client connected (from openvpn's status), if known.
    connected_since: datetime | None = None
    rtt_seconds: float | None = None
    kubelet_reachable: bool | None = None


def _previous_rows(previous: Sequence[TunnelNodeStatus] | None) -> dict[str, TunnelNodeStatus]:
    return {row["name"]: row for row in previous or () if isinstance(row.get("name"), str)}


def node_rows(
    *,
    tenant: TenantSpec,
    result: AllocationResult,
    observations: Mapping[str, NodeObservation],
    previous: Sequence[TunnelNodeStatus] | None,
    now: datetime,
) -> list[TunnelNodeStatus]:
    """One row per Machine of the tenant: allocated nodes with their tunnel and health,
    pending and unallocated ones with no tunnel IP and `connected: false`.

    `since` is when `connected` last changed: openvpn's connect time if the server role
    knows it, else the previous row's value while unchanged, else now. `connectedSince`
    (that connect time alone) and `rttSeconds` are there only while the node is connected
    and the server reports them, so a reader can tell the server's word from ours.
    """
    old = _previous_rows(previous)
    members = {m.machine: m for m in tenant.members}
    rows: list[TunnelNodeStatus] = []
    for alloc in result.allocations:
        if alloc.machine not in members:
            continue
        seen = observations.get(alloc.node)
        connected = seen.connected if seen is not None else False
        before = old.get(alloc.node)
        connected_since = None
        if seen is not None and seen.connected and seen.connected_since is not None:
            since = connected_since = rfc3339(seen.connected_since)
        elif before is not None and before.get("connected") == connected and before.get("since"):
            since = before["since"]
        else:
            since = rfc3339(now)
        row: TunnelNodeStatus = {
            "name": alloc.node,
            "machine": alloc.machine,
            "tunnelIP": str(alloc.tunnel_ip),
            "connected": connected,
            "since": since,
        }
        if connected_since is not None:
            row["connectedSince"] = connected_since
        if seen is not None and seen.connected and seen.rtt_seconds is not None:
            row["rttSeconds"] = round(seen.rtt_seconds, 6)
        if seen is not None and seen.kubelet_reachable is not None:
            row["kubeletReachable"] = seen.kubelet_reachable
        rows.append(row)
    for waiting in (*tenant.pending, *result.unallocated):
        name = waiting.node or waiting.machine
        before = old.get(name)
        if before is not None and before.get("connected") is False and before.get("since"):
            since = before["since"]
        else:
            since = rfc3339(now)
        rows.append({"name": name, "machine": waiting.machine, "connected": False, "since": since})
    return sorted(rows, key=lambda r: (r["name"], r.get("machine", "")))


def build_status(
    *,
    tenant: TenantSpec,
    result: AllocationResult,
    service_route_node: str | None,
    observations: Mapping[str, NodeObservation],
    conditions: Sequence[Condition],
    service_route_elected_at: datetime | None = None,
    previous: TunnelStatusBody | None,
    now: datetime,
) -> TunnelStatusBody:
    """The whole status subresource body for this reconcile."""
    rows = node_rows(
        tenant=tenant,
        result=result,
        observations=observations,
        previous=(previous or {}).get("nodes"),
        now=now,
    )
    allocations = allocations_to_status(result.allocations)
    pods = {m.machine: m.pod_cidrs for m in tenant.members}
    for entry in allocations:
        if pods.get(entry["machine"]):
            entry["podCIDRs"] = [str(n) for n in pods[entry["machine"]]]
    status: TunnelStatusBody = {
        "observedGeneration": tenant.generation,
        "conditions": sorted(conditions, key=lambda c: c["type"]),
        "nodes": rows,
        "allocations": allocations,
        "releasedTunnelIPs": released_to_status(result.released),
        "nodeCount": len(rows),
        "connectedCount": sum(1 for r in rows if r.get("connected")),
    }
    if service_route_node is not None:
        status["serviceRouteNode"] = service_route_node
        if service_route_elected_at is not None:
            status["serviceRouteElectedAt"] = rfc3339(service_route_elected_at)
    return status


def connected_members(
    *, tenant: TenantSpec, observations: Mapping[str, NodeObservation]
) -> frozenset[str]:
    """Names of member nodes the server reports connected: the election's candidates."""
    return frozenset(
        m.node for m in tenant.members if (o := observations.get(m.node)) and o.connected
    )
