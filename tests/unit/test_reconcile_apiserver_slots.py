"""The apiserver replicas' slots: one identity and address per pod, stable, and what the
server's desired state makes of them (parsed with the agent's own loader)."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network

from agent.desired_state import parse_desired
from tests.support import capi
from vpnctl.reconcile.agentdocs import canonical_json, server_desired_state
from vpnctl.reconcile.allocation import allocate, node_pool
from vpnctl.reconcile.apiserver_slots import (
    SLOT_ANNOTATION,
    ApiserverPod,
    Slot,
    parse_slot,
    plan_slots,
    replica_block,
    slot_addresses,
)
from vpnctl.reconcile.routes import client_routes
from vpnctl.reconcile.tenant_spec import APISERVER_COMMON_NAME, TenantSpec, parse_tenant

CIDR = IPv4Network("198.18.8.0/24")
IP = IPv4Address
ADDRESSES = slot_addresses(CIDR, apiserver_ip=IP("198.18.8.2"), taken=())


def pod(name: str, slot: int | None = None) -> ApiserverPod:
    return ApiserverPod(name=name, uid=f"uid-{name}", slot=slot)


def held(plan_slots_result: tuple[Slot, ...]) -> dict[str, tuple[int, str, str]]:
    return {s.pod: (s.index, s.common_name, str(s.tunnel_ip)) for s in plan_slots_result}


def test_the_replica_block_is_the_top_of_the_cidr_and_no_node_gets_it() -> None:
    block = replica_block(CIDR)
    assert block == tuple(IP(f"198.18.8.{254 - i}") for i in range(7))
    assert not set(block) & set(node_pool(CIDR))
    assert replica_block(IPv4Network("10.0.0.0/29")) == (IP("10.0.0.6"),)
    assert len(replica_block(IPv4Network("10.0.0.0/28"))) == 3


def test_three_pods_get_three_identities_and_addresses() -> None:
    plan = plan_slots([pod("api-c"), pod("api-a"), pod("api-b")], addresses=ADDRESSES)
    assert held(plan.slots) == {
        "api-a": (0, APISERVER_COMMON_NAME, "198.18.8.2"),
        "api-b": (1, f"{APISERVER_COMMON_NAME}-1", "198.18.8.254"),
        "api-c": (2, f"{APISERVER_COMMON_NAME}-2", "198.18.8.253"),
    }
    assert plan.annotate == {"api-a": 0, "api-b": 1, "api-c": 2}
    assert plan.waiting == ()


def test_a_pod_keeps_its_slot_and_a_new_one_takes_the_lowest_free() -> None:
    # Scaled from 3 to 1: the survivor keeps slot 2; nothing else is held.
    plan = plan_slots([pod("api-c", 2)], addresses=ADDRESSES)
    assert held(plan.slots) == {"api-c": (2, f"{APISERVER_COMMON_NAME}-2", "198.18.8.253")}
    assert plan.annotate == {}
    # Back to 3: the new pods fill 0 and 1; the survivor is not moved.
    plan = plan_slots([pod("api-c", 2), pod("api-d"), pod("api-e")], addresses=ADDRESSES)
    assert {p: s[0] for p, s in held(plan.slots).items()} == {"api-c": 2, "api-d": 0, "api-e": 1}
    assert plan.annotate == {"api-d": 0, "api-e": 1}


def test_a_slot_claimed_twice_or_out_of_range_is_given_anew() -> None:
    plan = plan_slots([pod("api-a", 1), pod("api-b", 1), pod("api-c", 99)], addresses=ADDRESSES)
    assert {p: s[0] for p, s in held(plan.slots).items()} == {"api-a": 1, "api-b": 0, "api-c": 2}
    assert plan.annotate == {"api-b": 0, "api-c": 2}


def test_more_pods_than_slots_wait_and_an_address_a_node_holds_is_skipped() -> None:
    small = IPv4Network("10.0.0.0/28")  # block .14 .13 .12
    addresses = slot_addresses(small, apiserver_ip=IP("10.0.0.2"), taken={IP("10.0.0.13")})
    assert addresses == (IP("10.0.0.2"), IP("10.0.0.14"), None, IP("10.0.0.12"))
    plan = plan_slots([pod(f"api-{i}") for i in range(5)], addresses=addresses)
    assert {p: s[0] for p, s in held(plan.slots).items()} == {"api-0": 0, "api-1": 1, "api-2": 3}
    assert plan.waiting == ("api-3", "api-4")


def test_the_slot_annotation_is_read_strictly() -> None:
    assert parse_slot({SLOT_ANNOTATION: "2"}) == 2
    for bad in ("", "-1", "two", "1e3", "12345", None):
        assert parse_slot({SLOT_ANNOTATION: bad}) is None
    assert parse_slot(None) is None


def _tenant() -> TenantSpec:
    t = capi.lab_tenant()
    return parse_tenant(tunnel=t.tunnel, cluster=t.cluster, machines=t.machines, nodes=t.nodes)


def test_desired_state_lists_each_held_slot_with_its_own_serial() -> None:
    t = _tenant()
    allocations = allocate(
        tunnel_cidr=t.spec.tunnel_cidr, previous=(), released=(), members=t.members
    ).allocations
    addresses = slot_addresses(
        t.spec.tunnel_cidr,
        apiserver_ip=t.spec.apiserver_ip,
        taken=[a.tunnel_ip for a in allocations],
    )
    plan = plan_slots([pod("api-a"), pod("api-b"), pod("api-c")], addresses=addresses)
    clients = client_routes(
        tenant=t, allocations=allocations, service_route_node=None, apiserver_slots=plan.slots
    )
    doc = server_desired_state(
        clients=clients,
        apiserver_serial="3f9a",
        replica_serials={f"{APISERVER_COMMON_NAME}-1": "a1", f"{APISERVER_COMMON_NAME}-2": "a2"},
    )
    state = parse_desired(
        json.loads(canonical_json(doc)), path="desired.json", tunnel_cidr=t.spec.tunnel_cidr
    )
    assert [(a.common_name, str(a.ifconfig_ip), a.serial) for a in state.apiservers] == [
        (APISERVER_COMMON_NAME, "198.18.8.2", 0x3F9A),
        (f"{APISERVER_COMMON_NAME}-1", "198.18.8.254", 0xA1),
        (f"{APISERVER_COMMON_NAME}-2", "198.18.8.253", 0xA2),
    ]
    assert [c.common_name for c in state.clients] == ["node-1", "node-2", "node-3"]

    # One pod left (it holds slot 2): slots 0 and 1 go.
    survivor = plan_slots([pod("api-c", 2)], addresses=addresses)
    doc = server_desired_state(
        clients=client_routes(
            tenant=t,
            allocations=allocations,
            service_route_node=None,
            apiserver_slots=survivor.slots,
        ),
        apiserver_serial="3f9a",
        replica_serials={f"{APISERVER_COMMON_NAME}-2": "a2"},
    )
    assert doc["apiserver"]["common_name"] == f"{APISERVER_COMMON_NAME}-2"
    assert doc["apiserver"]["serials"] == ["a2"]
    assert "apiserver_replicas" not in doc
    parse_desired(doc, path="desired.json", tunnel_cidr=t.spec.tunnel_cidr)
    # No apiserver pod at all: slot 0 alone, as before slots; older agents read it.
    single = server_desired_state(
        clients=client_routes(tenant=t, allocations=allocations, service_route_node=None),
        apiserver_serial="3f9a",
    )
    assert "apiserver_replicas" not in single
    # A held slot whose certificate is not issued yet admits nobody.
    unissued = server_desired_state(clients=clients, apiserver_serial="3f9a")
    assert unissued["apiserver_replicas"][0]["serials"] == []
