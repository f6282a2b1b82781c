"""Stable tunnel addresses per node, kept across controller restarts.

The durable record is the Tunnel's status (`status.allocations`, `status.releasedTunnelIPs`);
the controller keeps nothing in memory between reconciles. `allocate` is a pure function of
that record and the current members, so re-running it after a restart, from status alone,
gives every node the address it had.

Rules:

- A Machine keeps its address for as long as it exists, even while it is pending (a node
  whose InternalIP briefly disappears must not be renumbered when it comes back).
- A new member gets the lowest address that was *never used*; only when none is left does
  it get the address released longest ago.
- The network address, the server (.1), the apiserver client (.2), the block of further
  apiserver clients at the top (apiserver_slots.replica_block) and broadcast are never
  handed out. A node that got an address in that block before the block existed keeps it.

Why not reuse a just-released address: a deleted node's address lingers after the Machine
is gone. The revoked client may still be connected for the second or two until it is
kicked, and openvpn refuses or misroutes a second client with the same virtual address;
conntrack entries in the server pod, the apiserver's open connections to the old node and
metric series labelled with the address all still point at it. Handing it to the next
node at once would mix two nodes' traffic and history. Preferring never-used addresses
makes reuse happen only when the pool has wrapped around, long after all of that is gone.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network
from typing import Any, cast

from vpnctl.api import TunnelAllocation
from vpnctl.reconcile.apiserver_slots import replica_block
from vpnctl.reconcile.cidr import parse_address
from vpnctl.reconcile.errors import PermanentError
from vpnctl.reconcile.tenant_spec import Member, PendingMachine

_HEX = re.compile(r"[0-9a-f]{1,40}", re.IGNORECASE)
# Hosts at the start of the tunnel CIDR that are not for nodes: the server, the apiserver.
RESERVED_HOSTS = 2


@dataclass(frozen=True, kw_only=True)
class Allocation:
    machine: str
    node: str
    tunnel_ip: IPv4Address
    # Serials (lower-case hex) of the certificates issued to this node that may still be
    # valid, oldest first: what to revoke when the Machine goes. The last is the current.
    serials: tuple[str, ...] = ()

    @property
    def serial(self) -> str | None:
        return self.serials[-1] if self.serials else None


@dataclass(frozen=True, kw_only=True)
class AllocationResult:
    allocations: tuple[Allocation, ...]  # sorted by machine name
    released: tuple[IPv4Address, ...]  # released addresses, oldest first
    added: tuple[Allocation, ...]  # allocated in this round
    removed: tuple[Allocation, ...]  # released in this round: revoke these nodes
    # Members that got no address because the pool is full (PermanentError
    # TunnelCIDRExhausted each); the others are unaffected.
    unallocated: tuple[PendingMachine, ...]

    def ip_of(self, machine: str) -> IPv4Address | None:
        for allocation in self.allocations:
            if allocation.machine == machine:
                return allocation.tunnel_ip
        return None


def node_pool(tunnel_cidr: IPv4Network) -> tuple[IPv4Address, ...]:
    """The addresses new nodes can get, in order: every host but the first two and the
    apiserver replicas' block at the top."""
    block = frozenset(replica_block(tunnel_cidr))
    return tuple(ip for ip in _node_range(tunnel_cidr) if ip not in block)


def _node_range(tunnel_cidr: IPv4Network) -> tuple[IPv4Address, ...]:
    """Where a node's address may be (kept, if it was given before the block existed)."""
    return tuple(tunnel_cidr.hosts())[RESERVED_HOSTS:]


def allocations_from_status(
    entries: Sequence[TunnelAllocation] | None,
) -> tuple[Allocation, ...]:
    """Read `status.allocations`; entries that do not parse are dropped (and re-allocated)."""
    result: list[Allocation] = []
    for raw in cast(Sequence[object], entries or ()):
        if not isinstance(raw, Mapping):
            continue
        entry = cast(Mapping[str, Any], raw)
        machine, node = entry.get("machine"), entry.get("node")
        ip = parse_address(entry.get("tunnelIP"))
        raw_serials = entry.get("serials") or []
        serials = tuple(s.lower() for s in raw_serials if isinstance(s, str) and _HEX.fullmatch(s))
        if isinstance(machine, str) and machine and isinstance(node, str) and ip is not None:
            result.append(Allocation(machine=machine, node=node, tunnel_ip=ip, serials=serials))
    return tuple(result)


def record_serial(
    allocations: Sequence[Allocation], *, machine: str, serial: int | str
) -> tuple[Allocation, ...]:
    """`allocations` with `serial` appended to `machine`'s (once); call after signing."""
    text = format(serial, "x") if isinstance(serial, int) else serial.replace(":", "").lower()
    if not _HEX.fullmatch(text):
        raise ValueError(f"certificate serial {serial!r} is not hex")
    return tuple(
        replace(a, serials=(*a.serials, text))
        if a.machine == machine and text not in a.serials
        else a
        for a in allocations
    )


def forget_serials(
    allocations: Sequence[Allocation], *, gone: Collection[str | int]
) -> tuple[Allocation, ...]:
    """Drop the serials GONE (hex text or int) from every allocation: certificates that
    expired, or that are revoked and so must never again admit a client under any
    Machine (a Machine replaced under the same node name must not inherit them)."""
    drop = {format(s, "x") if isinstance(s, int) else s.replace(":", "").lower() for s in gone}
    return tuple(
        replace(a, serials=tuple(s for s in a.serials if s not in drop)) for a in allocations
    )


def released_from_status(entries: Sequence[str] | None) -> tuple[IPv4Address, ...]:
    return tuple(ip for ip in (parse_address(e) for e in entries or ()) if ip is not None)


def allocations_to_status(allocations: Sequence[Allocation]) -> list[TunnelAllocation]:
    out: list[TunnelAllocation] = []
    for a in sorted(allocations, key=lambda a: a.machine):
        entry: TunnelAllocation = {
            "machine": a.machine,
            "node": a.node,
            "tunnelIP": str(a.tunnel_ip),
        }
        if a.serials:
            entry["serials"] = list(a.serials)
        out.append(entry)
    return out


def released_to_status(released: Sequence[IPv4Address]) -> list[str]:
    return [str(ip) for ip in released]


def allocate(
    *,
    tunnel_cidr: IPv4Network,
    previous: Sequence[Allocation],
    released: Sequence[IPv4Address],
    members: Sequence[Member],
    pending: Collection[str] = (),
) -> AllocationResult:
    """Give every member a stable address; see the module docstring for the rules.

    `previous` and `released` come from status. `pending` are the names of Machines that
    exist but are not members yet; they keep a previous address if they had one.
    Allocations that no longer fit (outside a changed tunnel CIDR, on a reserved address,
    or a duplicate in a hand-edited status) are dropped and re-allocated.
    """
    pool = node_pool(tunnel_cidr)
    pool_set = frozenset(pool)
    keepable = frozenset(_node_range(tunnel_cidr))
    wanted = {m.machine: m for m in members}
    alive = set(wanted) | set(pending)

    kept: dict[str, Allocation] = {}
    taken: set[IPv4Address] = set()
    removed: list[Allocation] = []
    for alloc in sorted(previous, key=lambda a: a.machine):
        if alloc.machine in kept:
            continue  # duplicate machine in status: first one wins
        if alloc.machine not in alive:
            removed.append(alloc)
            continue
        if alloc.tunnel_ip not in keepable or alloc.tunnel_ip in taken:
            continue  # cannot be kept: re-allocated below (not "released": never valid)
        member = wanted.get(alloc.machine)
        node = member.node if member is not None else alloc.node
        kept[alloc.machine] = replace(alloc, node=node)
        taken.add(alloc.tunnel_ip)

    # The release history: still-valid old entries first, then this round's, without
    # duplicates or anything in use.
    history: list[IPv4Address] = []
    for ip in [*released, *(a.tunnel_ip for a in removed)]:
        if ip in pool_set and ip not in taken and ip not in history:
            history.append(ip)
    released_set = set(history)

    never_used = (ip for ip in pool if ip not in taken and ip not in released_set)
    added: list[Allocation] = []
    unallocated: list[PendingMachine] = []
    for name in sorted(wanted):
        if name in kept:
            continue
        member = wanted[name]
        chosen = next(never_used, None)
        if chosen is None and history:
            chosen = history.pop(0)
        if chosen is None:
            unallocated.append(
                PendingMachine(
                    machine=name,
                    node=member.node,
                    error=PermanentError(
                        reason="TunnelCIDRExhausted",
                        message=(
                            f"tunnel CIDR {tunnel_cidr} has no free address for node "
                            f"{member.node} (all {len(pool)} node addresses are in use); "
                            "set spec.tunnelCIDR to a wider network that contains it, e.g. "
                            f"{tunnel_cidr.supernet()}, to keep every node's address"
                        ),
                    ),
                )
            )
            continue
        alloc = Allocation(machine=name, node=member.node, tunnel_ip=chosen)
        kept[name] = alloc
        taken.add(chosen)
        added.append(alloc)

    return AllocationResult(
        allocations=tuple(kept[name] for name in sorted(kept)),
        released=tuple(history),
        added=tuple(added),
        removed=tuple(removed),
        unallocated=tuple(unallocated),
    )
