"""PyRoute2Kernel and RouteKeeper against the real kernel, in throw-away namespaces.

Every scene is set and inspected with iproute2 (`ip -j ...`), not with the code under
test, and only 198.18.0.0/15 addresses are used, only inside namespaces made here.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from agent.netlink import (
    ANY_PROTO,
    VPNCTL_RT_PROTO,
    LinkDown,
    NetworkInterfaceNotFound,
    NetworkNamespaceNotFound,
    NetworkUnreachable,
    PyRoute2Kernel,
    Route,
)
from agent.route_keeper import RouteKeeper
from tests.netns.nsutil import (
    NETNS_TIER,
    NsEnd,
    add_tun,
    ip,
    netns_pair,
    ns_exists,
    run_in,
    unique_tag,
)
from tests.support.polling import aeventually

pytestmark = NETNS_TIER

TUN = "vtun0"


@pytest.fixture
def pair() -> Iterator[tuple[NsEnd, NsEnd]]:
    with netns_pair("nl") as ends:
        yield ends


@pytest.fixture
def a(pair: tuple[NsEnd, NsEnd]) -> NsEnd:
    """Side a, which also has a tun device (up, no process attached: NO-CARRIER)."""
    end = pair[0]
    add_tun(end.ns, TUN, addr="198.18.1.1/24")
    return end


@pytest.fixture
async def kernel(a: NsEnd) -> AsyncIterator[PyRoute2Kernel]:
    k = await PyRoute2Kernel.open(netns=a.ns)
    try:
        yield k
    finally:
        await k.close()


def kernel_routes(ns: str) -> list[dict[str, Any]]:
    """All IPv4 routes of NS in every table, as iproute2 reports them."""
    out = ip("-j", "-n", ns, "-4", "route", "show", "table", "all").stdout
    routes: list[dict[str, Any]] = json.loads(out)
    return routes


def routes_to(ns: str, dst: str) -> list[dict[str, Any]]:
    return [r for r in kernel_routes(ns) if r["dst"] == dst]


def net(cidr: str) -> IPv4Network:
    return IPv4Network(cidr)


async def test_replace_route_is_idempotent_and_tagged_with_our_proto(
    a: NsEnd, kernel: PyRoute2Kernel
) -> None:
    route = Route(dst=net("198.18.7.0/24"), dev=TUN)
    await kernel.replace_route(route)
    await kernel.replace_route(route)

    found = routes_to(a.ns, "198.18.7.0/24")
    assert len(found) == 1
    assert found[0]["dev"] == TUN
    assert found[0]["protocol"] == str(VPNCTL_RT_PROTO)
    assert found[0]["scope"] == "link"
    assert await kernel.list_routes() == [route]


async def test_routes_round_trip_every_field(a: NsEnd, kernel: PyRoute2Kernel) -> None:
    full = Route(
        dst=net("198.18.8.0/24"),
        dev=a.veth,
        gateway=IPv4Address("198.18.0.2"),
        table=1000,  # above 255: only carried in RTA_TABLE
        metric=7,
        src=a.addr.ip,
    )
    default = Route(dst=net("0.0.0.0/0"), dev=a.veth, gateway=IPv4Address("198.18.0.2"))
    for route in (full, default):
        await kernel.replace_route(route)

    assert sorted(await kernel.list_routes(), key=str) == sorted([full, default], key=str)
    (seen,) = routes_to(a.ns, "198.18.8.0/24")
    assert (seen["table"], seen["metric"], seen["prefsrc"], seen["gateway"]) == (
        "1000",
        7,
        "198.18.0.1",
        "198.18.0.2",
    )

    # Replacing at the same (table, dst, metric) changes the route in place.
    moved = Route(dst=net("198.18.8.0/24"), dev=TUN, table=1000, metric=7)
    await kernel.replace_route(moved)
    (seen,) = routes_to(a.ns, "198.18.8.0/24")
    assert (seen["dev"], seen.get("gateway")) == (TUN, None)


async def test_foreign_routes_are_neither_listed_nor_removed(
    a: NsEnd, kernel: PyRoute2Kernel
) -> None:
    ip("-n", a.ns, "route", "add", "198.18.60.0/24", "dev", a.veth, "proto", "static")
    ours = Route(dst=net("198.18.61.0/24"), dev=a.veth)
    await kernel.replace_route(ours)

    assert await kernel.list_routes() == [ours]
    all_dsts = {r.dst for r in await kernel.list_routes(proto=ANY_PROTO)}
    assert {net("198.18.60.0/24"), net("198.18.61.0/24"), net("198.18.0.0/30")} <= all_dsts

    # A keeper that wants nothing removes ours (stale) and only ours.
    registry = CollectorRegistry()
    keeper = RouteKeeper(kernel=kernel, registry=registry, role="test")
    keeper.set_desired([])
    result = await keeper.sync_once()
    assert result.removed == (ours,)
    assert routes_to(a.ns, "198.18.61.0/24") == []
    (foreign,) = routes_to(a.ns, "198.18.60.0/24")
    assert foreign["protocol"] == "static"
    assert registry.get_sample_value("vpnctl_agent_stale_routes_removed_total", {"role": "test"})

    # Deleting with our proto never takes a foreign route at the same destination.
    await kernel.delete_route(Route(dst=net("198.18.60.0/24"), dev=a.veth))
    assert len(routes_to(a.ns, "198.18.60.0/24")) == 1


async def test_delete_of_a_missing_route_or_device_is_fine(
    a: NsEnd, kernel: PyRoute2Kernel
) -> None:
    route = Route(dst=net("198.18.7.0/24"), dev=TUN)
    await kernel.replace_route(route)
    await kernel.delete_route(route)
    await kernel.delete_route(route)
    await kernel.delete_route(Route(dst=net("198.18.7.0/24"), dev="nosuchdev"))
    assert routes_to(a.ns, "198.18.7.0/24") == []


async def test_missing_device_raises_network_interface_not_found(kernel: PyRoute2Kernel) -> None:
    with pytest.raises(NetworkInterfaceNotFound, match="'nosuchdev' does not exist in network"):
        await kernel.replace_route(Route(dst=net("198.18.7.0/24"), dev="nosuchdev"))
    with pytest.raises(NetworkInterfaceNotFound):
        await kernel.link_index("nosuchdev")
    with pytest.raises(NetworkInterfaceNotFound):
        await kernel.link_counters("nosuchdev")
    with pytest.raises(NetworkInterfaceNotFound, match="1-15 bytes"):
        await kernel.link_index("x" * 16)
    assert not await kernel.link_exists("nosuchdev")
    assert await kernel.link_exists(TUN)


async def test_down_link_and_unreachable_gateway_map_to_domain_errors(
    a: NsEnd, kernel: PyRoute2Kernel
) -> None:
    with pytest.raises(NetworkUnreachable, match="gateway"):
        await kernel.replace_route(
            Route(dst=net("198.18.9.0/24"), dev=TUN, gateway=IPv4Address("198.18.99.1"))
        )
    ip("-n", a.ns, "link", "set", TUN, "down")
    with pytest.raises(LinkDown, match="down"):
        await kernel.replace_route(Route(dst=net("198.18.9.0/24"), dev=TUN))
    await kernel.set_link_up(TUN)
    await kernel.replace_route(Route(dst=net("198.18.9.0/24"), dev=TUN))


async def test_unknown_namespace_is_an_error_and_is_not_created() -> None:
    name = f"vt-{unique_tag()}-none"
    with pytest.raises(NetworkNamespaceNotFound, match=name):
        await PyRoute2Kernel.open(netns=name)
    assert not ns_exists(name)


async def test_link_counters_move_with_traffic(
    pair: tuple[NsEnd, NsEnd], kernel: PyRoute2Kernel
) -> None:
    a, b = pair
    rx0, tx0 = await kernel.link_counters(a.veth)
    # Ten 200-byte datagrams to b's discard port; b answers with ARP and ICMP.
    send = (
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"for _ in range(10): s.sendto(b'x' * 200, ('{b.addr.ip}', 9))\n"
    )
    run_in(a.ns, sys.executable, "-c", send)
    rx1, tx1 = await kernel.link_counters(a.veth)
    assert tx1 - tx0 >= 10 * 200
    assert rx1 > rx0


async def test_addresses_are_listed_and_replaced_idempotently(
    a: NsEnd, kernel: PyRoute2Kernel
) -> None:
    assert await kernel.addresses(a.veth) == [a.addr]
    extra = IPv4Interface("198.18.2.1/24")
    await kernel.replace_address(TUN, extra)
    await kernel.replace_address(TUN, extra)
    assert sorted(await kernel.addresses(TUN)) == [IPv4Interface("198.18.1.1/24"), extra]
    shown = json.loads(ip("-j", "-n", a.ns, "-4", "addr", "show", "dev", TUN).stdout)
    assert len([x for x in shown[0]["addr_info"] if x["local"] == "198.18.2.1"]) == 1


async def test_keeper_restores_a_route_deleted_by_hand_within_a_second(
    a: NsEnd, kernel: PyRoute2Kernel
) -> None:
    registry = CollectorRegistry()
    keeper = RouteKeeper(kernel=kernel, registry=registry, role="node", interval=0.25)
    route = Route(dst=net("198.18.20.0/24"), dev=TUN)
    keeper.set_desired([route])

    def repairs() -> float:
        value = registry.get_sample_value("vpnctl_agent_route_repairs_total", {"role": "node"})
        return value or 0.0

    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(keeper.run())
        await aeventually(
            lambda: len(routes_to(a.ns, "198.18.20.0/24")) == 1,
            what="one route to 198.18.20.0/24",
            timeout=3.0,
            interval=0.02,
        )
        assert repairs() == 0

        ip("-n", a.ns, "route", "del", "198.18.20.0/24", "dev", TUN)
        deleted_at = time.monotonic()
        await aeventually(
            lambda: len(routes_to(a.ns, "198.18.20.0/24")) == 1,
            what="one route to 198.18.20.0/24",
            timeout=3.0,
            interval=0.02,
        )
        assert time.monotonic() - deleted_at < 1.0
        assert repairs() == 1

        # The tun bounced (as when openvpn restarts): the kernel flushed the route.
        ip("-n", a.ns, "link", "set", TUN, "down")
        await aeventually(
            lambda: route in keeper.pending, what="the route pending", timeout=3.0, interval=0.02
        )
        ip("-n", a.ns, "link", "set", TUN, "up")
        await aeventually(
            lambda: len(routes_to(a.ns, "198.18.20.0/24")) == 1,
            what="one route to 198.18.20.0/24",
            timeout=3.0,
            interval=0.02,
        )
        await aeventually(lambda: repairs() == 2, what="two repairs", timeout=3.0, interval=0.02)
        assert keeper.healthy
        task.cancel()


async def test_keeper_restores_an_address_deleted_by_hand(a: NsEnd, kernel: PyRoute2Kernel) -> None:
    registry = CollectorRegistry()
    keeper = RouteKeeper(kernel=kernel, registry=registry, role="node", interval=0.25)
    addr = IPv4Interface("198.18.3.1/24")
    keeper.set_desired_addresses({TUN: [addr]})
    keeper.set_desired([Route(dst=net("198.18.30.0/24"), dev=TUN, src=addr.ip)])
    assert (await keeper.sync_once()).ok

    ip("-n", a.ns, "addr", "del", "198.18.3.1/24", "dev", TUN)  # takes the route with it
    result = await keeper.sync_once()
    assert result.addresses_repaired == ((TUN, addr),)
    assert len(result.repaired) == 1
    assert len(routes_to(a.ns, "198.18.30.0/24")) == 1
    assert registry.get_sample_value("vpnctl_agent_address_repairs_total", {"role": "node"}) == 1


def test_set_sysctl_writes_inside_the_namespace(pair: tuple[NsEnd, NsEnd]) -> None:
    a, _ = pair
    script = (
        "from agent.sysctls import set_sysctl, get_sysctl\n"
        "print(set_sysctl('net.ipv4.ip_forward', '1'), set_sysctl('net.ipv4.ip_forward', '1'))\n"
        f"print(set_sysctl('net/ipv4/conf/{a.veth}/rp_filter', '2'))\n"
    )
    run_in(a.ns, "sysctl", "-qw", "net.ipv4.ip_forward=0")
    out = run_in(a.ns, sys.executable, "-c", script).stdout.split()
    assert out == ["True", "False", "True"]
    assert read_in(a.ns, "/proc/sys/net/ipv4/ip_forward") == "1"
    assert read_in(a.ns, f"/proc/sys/net/ipv4/conf/{a.veth}/rp_filter") == "2"


def read_in(ns: str, path: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, "cat", path], capture_output=True, text=True, check=True
    ).stdout.strip()
