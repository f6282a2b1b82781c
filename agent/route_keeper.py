"""Keep the kernel's routes and addresses the way the agent wants them (sysctls:
agent/sysctls.py).

Someone (a person, a CNI, a restarted openvpn taking its tun down) will delete or change
what the agent set up. The keepers here re-read the kernel on a short interval and
put back what is missing, so a route deleted by hand is back within a second, and each
such repair is counted in a metric.

Invariants:

* The kernel is the source of truth, never memory. At start the keeper lists the routes
  tagged with our protocol number and deletes every one it was not asked for: the
  stale routes of a previous run. Foreign routes (other protocol numbers) are never
  listed, so never deleted.
* A desired route whose device is missing or down is *pending*, not an error: the tun
  device lives and dies with openvpn. It is retried on every pass.
* Only `Kernel` (agent.netlink) is used, so all of this is tested against a fake.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Interface
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge

from agent.netlink import (
    NOT_READY_ERRORS,
    Kernel,
    NetlinkError,
    Route,
)

log = logging.getLogger(__name__)

DEFAULT_UNHEALTHY_AFTER: Final = 3


@dataclass(frozen=True, kw_only=True)
class SyncResult:
    """What one pass of `RouteKeeper.sync_once` did.

    `added`: desired routes put in place for the first time (or after a desired-state
    change); `repaired`: desired routes that had been in place and were found missing or
    changed; `removed`: routes of ours that nobody wants any more (stale); `pending`:
    desired routes whose device is missing or down; `errors`: failures, one line each.
    """

    added: tuple[Route, ...] = ()
    removed: tuple[Route, ...] = ()
    repaired: tuple[Route, ...] = ()
    pending: tuple[Route, ...] = ()
    addresses_added: tuple[tuple[str, IPv4Interface], ...] = ()
    addresses_repaired: tuple[tuple[str, IPv4Interface], ...] = ()
    errors: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors


def _validate_routes(routes: Iterable[Route]) -> dict[tuple[object, ...], Route]:
    by_key: dict[tuple[object, ...], Route] = {}
    for route in routes:
        other = by_key.get(route.key)
        if other is not None and other != route:
            raise ValueError(
                f"desired routes '{other}' and '{route}' have the same table, destination "
                f"and metric; the kernel keeps one route per (table {route.table}, "
                f"{route.dst}, metric {route.metric}): drop one or give them different metrics"
            )
        by_key[route.key] = route
    return by_key


class RouteKeeper:
    """Makes the kernel's routes with our protocol equal to the desired set, forever.

    `set_desired` may be called from any thread; `sync_once` and `run` run on one loop.
    Until `set_desired` is first called the keeper does nothing, so a restart does not
    flush the routes before the agent knows what it wants.
    """

    def __init__(
        self,
        *,
        kernel: Kernel,
        registry: CollectorRegistry,
        role: str,
        interval: float = 0.25,
        unhealthy_after: int = DEFAULT_UNHEALTHY_AFTER,
    ) -> None:
        self._kernel = kernel
        self._role = role
        self._interval = interval
        self._unhealthy_after = unhealthy_after
        self._lock = threading.Lock()  # guards _desired* against other threads
        self._desired: dict[tuple[object, ...], Route] | None = None
        self._desired_addresses: dict[str, frozenset[IPv4Interface]] = {}
        self._sync_lock = asyncio.Lock()
        self._wake_event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Routes/addresses seen in place since they became desired: if one goes missing
        # again, putting it back is a repair, not a first add.
        self._in_place: set[Route] = set()
        self._addr_in_place: set[tuple[str, IPv4Interface]] = set()
        self._pending: frozenset[Route] = frozenset()
        self._consecutive_failures = 0
        self._last_errors: tuple[str, ...] = ()
        self._synced_once = False

        labels = ["role"]
        self._m_repairs = Counter(
            "vpnctl_agent_route_repairs",
            "Desired routes that had been in place, went missing or changed, and were restored.",
            labels,
            registry=registry,
        ).labels(role)
        self._m_desired = Gauge(
            "vpnctl_agent_routes_desired",
            "Routes the agent wants in the kernel.",
            labels,
            registry=registry,
        ).labels(role)
        self._m_pending = Gauge(
            "vpnctl_agent_routes_pending",
            "Desired routes not installed because their device is missing or down.",
            labels,
            registry=registry,
        ).labels(role)
        self._m_errors = Counter(
            "vpnctl_agent_route_sync_errors",
            "Failed kernel operations while syncing routes and addresses.",
            labels,
            registry=registry,
        ).labels(role)
        self._m_stale = Counter(
            "vpnctl_agent_stale_routes_removed",
            "Routes with our protocol that nobody wanted (e.g. left by a previous run).",
            labels,
            registry=registry,
        ).labels(role)
        self._m_addr_repairs = Counter(
            "vpnctl_agent_address_repairs",
            "Desired addresses that had been in place, went missing, and were restored.",
            labels,
            registry=registry,
        ).labels(role)

    # ---------------------------------------------------------------- desired state

    def set_desired(self, routes: Iterable[Route]) -> None:
        """Replace the desired routes. Raises ValueError on conflicting routes."""
        by_key = _validate_routes(routes)
        with self._lock:
            self._desired = by_key
        self._m_desired.set(len(by_key))
        self.wake()

    def set_desired_addresses(self, addresses: Mapping[str, Iterable[IPv4Interface]]) -> None:
        """Replace the desired addresses per device. Addresses are only ever added:
        the kernel has no owner tag for them, so the keeper never deletes one."""
        snapshot = {dev: frozenset(addrs) for dev, addrs in addresses.items()}
        with self._lock:
            self._desired_addresses = snapshot
        self.wake()

    @property
    def desired(self) -> frozenset[Route]:
        with self._lock:
            return frozenset((self._desired or {}).values())

    def wake(self) -> None:
        """Make `run` sync now instead of at the next interval. Any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake_event.set()
        else:
            loop.call_soon_threadsafe(self._wake_event.set)

    # ---------------------------------------------------------------- state

    @property
    def healthy(self) -> bool:
        """False after `unhealthy_after` consecutive syncs with errors."""
        return self._consecutive_failures < self._unhealthy_after

    @property
    def in_sync(self) -> bool:
        """The last sync succeeded and every desired route is installed."""
        return self._synced_once and self._consecutive_failures == 0 and not self._pending

    @property
    def pending(self) -> frozenset[Route]:
        return self._pending

    @property
    def last_errors(self) -> tuple[str, ...]:
        return self._last_errors

    # ---------------------------------------------------------------- sync

    async def sync_once(self) -> SyncResult:
        """One pass: put desired routes and addresses in place, delete our stale routes.

        Kernel failures are counted and returned, not raised; anything else is a bug
        and propagates.
        """
        async with self._sync_lock:
            with self._lock:
                desired = None if self._desired is None else dict(self._desired)
                desired_addresses = dict(self._desired_addresses)
            errors: list[str] = []
            addr_added, addr_repaired = await self._sync_addresses(desired_addresses, errors)
            if desired is None:  # not told yet: touch no route
                result = SyncResult(
                    addresses_added=tuple(addr_added),
                    addresses_repaired=tuple(addr_repaired),
                    errors=tuple(errors),
                )
            else:
                result = await self._sync_routes(desired, errors, addr_added, addr_repaired)
                self._synced_once = True
            self._record(result)
            return result

    async def _sync_routes(
        self,
        desired: dict[tuple[object, ...], Route],
        errors: list[str],
        addr_added: list[tuple[str, IPv4Interface]],
        addr_repaired: list[tuple[str, IPv4Interface]],
    ) -> SyncResult:
        try:
            actual = set(await self._kernel.list_routes())
        except NetlinkError as exc:
            errors.append(str(exc))
            return SyncResult(
                pending=tuple(self._pending),  # unknown this pass: keep what we knew
                addresses_added=tuple(addr_added),
                addresses_repaired=tuple(addr_repaired),
                errors=tuple(errors),
            )
        wanted = set(desired.values())
        self._in_place &= wanted  # forget routes no longer desired
        added: list[Route] = []
        repaired: list[Route] = []
        pending: list[Route] = []
        replaced_keys: set[tuple[object, ...]] = set()
        for route in sorted(wanted, key=str):
            if route in actual:
                self._in_place.add(route)
                continue
            try:
                await self._kernel.replace_route(route)
            except NOT_READY_ERRORS as exc:
                pending.append(route)
                if route not in self._pending:
                    log.info(
                        "event=route_pending role=%s route=%r reason=%r", self._role, str(route),
                        str(exc),
                    )  # fmt: skip
                continue
            except NetlinkError as exc:
                errors.append(str(exc))
                continue
            replaced_keys.add(route.key)
            if route in self._in_place:
                repaired.append(route)
                self._m_repairs.inc()
                log.warning("event=route_repaired role=%s route=%r", self._role, str(route))
            else:
                added.append(route)
                self._in_place.add(route)
                log.info("event=route_added role=%s route=%r", self._role, str(route))
        removed: list[Route] = []
        for route in sorted(actual - wanted, key=str):
            if route.key in replaced_keys:
                continue  # the replace above already overwrote it in place
            try:
                await self._kernel.delete_route(route)
            except NetlinkError as exc:
                errors.append(str(exc))
                continue
            removed.append(route)
            self._m_stale.inc()
            log.info("event=stale_route_removed role=%s route=%r", self._role, str(route))
        return SyncResult(
            added=tuple(added),
            removed=tuple(removed),
            repaired=tuple(repaired),
            pending=tuple(pending),
            addresses_added=tuple(addr_added),
            addresses_repaired=tuple(addr_repaired),
            errors=tuple(errors),
        )

    async def _sync_addresses(
        self, desired: Mapping[str, frozenset[IPv4Interface]], errors: list[str]
    ) -> tuple[list[tuple[str, IPv4Interface]], list[tuple[str, IPv4Interface]]]:
        wanted = {(dev, addr) for dev, addrs in desired.items() for addr in addrs}
        self._addr_in_place &= wanted
        added: list[tuple[str, IPv4Interface]] = []
        repaired: list[tuple[str, IPv4Interface]] = []
        for dev in sorted(desired):
            try:
                present = set(await self._kernel.addresses(dev))
            except NOT_READY_ERRORS:
                continue  # the device is not there yet; its routes will be pending too
            except NetlinkError as exc:
                errors.append(str(exc))
                continue
            for addr in sorted(desired[dev]):
                item = (dev, addr)
                if addr in present:
                    self._addr_in_place.add(item)
                    continue
                try:
                    await self._kernel.replace_address(dev, addr)
                except NOT_READY_ERRORS:
                    continue
                except NetlinkError as exc:
                    errors.append(str(exc))
                    continue
                if item in self._addr_in_place:
                    repaired.append(item)
                    self._m_addr_repairs.inc()
                    log.warning(
                        "event=address_repaired role=%s dev=%s addr=%s", self._role, dev, addr
                    )
                else:
                    added.append(item)
                    self._addr_in_place.add(item)
                    log.info("event=address_added role=%s dev=%s addr=%s", self._role, dev, addr)
        return added, repaired

    def _record(self, result: SyncResult) -> None:
        now_pending = frozenset(result.pending)
        for route in self._pending - now_pending:
            log.info("event=route_no_longer_pending role=%s route=%r", self._role, str(route))
        self._pending = now_pending
        self._m_pending.set(len(now_pending))
        if result.errors:
            self._m_errors.inc(len(result.errors))
            self._consecutive_failures += 1
            if result.errors != self._last_errors:  # one line per new problem, not per tick
                for err in result.errors:
                    log.warning(
                        "event=route_sync_error role=%s failures=%d error=%r",
                        self._role, self._consecutive_failures, err,
                    )  # fmt: skip
        elif self._consecutive_failures:
            log.info(
                "event=route_sync_recovered role=%s after_failures=%d",
                self._role, self._consecutive_failures,
            )  # fmt: skip
            self._consecutive_failures = 0
        self._last_errors = result.errors

    async def run(self) -> None:
        """Sync every `interval` seconds, and at once when woken. Runs until cancelled."""
        self._loop = asyncio.get_running_loop()
        log.info("event=route_keeper_start role=%s interval=%.2fs", self._role, self._interval)
        while True:
            self._wake_event.clear()
            await self.sync_once()
            try:
                async with asyncio.timeout(self._interval):
                    await self._wake_event.wait()
            except TimeoutError:
                pass
