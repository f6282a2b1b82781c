"""What the node and apiserver roles share: an openvpn client that is kept connected.

Both roles are an openvpn client plus a watchdog:

* certificate material is checked before openvpn ever sees it (`wait_for_material`), and
  re-checked when the files change: a valid change restarts openvpn with it, an invalid
  one is reported and the running tunnel left alone;
* the management link follows openvpn's state (`CONNECTED` = tunnel up);
* a UDP echo to the server's tunnel address every second; after `misses` consecutive
  misses while openvpn believes it is connected, `signal SIGUSR1` through management
  makes it reconnect, and if management itself is dead the process is restarted;
* tun byte counters (from the kernel, so they count what really crossed tun) and the
  probe RTT are exported.

Readiness = material valid, openvpn running and connected, probe passing, plus what the
role adds (sysctls for the node, routes for the apiserver).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from agent.desired import ClientRoleConfig
from agent.event_log import EventLog
from agent.netlink import Kernel, NetlinkError
from agent.openvpn.config import render_client
from agent.openvpn.management import ByteCount, Event, StateEvent
from agent.openvpn.supervisor import Supervisor
from agent.probe import CounterDelta, EchoProber, ProbeError, ProbeTracker, Verdict
from agent.roles.material import Clock, MaterialPaths, wait_for_material, watch_material
from agent.roles.mgmt import LINK_ERRORS, Management, ManagementLink, real_management
from agent.roles.openvpn_process import openvpn_supervisor, render_to, restart_openvpn
from agent.roles.readiness import CommonMetrics, Conditions
from agent.roles.task_frame import run_group
from telemetry.health import HealthServer

RTT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
# A management interface dead this long while openvpn runs means a wedged process.
MANAGEMENT_DEAD_AFTER = 10.0
# Attribute an openvpn reconnect to our own SIGUSR1 if it follows within this time.
FORCED_WINDOW = 5.0

KernelFactory = Callable[[], Awaitable[Kernel]]


@dataclass(frozen=True)
class ClientMetrics:
    tunnel_up: Gauge
    reconnects: Counter
    probe_rtt: Histogram
    probe_failures: Counter
    bytes_received: Counter
    bytes_sent: Counter

    @classmethod
    def create(cls, *, registry: CollectorRegistry) -> ClientMetrics:
        return cls(
            tunnel_up=Gauge(
                "vpnctl_agent_tunnel_up",
                "1 while openvpn reports the tunnel CONNECTED.",
                ["role"],
                registry=registry,
            ),
            reconnects=Counter(
                "vpnctl_agent_reconnects",
                "Tunnel reconnects, by reason (probe, management, process_exit, or openvpn's "
                "own reason such as ping-restart).",
                ["role", "reason"],
                registry=registry,
            ),
            probe_rtt=Histogram(
                "vpnctl_agent_probe_rtt_seconds",
                "Round trip of the UDP echo to the server's tunnel address.",
                ["role"],
                buckets=RTT_BUCKETS,
                registry=registry,
            ),
            probe_failures=Counter(
                "vpnctl_agent_probe_failures",
                "UDP echoes to the server's tunnel address that got no answer.",
                ["role"],
                registry=registry,
            ),
            bytes_received=Counter(
                "vpnctl_agent_tunnel_bytes_received",
                "Bytes received on the tun device.",
                ["role"],
                registry=registry,
            ),
            bytes_sent=Counter(
                "vpnctl_agent_tunnel_bytes_sent",
                "Bytes sent on the tun device.",
                ["role"],
                registry=registry,
            ),
        )


def _reason_label(text: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_" else "_" for c in text.strip().lower())
    return cleaned[:32] or "unknown"


class ClientRole:
    """An openvpn client kept up by probes; subclasses add their own tasks and conditions."""

    role: str = "client"

    def __init__(
        self,
        *,
        cfg: ClientRoleConfig,
        registry: CollectorRegistry,
        clock: Clock,
        rng: random.Random,
        kernel_factory: KernelFactory,
        management_factory: Callable[[str], Management] = real_management,
        logger: logging.Logger | None = None,
    ) -> None:
        self.cfg = cfg
        self.role = cfg.role
        self.registry = registry
        self.clock = clock
        self.rng = rng
        self._kernel_factory = kernel_factory
        self.events = EventLog(
            logger=logger or logging.getLogger(f"agent.{cfg.role}"), role=self.role
        )
        self.common = CommonMetrics.create(registry=registry, role=self.role)
        self.metrics = ClientMetrics.create(registry=registry)
        self.conditions = Conditions()
        self.conditions.declare("material", "certificate material not checked yet")
        self.conditions.declare("openvpn", "openvpn not started yet")
        self.conditions.declare("tunnel", "tunnel not connected yet")
        self.conditions.declare("probe", "no probe answered yet")
        for name, reason in self.extra_conditions().items():
            self.conditions.declare(name, reason)
        self.material = MaterialPaths(
            ca=cfg.openvpn.ca,
            cert=cfg.openvpn.cert,
            key=cfg.openvpn.key,
            tls_crypt_v2=cfg.openvpn.tls_crypt_v2,
            usage="client",
        )
        self.config_path = os.path.join(cfg.common.state_dir, f"openvpn-{self.role}.conf")
        self.tunnel_up = False
        self.state_name: str | None = None
        self._forced: tuple[str, float] | None = None
        self._stop: asyncio.Event | None = None
        self._material_ready = asyncio.Event()
        self.supervisor: Supervisor = openvpn_supervisor(
            common=cfg.common,
            config_path=self.config_path,
            metrics=self.common,
            rng=rng,
            extra_on_start=self._on_openvpn_start,
            extra_on_exit=self._on_openvpn_exit,
        )
        self.link = ManagementLink(
            path=cfg.openvpn.management,
            events=self.events,
            factory=management_factory,
            on_connect=self._on_management_connect,
            on_event=self._on_management_event,
        )
        self.tracker = ProbeTracker(misses_allowed=cfg.probe.misses)
        self.kernel: Kernel | None = None
        self.health = HealthServer(
            registry=registry, host=cfg.common.health_host, port=cfg.common.health_port
        )
        self.health.add_liveness("agent", lambda: None)
        self._set_tunnel(False)

    # --- hooks for the roles ---------------------------------------------------------------

    def extra_conditions(self) -> dict[str, str]:
        """Readiness conditions the role adds, with their initial reason."""
        return {}

    def extra_tasks(self) -> dict[str, Callable[[], Coroutine[Any, Any, Any]]]:
        return {}

    async def setup(self) -> None:
        """Role-specific setup before the tasks start (kernel is open)."""

    async def teardown(self) -> None:
        """Role-specific cleanup after the tasks stopped."""

    # --- state ------------------------------------------------------------------------------

    def _set_tunnel(self, up: bool, *, state: str | None = None) -> None:
        self.tunnel_up = up
        self.metrics.tunnel_up.labels(self.role).set(1 if up else 0)
        if up:
            self.conditions.ok("tunnel")
        else:
            self.conditions.set("tunnel", f"openvpn state is {state or 'unknown'}, not CONNECTED")

    def _count_reconnect(self, reason: str) -> None:
        self.metrics.reconnects.labels(self.role, reason).inc()
        self.events("reconnect", reason=reason)

    def _take_forced(self) -> str | None:
        forced, self._forced = self._forced, None
        if forced is not None and time.monotonic() - forced[1] <= FORCED_WINDOW:
            return forced[0]
        return None

    def _on_openvpn_start(self, pid: int) -> None:
        self.link.restart_grace()
        self.events("openvpn_started", pid=pid)

    def _on_openvpn_exit(self, rc: int) -> None:
        was_up = self.tunnel_up
        self._set_tunnel(False, state="EXITED")
        self.conditions.set("openvpn", f"openvpn exited with code {rc}; restarting")
        if self._stop is not None and self._stop.is_set():
            return
        forced = self._take_forced()
        if forced is not None or was_up:
            self._count_reconnect(forced or "process_exit")
        self.events.warning("openvpn_exited", exit_code=rc)

    async def _on_management_connect(self, client: Management) -> None:
        await client.enable_state_events()
        state = await client.state()
        self._apply_state(state)

    def _on_management_event(self, event: Event) -> None:
        if isinstance(event, StateEvent):
            self._apply_state(event)
        elif isinstance(event, ByteCount):
            pass  # byte counters come from the kernel's tun statistics

    def _apply_state(self, state: StateEvent) -> None:
        was_up = self.tunnel_up
        self.state_name = state.name
        up = state.name == "CONNECTED"
        if up != was_up:
            self.events("tunnel_state", state=state.name, description=state.description or None,
                        local_ip=state.local_ip or None)  # fmt: skip
        self._set_tunnel(up, state=state.name)
        if state.name == "RECONNECTING":
            forced = self._take_forced()
            self._count_reconnect(forced or _reason_label(state.description or "openvpn"))

    # --- tasks ------------------------------------------------------------------------------

    async def _material_task(self) -> None:
        await wait_for_material(
            self.material,
            clock=self.clock,
            conditions=self.conditions,
            condition="material",
            metrics=self.common,
            events=self.events,
        )
        render_to(self.config_path, render_client(self.cfg.openvpn))
        self._material_ready.set()
        await watch_material(
            self.material,
            clock=self.clock,
            conditions=self.conditions,
            condition="material",
            metrics=self.common,
            events=self.events,
            supervisor=self.supervisor,
            on_change=self._mark_material_change,
        )

    def _mark_material_change(self) -> None:
        self._forced = ("material_changed", time.monotonic())

    async def _openvpn_task(self) -> None:
        await self._material_ready.wait()
        await self.supervisor.run()

    async def _probe_task(self) -> None:
        prober = EchoProber(target=self.cfg.probe.target)
        await prober.start()
        interval = self.cfg.probe.interval
        try:
            while True:
                started = time.monotonic()
                try:
                    rtt = await prober.probe(timeout=self.cfg.probe.timeout)
                except ProbeError as e:
                    self.metrics.probe_failures.labels(self.role).inc()
                    verdict = self.tracker.record(ok=False, tunnel_up=self.tunnel_up, error=str(e))
                    self.conditions.set("probe", str(e))
                else:
                    self.metrics.probe_rtt.labels(self.role).observe(rtt)
                    verdict = self.tracker.record(ok=True, tunnel_up=self.tunnel_up)
                    self.conditions.ok("probe")
                if verdict is Verdict.RECONNECT:
                    await self.force_reconnect(
                        "probe",
                        detail=f"{self.cfg.probe.misses} probes missed: {self.tracker.last_error}",
                    )
                await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
        finally:
            await prober.stop()

    async def force_reconnect(self, reason: str, *, detail: str) -> None:
        """SIGUSR1 through management; if management is dead, restart the process."""
        client = self.link.client
        if client is not None:
            # Set before signalling: openvpn's RECONNECTING notification can arrive before
            # the command's SUCCESS line, and must be attributed to this reason.
            self._forced = (reason, time.monotonic())
            try:
                await client.signal("SIGUSR1")
            except LINK_ERRORS as e:
                self._forced = None
                self.events.warning(
                    "signal_failed", signal="SIGUSR1", error=f"{type(e).__name__}: {e}"
                )
            else:
                self.events.warning("reconnect_forced", reason=reason, how="SIGUSR1", detail=detail)
                return
        if not self._material_ready.is_set():
            return
        self._forced = ("management", time.monotonic())
        self.events.warning("reconnect_forced", reason=reason, how="restart", detail=detail)
        await restart_openvpn(self.supervisor, events=self.events, reason=reason)

    def _openvpn_reason(self) -> str | None:
        if not self._material_ready.is_set():
            return "waiting for valid certificate material before starting openvpn"
        if not self.supervisor.running:
            rc = self.supervisor.last_returncode
            return f"openvpn is not running (last exit code {rc}); the supervisor restarts it"
        if not self.link.usable:
            return f"management interface unusable: {self.link.last_error}"
        return None

    async def _watchdog_task(self) -> None:
        """Keep the openvpn condition current; restart openvpn if management stays dead."""
        while True:
            await asyncio.sleep(0.5)
            self.conditions.set("openvpn", self._openvpn_reason())
            if (
                self.supervisor.running
                and not self.link.usable
                and self.link.unusable_for() >= MANAGEMENT_DEAD_AFTER
            ):
                await self.force_reconnect(
                    "management",
                    detail=f"management unusable for {self.link.unusable_for():.0f}s: "
                    f"{self.link.last_error}",
                )
                self.link.restart_grace()

    async def _counters_task(self) -> None:
        rx, tx = CounterDelta(), CounterDelta()
        dev = self.cfg.openvpn.dev
        while True:
            kernel = self.kernel
            if kernel is not None:
                try:
                    rx_bytes, tx_bytes = await kernel.link_counters(dev)
                except NetlinkError:
                    pass  # tun is gone while openvpn restarts; the next device starts from 0
                else:
                    self.metrics.bytes_received.labels(self.role).inc(rx.feed(rx_bytes))
                    self.metrics.bytes_sent.labels(self.role).inc(tx.feed(tx_bytes))
            self.common.ready.labels(self.role).set(1 if self.conditions.ready else 0)
            await asyncio.sleep(1.0)

    # --- lifecycle ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        os.makedirs(self.cfg.common.state_dir, exist_ok=True)
        self.conditions.register(self.health)
        await self.health.start()
        self.events("starting", health=f"{self.cfg.common.health_host}:{self.health.port}",
                    remotes=",".join(f"{h}:{p}" for h, p in self.cfg.openvpn.remotes),
                    proto=self.cfg.openvpn.proto)  # fmt: skip
        try:
            self.kernel = await self._kernel_factory()
            await self.setup()
            tasks: dict[str, Callable[[], Coroutine[Any, Any, Any]]] = {
                "material": self._material_task,
                "openvpn": self._openvpn_task,
                "management": self.link.run,
                "probe": self._probe_task,
                "watchdog": self._watchdog_task,
                "counters": self._counters_task,
                **self.extra_tasks(),
            }
            await run_group(tasks, stop=stop, events=self.events)
        finally:
            stop.set()  # also on a crash: exits of openvpn from here on are expected
            await self.supervisor.stop()
            await self.teardown()
            if self.kernel is not None:
                await self.kernel.close()
            await self.health.stop()
            self.events("stopped")
