"""Which networks go to which tunnel client, and which node carries the service CIDR.

openvpn routes a packet from the apiserver to a client by the clients' `iroute`s, and the
server role (agent/desired_state.py) refuses any two iroutes that overlap, within a client or
across clients: every address has exactly one owner. And openvpn reads a client's iroutes
only when it connects, so the server role kicks a client whose CCD changed. The plan is
built around both facts:

- Every node owns its InternalIP/32 and its podCIDRs (per-node locality).
- One elected, connected node also owns each of the service CIDRs, the extra routes and
  the cluster's pod CIDRs *that overlaps no node's own prefix*, taken whole, never cut
  into pieces. The pod CIDR is a fallback for CNIs that leave Node.spec.podCIDRs empty
  (Calico, Cilium cluster-pool): then no node owns a piece of it and the elected node
  carries all of it. A network that overlaps a node's prefix (a node subnet listed in
  extraRoutes, a pod CIDR split into node podCIDRs) is reached through the nodes' own
  iroutes instead. Taking networks whole means a node joining or leaving does not
  change the elected node's CCD, so it is not kicked.
- The apiserver client has no iroutes and is pushed no routes: its CCD is the same
  whatever the nodes do, so node churn never kicks it (a rewritten CCD means a kick,
  and a kick cuts every exec, logs -f and port-forward). Its routes into the tenant
  (`tenant_routes`: pods, services, extra routes and each node address none of those
  cover) are owned by the apiserver role instead, which keeps them on its tun and puts
  back one deleted by hand within a second, without a reconnect (agent/roles/apiserver.py;
  the controller writes them into the role's config, agentdocs.apiserver_role_config).
  A node subnet in spec.extraRoutes covers every node address and keeps that set
  stable as nodes come and go.

The server's kernel routes towards tun are the union of the iroutes; the server role
derives them itself. The election is service_route_election.py.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from vpnctl.reconcile.allocation import Allocation
from vpnctl.reconcile.apiserver_slots import Slot
from vpnctl.reconcile.cidr import collapse, covered, host_route, unique_sorted
from vpnctl.reconcile.tenant_spec import APISERVER_COMMON_NAME, Member, TenantSpec


@dataclass(frozen=True, kw_only=True)
class ClientRoutes:
    """One tunnel client's CCD: its address, its iroutes and what is pushed to it."""

    common_name: str
    tunnel_ip: IPv4Address
    iroutes: tuple[IPv4Network, ...]
    push_routes: tuple[IPv4Network, ...]
    # Machine name for nodes, None for the apiserver.
    machine: str | None = None
    # "ip:port" of the node's kubelet, probed through this client's tunnel.
    kubelet: tuple[IPv4Address, int] | None = None
    # The node's current certificate serial (hex), when known: the server kicks the client
    # the moment it appears in the CRL.
    serial: str | None = None
    # Every serial (hex) vpnctl signed for the node that may still be in use, oldest
    # first: the server admits the node only with one of these (and not revoked).
    serials: tuple[str, ...] = ()


def node_iroutes(member: Member) -> tuple[IPv4Network, ...]:
    """A node's own prefixes: its InternalIP/32 and its podCIDRs."""
    return unique_sorted([host_route(member.internal_ip), *member.pod_cidrs])


def elected_iroutes(
    tenant: TenantSpec, *, claimed: Collection[IPv4Network]
) -> tuple[IPv4Network, ...]:
    """What the elected node carries besides its own prefixes (see the module docstring)."""
    candidates = [*tenant.networks.services, *tenant.spec.extra_routes, *tenant.networks.pods]
    free = [net for net in candidates if not any(net.overlaps(c) for c in claimed)]
    return collapse(free)


def tenant_routes(tenant: TenantSpec) -> tuple[IPv4Network, ...]:
    """Everything the apiserver reaches through the tunnel, collapsed.

    Pods, services, extra routes, and each member's InternalIP/32 that none of those cover.
    """
    broad = [*tenant.networks.pods, *tenant.networks.services, *tenant.spec.extra_routes]
    hosts = [host_route(m.internal_ip) for m in tenant.members]
    return collapse([*broad, *(h for h in hosts if not covered(h, broad))])


def client_routes(
    *,
    tenant: TenantSpec,
    allocations: Collection[Allocation],
    service_route_node: str | None,
    apiserver_slots: Sequence[Slot] = (),
) -> tuple[ClientRoutes, ...]:
    """The CCD of every client: the apiserver clients first (each held slot of
    `apiserver_slots` by index, apiserver_slots.py; slot 0 alone when no apiserver pod
    holds one, as before there were slots), then each allocated member by name.

    Allocations of pending Machines (kept in status) get no CCD: a client without a CCD
    file is refused by the server (`ccd-exclusive`).
    """
    spec = tenant.spec
    by_machine: Mapping[str, Member] = {m.machine: m for m in tenant.members}
    routed = [
        (alloc, by_machine[alloc.machine]) for alloc in allocations if alloc.machine in by_machine
    ]
    own = {member.node: node_iroutes(member) for _, member in routed}
    claimed = [net for nets in own.values() for net in nets]
    nodes: list[ClientRoutes] = []
    for alloc, member in routed:
        iroutes = own[member.node]
        if member.node == service_route_node:
            iroutes = unique_sorted([*iroutes, *elected_iroutes(tenant, claimed=claimed)])
        nodes.append(
            ClientRoutes(
                common_name=member.node,
                tunnel_ip=alloc.tunnel_ip,
                iroutes=iroutes,
                push_routes=(),
                machine=member.machine,
                kubelet=(member.internal_ip, member.kubelet_port),
                serial=alloc.serial,
                serials=alloc.serials,
            )
        )
    apiserver = ClientRoutes(
        common_name=APISERVER_COMMON_NAME,
        tunnel_ip=spec.apiserver_ip,
        iroutes=(),
        # The apiserver role owns these routes (see the module docstring).
        push_routes=(),
    )
    replicas = [
        ClientRoutes(common_name=s.common_name, tunnel_ip=s.tunnel_ip, iroutes=(), push_routes=())
        for s in sorted(apiserver_slots, key=lambda s: s.index)
        if s.index > 0
    ]
    first = [apiserver] if not apiserver_slots or any(s.index == 0 for s in apiserver_slots) else []
    return (*first, *replicas, *sorted(nodes, key=lambda c: c.common_name))
