"""One tenant's whole desired state in one call, so the reconcile loop stays thin.

The loop reads (Tunnel, Cluster, Machines, the tenant's Nodes, the server's node
observations), calls `plan_tenant`, reads or issues PKI with `secrets`/`certs`, builds
objects with `objects`/`tenant_objects` (the server's desired.json with
`plan.desired_state(...)`), applies what `diff.needs_update` says, and writes
`plan.status(...)`. Everything remembered between reconciles comes from the Tunnel's
status, which is how addresses and the service-route holder survive a restart.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from ipaddress import IPv4Network
from typing import Any, cast

from vpnctl.api import Cluster, Condition, Machine, Node, Tunnel, TunnelStatusBody
from vpnctl.reconcile.agentdocs import (
    apiserver_role_config,
    server_desired_state,
    server_role_config,
)
from vpnctl.reconcile.allocation import (
    Allocation,
    AllocationResult,
    allocate,
    allocations_from_status,
    released_from_status,
)
from vpnctl.reconcile.apiserver_slots import Slot
from vpnctl.reconcile.errors import PermanentError
from vpnctl.reconcile.machine_deletion import DeletionVerdicts, kept_while_deleting
from vpnctl.reconcile.names import TenantNames
from vpnctl.reconcile.routes import ClientRoutes, client_routes
from vpnctl.reconcile.service_route_election import (
    ServiceRouteElection,
    elect_service_route_node,
    parse_elected_at,
)
from vpnctl.reconcile.settings import Settings
from vpnctl.reconcile.status import NodeObservation, build_status, connected_members
from vpnctl.reconcile.tenant_spec import PendingMachine, TenantSpec, parse_tenant
from vpnctl.reconcile.tunnel_spec import node_revocation_max_delay
from vpnctl.reconcile.untrusted_json import field_mapping


@dataclass(frozen=True, kw_only=True)
class TenantPlan:
    tenant: TenantSpec
    names: TenantNames
    allocation: AllocationResult
    election: ServiceRouteElection
    clients: tuple[ClientRoutes, ...]  # the apiserver first, then nodes by name
    server_role_config: dict[str, Any]
    apiserver_role_config: dict[str, Any]
    observations: Mapping[str, NodeObservation]

    @property
    def service_route_node(self) -> str | None:
        return self.election.holder

    @property
    def waiting(self) -> tuple[PendingMachine, ...]:
        """Machines without a tunnel and why: pending ones and those the pool could not fit."""
        return (*self.tenant.pending, *self.allocation.unallocated)

    def desired_state(
        self,
        *,
        apiserver_serial: str | int | Sequence[str | int] | None,
        allocations: Sequence[Allocation] | None = None,
        apiserver_slots: Sequence[Slot] = (),
        replica_serials: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """The server's desired.json. ``allocations`` replaces the plan's when the pass
        learned more since planning (serials the tenant side signed); ``apiserver_slots``
        are the apiserver pods' slots (apiserver_slots.plan_slots), with the serial of
        each further slot's certificate in ``replica_serials`` by common name."""
        clients = (
            self.clients
            if allocations is None and not apiserver_slots
            else client_routes(
                tenant=self.tenant,
                allocations=self.allocation.allocations if allocations is None else allocations,
                service_route_node=self.service_route_node,
                apiserver_slots=apiserver_slots,
            )
        )
        return server_desired_state(
            clients=clients, apiserver_serial=apiserver_serial, replica_serials=replica_serials
        )

    def status(
        self,
        *,
        conditions: Sequence[Condition],
        previous: TunnelStatusBody | None,
        now: datetime,
        allocations: Sequence[Allocation] | None = None,
    ) -> TunnelStatusBody:
        """The Tunnel's status; ``allocations`` as for ``desired_state``."""
        return build_status(
            tenant=self.tenant,
            result=self.allocation
            if allocations is None
            else replace(self.allocation, allocations=tuple(allocations)),
            service_route_node=self.service_route_node,
            service_route_elected_at=self.election.elected_at,
            observations=self.observations,
            conditions=conditions,
            previous=previous,
            now=now,
        )


def revocation_max_delay(tunnel: Tunnel, *, settings: Settings) -> timedelta:
    """The Tunnel's spec.nodeRevocation.maxDelay, else the controller's default (also when
    the field is invalid: the spec's own parse reports that, and revocation must not wait
    for a valid spec)."""
    try:
        spec = field_mapping(tunnel.get("spec"), field="spec")
        own = node_revocation_max_delay(spec, where="Tunnel")
    except PermanentError:
        own = None
    return settings.node_revocation_max_delay if own is None else own


def deletion_verdicts(
    *, tunnel: Tunnel, machines: Sequence[Machine], settings: Settings, now: datetime
) -> DeletionVerdicts:
    """Which deleted Machines' nodes keep their tunnel now (machine_deletion.py)."""
    return kept_while_deleting(
        cast(Sequence[Mapping[str, Any]], machines),
        now=now,
        max_delay=revocation_max_delay(tunnel, settings=settings),
    )


def recorded_nodes(allocations: object) -> list[Node]:
    """Nodes as the last plan knew them, from ``status.allocations[].podCIDRs``: only the
    name and the podCIDRs (checked again like any Node's by ``parse_tenant``)."""
    nodes: list[Node] = []
    for entry in allocations if isinstance(allocations, list) else ():
        if not isinstance(entry, Mapping):
            continue
        name, cidrs = entry.get("node"), entry.get("podCIDRs")
        if isinstance(name, str) and isinstance(cidrs, list) and cidrs:
            texts = [c for c in cidrs if isinstance(c, str)]
            nodes.append({"metadata": {"name": name}, "spec": {"podCIDRs": texts}})
    return nodes


def plan_tenant(
    *,
    tunnel: Tunnel,
    cluster: Cluster,
    machines: Sequence[Machine],
    nodes: Sequence[Node] | None,
    observations: Mapping[str, NodeObservation],
    settings: Settings,
    reserved: Sequence[IPv4Network] | None = None,
    kept: Collection[str] = (),
    now: datetime | None = None,
) -> TenantPlan:
    """Parse, allocate, elect and route one tenant. Raises PermanentError for a problem
    with the tenant as a whole (see tenant.parse_tenant); per-Machine problems are in
    `TenantPlan.waiting`. `reserved` defaults to `settings.reserved_cidrs`.

    `nodes`: the tenant's Node objects, for per-node pod CIDRs; None while they are not
    known (the tenant side has not listed them yet): then the podCIDRs the last plan
    recorded in the status stand in (`recorded_nodes`), so a controller restart does not
    re-route every node's pods, which would kick every node's client twice.

    `kept`: Machines being deleted whose nodes keep their tunnel until drained
    (`deletion_verdicts`). `now`: the clock, for the service-route holder's grace after
    its election (None: no grace)."""
    previous = tunnel.get("status") or {}
    tenant = parse_tenant(
        tunnel=tunnel,
        cluster=cluster,
        machines=machines,
        nodes=recorded_nodes(previous.get("allocations")) if nodes is None else nodes,
        reserved=settings.reserved_cidrs if reserved is None else reserved,
        kept=kept,
    )
    allocation = allocate(
        tunnel_cidr=tenant.spec.tunnel_cidr,
        previous=allocations_from_status(previous.get("allocations")),
        released=released_from_status(previous.get("releasedTunnelIPs")),
        members=tenant.members,
        pending=[p.machine for p in tenant.pending],
    )
    allocated = {a.machine for a in allocation.allocations}
    routed = {m.node for m in tenant.members if m.machine in allocated}
    election = elect_service_route_node(
        current=previous.get("serviceRouteNode"),
        elected_at=parse_elected_at(previous.get("serviceRouteElectedAt")),
        members=routed,
        connected=connected_members(tenant=tenant, observations=observations),
        kubelet_up={n for n, o in observations.items() if o.kubelet_reachable is True},
        kubelet_down={n for n, o in observations.items() if o.kubelet_reachable is False},
        now=now,
        grace=settings.service_route_grace,
    )
    holder = election.holder
    names = TenantNames.for_cluster(tenant.cluster_name)
    return TenantPlan(
        tenant=tenant,
        names=names,
        allocation=allocation,
        election=election,
        clients=client_routes(
            tenant=tenant, allocations=allocation.allocations, service_route_node=holder
        ),
        server_role_config=server_role_config(tenant=tenant, settings=settings),
        apiserver_role_config=apiserver_role_config(
            tenant=tenant, settings=settings, service_name=names.service
        ),
        observations=dict(observations),
    )
