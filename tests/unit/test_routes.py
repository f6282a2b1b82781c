"""RouteKeeper and SysctlKeeper against a fake of our own `Kernel` interface.

The fake keeps routes the way the kernel does (one route per (table, dst, metric), a
protocol number on each, routes vanish with their device) so the keeper's logic is
tested here; the real kernel is exercised in tests/netns/test_netlink.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agent.netlink import (
    ANY_PROTO,
    VPNCTL_RT_PROTO,
    Kernel,
    LinkDown,
    NetlinkError,
    NetworkInterfaceNotFound,
    Route,
)
from agent.route_keeper import RouteKeeper
from agent.sysctls import SysctlKeeper, forwarding_sysctls, get_sysctl, set_sysctl

ROLE = "node"


@dataclass
class FakeLink:
    up: bool = True
    addresses: set[IPv4Interface] = field(default_factory=set)
    rx: int = 0
    tx: int = 0


class FakeKernel:
    """An in-memory kernel: links, and routes keyed like the kernel keys them."""

    def __init__(self, *links: str) -> None:
        self.links: dict[str, FakeLink] = {name: FakeLink() for name in links}
        # (table, dst, metric) -> (route, proto)
        self.routes: dict[tuple[int, IPv4Network, int], tuple[Route, int]] = {}
        self.fail_list: list[NetlinkError] = []  # raised by the next list_routes calls
        self.fail_replace: dict[Route, NetlinkError] = {}
        self.calls: list[str] = []

    # --- what a test does "by hand"
    def add_foreign(self, route: Route, *, proto: int = 4) -> None:
        self.routes[route.key] = (route, proto)

    def add_ours(self, route: Route) -> None:
        self.routes[route.key] = (route, VPNCTL_RT_PROTO)

    def delete_by_hand(self, route: Route) -> None:
        del self.routes[route.key]

    def remove_link(self, name: str) -> None:
        del self.links[name]
        self.routes = {k: v for k, v in self.routes.items() if v[0].dev != name}

    def ours(self) -> set[Route]:
        return {r for r, proto in self.routes.values() if proto == VPNCTL_RT_PROTO}

    def _link(self, dev: str) -> FakeLink:
        if dev not in self.links:
            raise NetworkInterfaceNotFound(f"network interface {dev!r} does not exist")
        return self.links[dev]

    # --- Kernel
    async def list_routes(self, *, proto: int = VPNCTL_RT_PROTO) -> list[Route]:
        self.calls.append("list_routes")
        if self.fail_list:
            raise self.fail_list.pop(0)
        return [r for r, p in self.routes.values() if proto in (ANY_PROTO, p)]

    async def replace_route(self, route: Route) -> None:
        self.calls.append(f"replace {route}")
        if route in self.fail_replace:
            raise self.fail_replace[route]
        if not self._link(route.dev).up:
            raise LinkDown(f"{route.dev} is down")
        self.routes[route.key] = (route, VPNCTL_RT_PROTO)

    async def delete_route(self, route: Route) -> None:
        self.calls.append(f"delete {route}")
        held = self.routes.get(route.key)
        if held is not None and held == (route, VPNCTL_RT_PROTO):
            del self.routes[route.key]

    async def link_exists(self, dev: str) -> bool:
        return dev in self.links

    async def link_index(self, dev: str) -> int:
        self._link(dev)
        return list(self.links).index(dev) + 1

    async def link_counters(self, dev: str) -> tuple[int, int]:
        link = self._link(dev)
        return (link.rx, link.tx)

    async def addresses(self, dev: str) -> list[IPv4Interface]:
        return sorted(self._link(dev).addresses)

    async def replace_address(self, dev: str, addr: IPv4Interface) -> None:
        self._link(dev).addresses.add(addr)

    async def set_link_up(self, dev: str) -> None:
        self._link(dev).up = True

    async def close(self) -> None:
        pass


def route(
    dst: str,
    dev: str = "tun0",
    *,
    gateway: IPv4Address | None = None,
    metric: int = 0,
    src: IPv4Address | None = None,
) -> Route:
    return Route(dst=IPv4Network(dst), dev=dev, gateway=gateway, metric=metric, src=src)


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, {"role": ROLE, **labels})
    return 0.0 if value is None else value


def make_keeper(
    kernel: FakeKernel, *, interval: float = 0.25
) -> tuple[RouteKeeper, CollectorRegistry]:
    registry = CollectorRegistry()
    return RouteKeeper(kernel=kernel, registry=registry, role=ROLE, interval=interval), registry


def in_sync(keeper: RouteKeeper | SysctlKeeper) -> bool:
    """Read through a call, so mypy doesn't narrow the property for the rest of a test."""
    return keeper.in_sync


def test_fake_kernel_is_a_kernel() -> None:
    assert isinstance(FakeKernel(), Kernel)


async def test_startup_removes_our_stale_routes_and_leaves_foreign_ones() -> None:
    kernel = FakeKernel("tun0", "eth0")
    stale = route("198.18.9.0/24")
    foreign = route("198.18.50.0/24", "eth0")
    kernel.add_ours(stale)  # left over by a previous run
    kernel.add_foreign(foreign)
    keeper, registry = make_keeper(kernel)
    wanted = route("198.18.1.0/24", gateway=IPv4Address("198.18.0.1"))

    keeper.set_desired([wanted])
    result = await keeper.sync_once()

    assert (result.added, result.removed, result.repaired) == ((wanted,), (stale,), ())
    assert kernel.ours() == {wanted}
    assert kernel.routes[foreign.key] == (foreign, 4)
    assert metric(registry, "vpnctl_agent_stale_routes_removed_total") == 1
    assert metric(registry, "vpnctl_agent_route_repairs_total") == 0
    assert metric(registry, "vpnctl_agent_routes_desired") == 1
    assert keeper.in_sync
    assert keeper.healthy

    again = await keeper.sync_once()
    assert (again.added, again.removed, again.repaired) == ((), (), ())
    assert kernel.calls.count(f"replace {wanted}") == 1


async def test_nothing_is_touched_before_the_desired_state_is_known() -> None:
    kernel = FakeKernel("tun0")
    ours = route("198.18.9.0/24")
    kernel.add_ours(ours)
    keeper, _ = make_keeper(kernel)

    result = await keeper.sync_once()

    assert result.removed == ()
    assert kernel.ours() == {ours}
    assert not in_sync(keeper)


async def test_a_route_already_in_place_at_start_is_adopted_not_added() -> None:
    kernel = FakeKernel("tun0")
    wanted = route("198.18.1.0/24")
    kernel.add_ours(wanted)
    keeper, registry = make_keeper(kernel)
    keeper.set_desired([wanted])

    first = await keeper.sync_once()
    assert (first.added, first.removed, first.repaired) == ((), (), ())

    kernel.delete_by_hand(wanted)
    second = await keeper.sync_once()
    assert second.repaired == (wanted,)
    assert metric(registry, "vpnctl_agent_route_repairs_total") == 1


async def test_deleted_or_changed_routes_are_repaired_and_counted() -> None:
    kernel = FakeKernel("tun0", "eth0")
    a, b = route("198.18.1.0/24"), route("198.18.2.0/24")
    keeper, registry = make_keeper(kernel)
    keeper.set_desired([a, b])
    assert set((await keeper.sync_once()).added) == {a, b}

    kernel.delete_by_hand(a)
    result = await keeper.sync_once()
    assert (result.added, result.repaired) == ((), (a,))

    # Someone points b elsewhere with their own tool (another protocol number).
    kernel.add_foreign(route("198.18.2.0/24", "eth0"), proto=3)
    result = await keeper.sync_once()
    assert result.repaired == (b,)
    assert kernel.routes[b.key] == (b, VPNCTL_RT_PROTO)

    assert metric(registry, "vpnctl_agent_route_repairs_total") == 2
    assert metric(registry, "vpnctl_agent_stale_routes_removed_total") == 0


async def test_route_on_a_missing_or_down_device_is_pending_not_an_error() -> None:
    kernel = FakeKernel("eth0")
    on_tun = route("198.18.1.0/24", "tun0")
    on_eth = route("198.18.2.0/24", "eth0")
    keeper, registry = make_keeper(kernel)
    keeper.set_desired([on_tun, on_eth])

    result = await keeper.sync_once()
    assert result.ok
    assert result.pending == (on_tun,)
    assert result.added == (on_eth,)
    assert keeper.healthy
    assert not in_sync(keeper)
    assert metric(registry, "vpnctl_agent_routes_pending") == 1
    assert metric(registry, "vpnctl_agent_route_sync_errors_total") == 0

    kernel.links["tun0"] = FakeLink(up=False)  # openvpn created it, not up yet
    result = await keeper.sync_once()
    assert (result.pending, result.errors) == ((on_tun,), ())

    kernel.links["tun0"].up = True
    result = await keeper.sync_once()
    assert (result.added, result.pending) == ((on_tun,), ())
    assert keeper.in_sync
    assert metric(registry, "vpnctl_agent_routes_pending") == 0

    # openvpn restarts: the tun and its routes vanish, then come back.
    kernel.remove_link("tun0")
    assert (await keeper.sync_once()).pending == (on_tun,)
    kernel.links["tun0"] = FakeLink()
    assert (await keeper.sync_once()).repaired == (on_tun,)
    assert metric(registry, "vpnctl_agent_route_repairs_total") == 1


async def test_changing_the_desired_state_removes_the_old_routes() -> None:
    kernel = FakeKernel("tun0", "tun1")
    old, new = route("198.18.1.0/24"), route("198.18.3.0/24")
    keeper, registry = make_keeper(kernel)
    keeper.set_desired([old])
    await keeper.sync_once()

    keeper.set_desired([new])
    result = await keeper.sync_once()
    assert (result.added, result.removed, result.repaired) == ((new,), (old,), ())
    assert kernel.ours() == {new}

    # Same destination on another device: one replace, no delete of the new route.
    moved = route("198.18.3.0/24", "tun1")
    keeper.set_desired([moved])
    result = await keeper.sync_once()
    assert (result.added, result.removed) == ((moved,), ())
    assert kernel.ours() == {moved}
    assert metric(registry, "vpnctl_agent_route_repairs_total") == 0


def test_conflicting_desired_routes_are_rejected_with_a_clear_error() -> None:
    keeper, _ = make_keeper(FakeKernel())
    with pytest.raises(ValueError, match=r"same table, destination and metric.*198\.18\.1\.0/24"):
        keeper.set_desired([route("198.18.1.0/24", "tun0"), route("198.18.1.0/24", "tun1")])
    # Identical duplicates and different metrics are fine.
    keeper.set_desired([route("198.18.1.0/24"), route("198.18.1.0/24")])
    keeper.set_desired([route("198.18.1.0/24"), route("198.18.1.0/24", "tun1", metric=10)])
    assert len(keeper.desired) == 2


async def test_repeated_failures_make_the_keeper_unhealthy_until_it_recovers() -> None:
    kernel = FakeKernel("tun0")
    keeper, registry = make_keeper(kernel)
    keeper.set_desired([route("198.18.1.0/24")])
    kernel.fail_list = [NetlinkError("boom") for _ in range(3)]

    for expect_healthy in (True, True, False):
        result = await keeper.sync_once()
        assert result.errors == ("boom",)
        assert keeper.healthy is expect_healthy
    assert metric(registry, "vpnctl_agent_route_sync_errors_total") == 3

    result = await keeper.sync_once()
    assert result.ok
    assert keeper.healthy
    assert keeper.in_sync


async def test_one_failing_route_does_not_block_the_others() -> None:
    kernel = FakeKernel("tun0")
    bad, good = route("198.18.1.0/24", src=IPv4Address("198.18.77.1")), route("198.18.2.0/24")
    kernel.fail_replace[bad] = NetlinkError("src 198.18.77.1 is not a local address")
    keeper, registry = make_keeper(kernel)
    keeper.set_desired([bad, good])

    result = await keeper.sync_once()

    assert result.added == (good,)
    assert result.errors == ("src 198.18.77.1 is not a local address",)
    assert not in_sync(keeper)
    assert metric(registry, "vpnctl_agent_route_sync_errors_total") == 1


async def test_run_restores_a_deleted_route_within_a_second() -> None:
    kernel = FakeKernel("tun0")
    wanted = route("198.18.1.0/24")
    keeper, registry = make_keeper(kernel, interval=0.25)
    keeper.set_desired([wanted])
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(keeper.run())
        await wait_for(lambda: wanted in kernel.ours())
        kernel.delete_by_hand(wanted)
        started = time.monotonic()
        await wait_for(lambda: wanted in kernel.ours())
        assert time.monotonic() - started < 1.0
        assert metric(registry, "vpnctl_agent_route_repairs_total") == 1
        task.cancel()


async def test_set_desired_from_another_thread_wakes_the_loop_at_once() -> None:
    kernel = FakeKernel("tun0")
    keeper, _ = make_keeper(kernel, interval=30.0)  # only a wake-up can explain a fast sync
    wanted = route("198.18.1.0/24")
    keeper.set_desired([])  # so that the first pass shows: in_sync
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(keeper.run())
        await wait_for(lambda: keeper.in_sync)  # run() did its first (empty) pass: waits 30 s
        assert kernel.ours() == set()
        thread = threading.Thread(target=keeper.set_desired, args=([wanted],))
        thread.start()
        await asyncio.to_thread(thread.join)
        await wait_for(lambda: wanted in kernel.ours(), timeout=2.0)
        task.cancel()


async def test_desired_addresses_are_added_and_repaired_never_removed() -> None:
    kernel = FakeKernel("tun0")
    mine = IPv4Interface("198.18.1.2/24")
    someone_elses = IPv4Interface("198.18.4.4/24")
    kernel.links["tun0"].addresses.add(someone_elses)
    keeper, registry = make_keeper(kernel)
    keeper.set_desired_addresses({"tun0": [mine], "tun9": [IPv4Interface("198.18.9.1/24")]})

    result = await keeper.sync_once()
    assert result.addresses_added == (("tun0", mine),)
    assert result.ok  # tun9 does not exist yet: not an error

    kernel.links["tun0"].addresses.discard(mine)
    result = await keeper.sync_once()
    assert result.addresses_repaired == (("tun0", mine),)
    assert kernel.links["tun0"].addresses == {mine, someone_elses}
    assert metric(registry, "vpnctl_agent_address_repairs_total") == 1


async def wait_for(predicate: Callable[[], bool], *, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)


# --------------------------------------------------------------------------- sysctls


def fake_proc(tmp_path: Path, values: dict[str, str]) -> str:
    for key, value in values.items():
        path = tmp_path.joinpath(*key.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
    return str(tmp_path)


def test_set_sysctl_is_idempotent_and_reports_changes(tmp_path: Path) -> None:
    root = fake_proc(tmp_path, {"net/ipv4/ip_forward": "0", "net/ipv4/tcp_rmem": "4096\t131072"})
    assert set_sysctl("net.ipv4.ip_forward", "1", proc_root=root) is True
    assert set_sysctl("net.ipv4.ip_forward", "1", proc_root=root) is False
    assert get_sysctl("net.ipv4.ip_forward", proc_root=root) == "1"
    # Multi-value sysctls compare whitespace-insensitively.
    assert set_sysctl("net.ipv4.tcp_rmem", "4096 131072", proc_root=root) is False
    with pytest.raises(ValueError, match="malformed"):
        set_sysctl("net.ipv4..ip_forward", "1", proc_root=root)
    with pytest.raises(ValueError, match="malformed"):
        get_sysctl("net/../../etc/passwd", proc_root=root)


async def test_sysctl_keeper_sets_waits_for_the_tun_and_counts_repairs(tmp_path: Path) -> None:
    root = fake_proc(tmp_path, {"net/ipv4/ip_forward": "0"})
    registry = CollectorRegistry()
    keeper = SysctlKeeper(registry=registry, role=ROLE, proc_root=root)
    # A dotted device name must work: the slashed form is used for conf.<dev>.
    keeper.set_desired(forwarding_sysctls(tun="tun0.1"))
    tun_key = "net/ipv4/conf/tun0.1/rp_filter"

    result = await keeper.sync_once()
    assert result.applied == ("net.ipv4.ip_forward",)
    assert result.pending == (tun_key,)
    assert keeper.healthy
    assert not in_sync(keeper)

    fake_proc(tmp_path, {tun_key: "1"})  # the tun appears, with strict rp_filter
    result = await keeper.sync_once()
    assert (result.applied, result.repaired, result.pending) == ((tun_key,), (), ())
    assert get_sysctl(tun_key, proc_root=root) == "2"
    assert keeper.in_sync

    fake_proc(tmp_path, {"net/ipv4/ip_forward": "0"})  # someone turns forwarding off
    result = await keeper.sync_once()
    assert result.repaired == ("net.ipv4.ip_forward",)
    assert get_sysctl("net.ipv4.ip_forward", proc_root=root) == "1"
    assert metric(registry, "vpnctl_agent_sysctl_repairs_total", key="net.ipv4.ip_forward") == 1
    assert metric(registry, "vpnctl_agent_sysctl_repairs_total", key=tun_key) == 0


def test_forwarding_sysctls_refuse_a_strict_rp_filter() -> None:
    with pytest.raises(ValueError, match="use 2 \\(loose\\) or 0"):
        forwarding_sysctls(tun="tun0", rp_filter=1)
