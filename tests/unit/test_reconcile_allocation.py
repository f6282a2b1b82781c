"""Stable tunnel addresses (vpnctl.reconcile.allocation)."""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network

import pytest

from vpnctl.reconcile.allocation import (
    Allocation,
    AllocationResult,
    allocate,
    allocations_from_status,
    allocations_to_status,
    forget_serials,
    node_pool,
    record_serial,
    released_from_status,
    released_to_status,
)
from vpnctl.reconcile.errors import PermanentError
from vpnctl.reconcile.tenant_spec import Member

CIDR = IPv4Network("198.18.8.0/24")
IP = IPv4Address


def members(*names: str) -> list[Member]:
    return [
        Member(machine=n, node=f"node-{n}", internal_ip=IP(f"198.19.0.{10 + i}"))
        for i, n in enumerate(names)
    ]


def ips(result: AllocationResult) -> dict[str, str]:
    return {a.machine: str(a.tunnel_ip) for a in result.allocations}


def restart(result: AllocationResult) -> tuple[tuple[Allocation, ...], tuple[IPv4Address, ...]]:
    """What a controller that restarted reads back: only the status, as JSON."""
    return (
        allocations_from_status(allocations_to_status(result.allocations)),
        released_from_status(released_to_status(result.released)),
    )


def run(
    names: Sequence[str],
    previous: Sequence[Allocation] = (),
    released: Sequence[IPv4Address] = (),
    *,
    cidr: IPv4Network = CIDR,
    pending: Sequence[str] = (),
) -> AllocationResult:
    return allocate(
        tunnel_cidr=cidr,
        previous=previous,
        released=released,
        members=members(*names),
        pending=pending,
    )


def test_pool_skips_network_server_apiserver_replicas_and_broadcast() -> None:
    pool = node_pool(CIDR)
    assert pool[0] == IP("198.18.8.3")
    assert pool[-1] == IP("198.18.8.247")  # .248 .. .254: apiserver replicas 7 .. 1
    assert len(pool) == 245
    assert node_pool(IPv4Network("10.0.0.0/29")) == (IP("10.0.0.3"), IP("10.0.0.4"), IP("10.0.0.5"))


def test_a_node_given_an_address_of_the_replica_block_before_it_existed_keeps_it() -> None:
    old = [Allocation(machine="a", node="node-a", tunnel_ip=IP("198.18.8.250"))]
    result = run(["a", "b"], old)
    assert ips(result) == {"a": "198.18.8.250", "b": "198.18.8.3"}


def test_first_allocation_is_lowest_first_in_name_order() -> None:
    result = run(["c", "a", "b"])
    assert ips(result) == {"a": "198.18.8.3", "b": "198.18.8.4", "c": "198.18.8.5"}
    assert [a.machine for a in result.added] == ["a", "b", "c"]
    assert result.removed == ()
    assert result.unallocated == ()
    assert [a.node for a in result.allocations] == ["node-a", "node-b", "node-c"]


def test_addresses_survive_a_restart_from_status_only() -> None:
    first = run(["a", "b", "c"])
    second = run(["a", "b", "c"], *restart(first))
    assert second.allocations == first.allocations
    assert second.added == ()
    assert second.removed == ()


def test_existing_addresses_are_kept_when_a_lower_one_frees_up() -> None:
    first = run(["a", "b", "c"])
    second = run(["b", "c"], *restart(first))
    assert ips(second) == {"b": "198.18.8.4", "c": "198.18.8.5"}
    assert [a.machine for a in second.removed] == ["a"]
    assert second.released == (IP("198.18.8.3"),)


def test_a_released_address_is_not_reused_while_never_used_ones_remain() -> None:
    first = run(["a", "b", "c"])
    second = run(["b", "c"], *restart(first))
    third = run(["b", "c", "d"], *restart(second))
    assert ips(third)["d"] == "198.18.8.6"  # not a's .3
    assert third.released == (IP("198.18.8.3"),)


def test_released_addresses_are_reused_oldest_first_once_the_pool_is_spent() -> None:
    small = IPv4Network("10.0.0.0/29")  # node pool .3 .. .5 (.6: an apiserver replica)
    r = run(["a", "b", "c"], cidr=small)
    assert ips(r) == {"a": "10.0.0.3", "b": "10.0.0.4", "c": "10.0.0.5"}
    r = run(["b", "c"], *restart(r), cidr=small)  # a leaves first: .3
    r = run(["c"], *restart(r), cidr=small)  # then b: .4
    assert r.released == (IP("10.0.0.3"), IP("10.0.0.4"))
    r = run(["c", "e"], *restart(r), cidr=small)
    assert ips(r)["e"] == "10.0.0.3"  # the one released longest ago
    assert r.released == (IP("10.0.0.4"),)


def test_exhausted_pool_leaves_new_members_unallocated_but_keeps_the_others() -> None:
    small = IPv4Network("10.0.0.0/29")
    r = run(["a", "b", "c", "e", "f"], cidr=small)
    assert set(ips(r)) == {"a", "b", "c"}
    assert [p.machine for p in r.unallocated] == ["e", "f"]
    error = r.unallocated[0].error
    assert isinstance(error, PermanentError)
    assert error.reason == "TunnelCIDRExhausted"
    assert "tunnel CIDR 10.0.0.0/29 has no free address for node node-e" in error.message
    assert "10.0.0.0/28" in error.message


def test_pending_machines_keep_their_address() -> None:
    first = run(["a", "b"])
    # b lost its InternalIP for a moment: pending, not gone.
    second = run(["a"], *restart(first), pending=["b"])
    assert ips(second) == ips(first)
    assert second.removed == ()
    third = run(["a", "b", "c"], *restart(second))
    assert ips(third) == {"a": "198.18.8.3", "b": "198.18.8.4", "c": "198.18.8.5"}


def test_node_name_change_keeps_the_machines_address() -> None:
    first = run(["a"])
    renamed = [Member(machine="a", node="new-name", internal_ip=IP("198.19.0.10"))]
    second = allocate(tunnel_cidr=CIDR, previous=first.allocations, released=(), members=renamed)
    assert second.allocations[0].tunnel_ip == IP("198.18.8.3")
    assert second.allocations[0].node == "new-name"


def test_allocations_outside_a_changed_cidr_are_redone_and_inside_kept() -> None:
    first = run(["a", "b"])
    wider = IPv4Network("198.18.8.0/23")
    kept = run(["a", "b"], *restart(first), cidr=wider)
    assert ips(kept) == ips(first)  # a covering network keeps every address
    moved = run(["a", "b"], *restart(first), cidr=IPv4Network("10.9.0.0/24"))
    assert ips(moved) == {"a": "10.9.0.3", "b": "10.9.0.4"}
    assert moved.released == ()


def test_corrupt_status_entries_are_dropped_and_reallocated() -> None:
    status = [
        {"machine": "a", "node": "node-a", "tunnelIP": "198.18.8.9"},
        {"machine": "b", "node": "node-b", "tunnelIP": "198.18.8.9"},  # duplicate address
        {"machine": "c", "node": "node-c", "tunnelIP": "not-an-ip"},
        {"machine": "d", "node": "node-d", "tunnelIP": "198.18.8.1"},  # the server's
        {"machine": "", "node": "x", "tunnelIP": "198.18.8.20"},
        "garbage",
    ]
    previous = allocations_from_status(status)  # type: ignore[arg-type]
    assert [a.machine for a in previous] == ["a", "b", "d"]
    result = run(["a", "b", "c", "d"], previous)
    assert ips(result) == {
        "a": "198.18.8.9",
        "b": "198.18.8.3",
        "c": "198.18.8.4",
        "d": "198.18.8.5",
    }
    assert len(set(ips(result).values())) == 4


def test_released_history_drops_addresses_in_use_or_outside_the_pool() -> None:
    r = run(["a"], released=[IP("198.18.8.3"), IP("10.0.0.1"), IP("198.18.8.7"), IP("198.18.8.7")])
    assert ips(r) == {"a": "198.18.8.4"}
    assert r.released == (IP("198.18.8.3"), IP("198.18.8.7"))
    r2 = run(
        ["a"],
        [Allocation(machine="a", node="node-a", tunnel_ip=IP("198.18.8.7"))],
        [IP("198.18.8.7")],
    )
    assert r2.released == ()


def test_serials_are_kept_recorded_and_forgotten() -> None:
    first = run(["a", "b"])
    allocs = record_serial(first.allocations, machine="a", serial=0x5B01)
    allocs = record_serial(allocs, machine="a", serial="5B:02")
    allocs = record_serial(allocs, machine="a", serial="5b02")  # once only
    assert allocs[0].serials == ("5b01", "5b02")
    assert allocs[0].serial == "5b02"
    assert allocs[1].serial is None
    round_trip = allocations_from_status(allocations_to_status(allocs))
    assert round_trip == allocs
    second = run(["b"], round_trip)
    assert second.removed[0].serials == ("5b01", "5b02")  # what to revoke
    assert forget_serials(allocs, gone=["5B01"])[0].serials == ("5b02",)
    with pytest.raises(ValueError, match="not hex"):
        record_serial(allocs, machine="a", serial="xyz")


def test_status_form_is_sorted_and_serials_only_when_present() -> None:
    result = run(["b", "a"])
    assert allocations_to_status(result.allocations) == [
        {"machine": "a", "node": "node-a", "tunnelIP": "198.18.8.3"},
        {"machine": "b", "node": "node-b", "tunnelIP": "198.18.8.4"},
    ]


def test_ip_of() -> None:
    result = run(["a"])
    assert result.ip_of("a") == IP("198.18.8.3")
    assert result.ip_of("zzz") is None


def test_long_churn_never_duplicates_and_keeps_survivors() -> None:
    """Machines come and go for many rounds; every round is restarted from status."""
    cidr = IPv4Network("10.0.0.0/27")  # 28 node addresses
    alive: list[str] = []
    allocations: tuple[Allocation, ...] = ()
    released: tuple[IPv4Address, ...] = ()
    counter = 0
    for round_no in range(200):
        if round_no % 3 and alive:
            alive.pop((round_no * 7) % len(alive))
        for _ in range(1 + round_no % 2):
            counter += 1
            alive.append(f"m{counter:04d}")
        before = {a.machine: a.tunnel_ip for a in allocations}
        result = run(alive, allocations, released, cidr=cidr)
        got = {a.machine: a.tunnel_ip for a in result.allocations}
        assert len(set(got.values())) == len(got)
        for name, ip in got.items():
            if name in before:
                assert before[name] == ip
        assert set(got) | {p.machine for p in result.unallocated} == set(alive)
        allocations, released = restart(result)
