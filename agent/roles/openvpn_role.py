"""What every openvpn role is built on: `OpenVPNRole`, the base of the server role and of
the client role (which the node and apiserver roles extend).

The base owns what all of them run around their openvpn process:

* the supervised process (`openvpn_process.openvpn_supervisor`) and its management link
  (`mgmt.ManagementLink`), with hooks for what a role does when either changes;
* the material task: wait for valid certificate material, render the config, release
  the openvpn task, then restart openvpn on every valid change of the files;
* the watchdog: a management interface dead for `MANAGEMENT_DEAD_AFTER` seconds while
  openvpn runs means a wedged process, and the role's `_on_wedged` acts on it;
* the sysctl task (roles that forward: the server and the node) and the route-readiness
  task (roles that own routes: the server and the apiserver);
* the frame: health server, readiness conditions, kernel handle, one TaskGroup
  (`task_frame.run_group`) and the cleanup that runs after a stop and after a crash alike.

What differs between the roles is chosen here on purpose, as class parameters:

* `watchdog_interval`: 0.5 s for the clients, whose watchdog also keeps the `openvpn`
  condition current, so /readyz follows an openvpn exit within half a second; 1 s for
  the server, whose `openvpn` condition is kept by its status task and whose watchdog
  only looks for a wedged process.
* `_on_wedged`: the client forces a reconnect (counted as reason `management`; with
  management dead that is a process restart), because its reconnect metrics must say
  why the tunnel dropped; the server restarts openvpn (event `openvpn_wedged`): it has
  no tunnel of its own to reconnect, and a restart is what frees its clients.
* `routes_ready_needs_clean_sync`: the apiserver's routes are its only path into the
  tenant, so any failed sync shows on /readyz at once; the server carries one route
  per node and tolerates a failing sync until the keeper calls it unhealthy
  (`RouteKeeper.unhealthy_after`), so one transient netlink error does not take the
  whole tenant's server out of its Service.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry

from agent.agent_clock import AgentClock
from agent.event_log import EventLog
from agent.netlink import Kernel
from agent.openvpn.config import TunnelConfig
from agent.openvpn.management import Event
from agent.openvpn.supervisor import Supervisor
from agent.role_config import Common
from agent.roles.material import MaterialPaths, MaterialWatch
from agent.roles.mgmt import Management, ManagementLink, real_management
from agent.roles.openvpn_process import openvpn_supervisor, render_to
from agent.roles.readiness import CommonMetrics, Conditions
from agent.roles.task_frame import run_group
from agent.route_keeper import RouteKeeper
from agent.sysctls import SysctlKeeper, forwarding_sysctls, readiness_reason
from certs.check import CheckedUsage
from telemetry.health import HealthServer

# A management interface dead this long while openvpn runs means a wedged process.
MANAGEMENT_DEAD_AFTER = 10.0
# How often the sysctl and route-readiness tasks look.
SYSCTL_INTERVAL = 1.0
ROUTE_READINESS_INTERVAL = 0.25

KernelFactory = Callable[[], Awaitable[Kernel]]
"""Opens the kernel handle a role uses for routes and counters (tests pass a fake)."""

Tasks = dict[str, Callable[[], Coroutine[Any, Any, Any]]]


class OpenVPNRole:
    """An openvpn process with its management link, watchdog and readiness; see the module."""

    role: str = "openvpn"
    watchdog_interval: float = 1.0
    routes_ready_needs_clean_sync: bool = False
    material_usage: CheckedUsage = "client"

    def __init__(
        self,
        *,
        common: Common,
        openvpn: TunnelConfig,
        registry: CollectorRegistry,
        clock: AgentClock,
        rng: random.Random,
        kernel_factory: KernelFactory,
        management_factory: Callable[[str], Management] = real_management,
        conditions: Iterable[tuple[str, str | None]],
        logger: logging.Logger | None = None,
    ) -> None:
        self.registry = registry
        self.clock = clock
        self.rng = rng
        self.material = MaterialPaths(ca=openvpn.ca, cert=openvpn.cert, key=openvpn.key,
                                      tls_crypt_v2=openvpn.tls_crypt_v2,
                                      usage=self.material_usage)  # fmt: skip
        self.dev = openvpn.dev
        self._common_cfg = common
        self._kernel_factory = kernel_factory
        self.events = EventLog(
            logger=logger or logging.getLogger(f"agent.{self.role}"), role=self.role
        )
        self.common = CommonMetrics.create(registry=registry, role=self.role)
        self.conditions = Conditions()
        for name, reason in (("material", "certificate material not checked yet"), *conditions):
            self.conditions.declare(name, reason)
        self.config_path = os.path.join(common.state_dir, f"openvpn-{self.role}.conf")
        self.supervisor: Supervisor = openvpn_supervisor(
            common=common,
            config_path=self.config_path,
            metrics=self.common,
            rng=rng,
            clock=clock,
            extra_on_start=self._on_openvpn_start,
            extra_on_exit=self._on_openvpn_exit,
        )
        self.link = ManagementLink(
            path=openvpn.management,
            events=self.events,
            factory=management_factory,
            on_connect=self._on_management_connect,
            on_event=self._on_management_event,
            clock=clock,
        )
        self.health = HealthServer(
            registry=registry, host=common.health_host, port=common.health_port
        )
        self.health.add_liveness("agent", lambda: None)
        self.kernel: Kernel | None = None
        self.routes: RouteKeeper | None = None
        self.sysctls: SysctlKeeper | None = None
        self._material_ready = asyncio.Event()

    # --- hooks ------------------------------------------------------------------------------

    def render_config(self) -> str:
        """The openvpn config file's text, rendered once the material is valid."""
        raise NotImplementedError

    def _before_render(self) -> None:
        """Runs once the material is valid, before the config is rendered."""

    def _on_material_change(self) -> None:
        """Runs before openvpn restarts for a valid change of the material."""

    def _on_openvpn_start(self, pid: int) -> None:
        self.link.restart_grace()

    def _on_openvpn_exit(self, rc: int) -> None:
        self.conditions.set("openvpn", f"openvpn exited with code {rc}; restarting")

    async def _on_management_connect(self, client: Management) -> None:
        """Prove the interface answers (not just accepts) and read what the role needs."""

    def _on_management_event(self, event: Event) -> None:
        """A notification from openvpn's management interface."""

    async def _openvpn_task(self) -> None:
        """Start openvpn once the material is valid, and keep it running."""
        await self._material_ready.wait()
        await self.supervisor.run()

    def _on_watchdog_tick(self) -> None:
        """Runs every `watchdog_interval`, before the wedge check."""

    async def _on_wedged(self) -> None:
        """Management dead for MANAGEMENT_DEAD_AFTER while openvpn runs: act on it."""
        raise NotImplementedError

    def _starting_fields(self) -> dict[str, Any]:
        """What the `starting` event logs besides the health address."""
        return {}

    async def setup(self) -> None:
        """Role-specific setup before the tasks start (the kernel is open)."""

    def role_tasks(self) -> Tasks:
        """The role's own tasks, beside the ones every openvpn role runs."""
        return {}

    async def teardown(self) -> None:
        """Role-specific cleanup after the tasks stopped and openvpn was stopped."""

    # --- shared tasks -----------------------------------------------------------------------

    def keep_forwarding_sysctls(self, extra: Mapping[str, str] | None = None) -> None:
        """Keep ip_forward on and rp_filter loose on tun (roles that route through tun),
        and the role's ``extra`` sysctls."""
        self.sysctls = SysctlKeeper(
            registry=self.registry, role=self.role, interval=SYSCTL_INTERVAL
        )
        self.sysctls.set_desired({**forwarding_sysctls(tun=self.dev, rp_filter=2), **(extra or {})})

    async def _material_task(self) -> None:
        material = MaterialWatch(
            paths=self.material,
            clock=self.clock,
            conditions=self.conditions,
            condition="material",
            metrics=self.common,
            events=self.events,
        )
        await material.wait()
        self._before_render()
        render_to(self.config_path, self.render_config())
        self._material_ready.set()
        await material.watch(self.supervisor, on_change=self._on_material_change)

    async def _watchdog_task(self) -> None:
        while True:
            await self.clock.sleep(self.watchdog_interval)
            self._on_watchdog_tick()
            if (
                self.supervisor.running
                and not self.link.usable
                and self.link.unusable_for() >= MANAGEMENT_DEAD_AFTER
            ):
                await self._on_wedged()
                self.link.restart_grace()

    async def _sysctl_task(self) -> None:
        sysctls = self.sysctls
        assert sysctls is not None
        while True:
            result = await sysctls.sync_once()
            self.conditions.set("sysctls", readiness_reason(result, dev=self.dev))
            await self.clock.sleep(SYSCTL_INTERVAL)

    def routes_reason(self) -> str | None:
        """The `routes` condition: None when the kernel has every route the role wants."""
        r = self.routes
        assert r is not None
        if not r.healthy:
            return "; ".join(r.last_errors) or "route sync failing"
        if r.pending:
            listed = ", ".join(sorted(str(route) for route in r.pending)[:4])
            more = ", ..." if len(r.pending) > 4 else ""
            return f"waiting for {self.dev}: {len(r.pending)} route(s) pending: {listed}{more}"
        if self.routes_ready_needs_clean_sync and not r.in_sync:
            return "routes not in sync yet"
        return None

    async def _route_readiness_task(self) -> None:
        while True:
            self.conditions.set("routes", self.routes_reason())
            await self.clock.sleep(ROUTE_READINESS_INTERVAL)

    # --- lifecycle ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        os.makedirs(self._common_cfg.state_dir, exist_ok=True)
        self.conditions.register(self.health)
        await self.health.start()
        self.events("starting", health=f"{self._common_cfg.health_host}:{self.health.port}",
                    **self._starting_fields())  # fmt: skip
        try:
            self.kernel = await self._kernel_factory()
            await self.setup()
            tasks: Tasks = {
                "material": self._material_task,
                "openvpn": self._openvpn_task,
                "management": self.link.run,
            }
            if self.routes is not None:
                tasks["routes"] = self.routes.run
                tasks["route_readiness"] = self._route_readiness_task
            if self.sysctls is not None:
                tasks["sysctls"] = self._sysctl_task
            tasks["watchdog"] = self._watchdog_task
            tasks.update(self.role_tasks())
            await run_group(tasks, stop=stop, events=self.events)
        finally:
            stop.set()  # also on a crash: exits of openvpn from here on are expected
            await self.supervisor.stop()
            await self.teardown()
            if self.kernel is not None:
                await self.kernel.close()
            await self.health.stop()
            self.events("stopped")
