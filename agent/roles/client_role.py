"""What the node and apiserver roles share: an openvpn client that is kept connected.

Both roles are an openvpn client plus a watchdog:

* certificate material is checked before openvpn ever sees it (`MaterialWatch.wait`), and
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
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from agent.agent_clock import AgentClock
from agent.netlink import NetlinkError
from agent.openvpn.config import render_client
from agent.openvpn.management import ByteCount, Event, StateEvent
from agent.role_config import ClientRoleConfig
from agent.roles.mgmt import LINK_ERRORS, Management, real_management
from agent.roles.openvpn_process import restart_openvpn
from agent.roles.openvpn_role import KernelFactory, OpenVPNRole, Tasks
from agent.tunnel_probe import CounterDelta, EchoProber, ProbeError, ProbeTracker, Verdict

RTT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
# Attribute an openvpn reconnect to our own SIGUSR1 if it follows within this time.
FORCED_WINDOW = 5.0


@dataclass(frozen=True)
class ClientMetrics:
    tunnel_up: Gauge
    reconnects: Counter
    probe_rtt: Histogram
    probe_failures: Counter
    tunnel_bytes: Counter

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
            tunnel_bytes=Counter(
                "vpnctl_agent_tunnel_bytes",
                "Bytes on the tun device, by direction (received, sent).",
                ["role", "direction"],
                registry=registry,
            ),
        )


def _reason_label(text: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_" else "_" for c in text.strip().lower())
    return cleaned[:32] or "unknown"


class ClientRole(OpenVPNRole):
    """An openvpn client kept up by probes; subclasses add their own tasks and conditions."""

    role: str = "client"
    watchdog_interval = 0.5  # also keeps the openvpn condition current; see openvpn_role
    routes_ready_needs_clean_sync = True

    def __init__(
        self,
        *,
        cfg: ClientRoleConfig,
        registry: CollectorRegistry,
        clock: AgentClock,
        rng: random.Random,
        kernel_factory: KernelFactory,
        management_factory: Callable[[str], Management] = real_management,
        logger: logging.Logger | None = None,
    ) -> None:
        self.cfg = cfg
        self.role = cfg.role
        self.tunnel_up = False
        self.state_name: str | None = None
        self._forced: tuple[str, float] | None = None
        self._stop: asyncio.Event | None = None
        super().__init__(
            common=cfg.common,
            openvpn=cfg.openvpn,
            registry=registry,
            clock=clock,
            rng=rng,
            kernel_factory=kernel_factory,
            management_factory=management_factory,
            conditions=(
                ("openvpn", "openvpn not started yet"),
                ("tunnel", "tunnel not connected yet"),
                ("probe", "no probe answered yet"),
                *self.extra_conditions().items(),
            ),
            logger=logger,
        )  # fmt: skip
        self.metrics = ClientMetrics.create(registry=registry)
        self.tracker = ProbeTracker(misses_allowed=cfg.probe.misses)
        self._set_tunnel(False)

    # --- hooks for the roles ---------------------------------------------------------------

    def extra_conditions(self) -> dict[str, str]:
        """Readiness conditions the role adds, with their initial reason."""
        return {}

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
        if forced is not None and self.clock.monotonic() - forced[1] <= FORCED_WINDOW:
            return forced[0]
        return None

    def _on_openvpn_start(self, pid: int) -> None:
        super()._on_openvpn_start(pid)
        self.events("openvpn_started", pid=pid)

    def _on_openvpn_exit(self, rc: int) -> None:
        was_up = self.tunnel_up
        self._set_tunnel(False, state="EXITED")
        super()._on_openvpn_exit(rc)
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

    def render_config(self) -> str:
        return render_client(self.cfg.openvpn)

    def _on_material_change(self) -> None:
        self._forced = ("material_changed", self.clock.monotonic())

    async def _probe_task(self) -> None:
        prober = EchoProber(target=self.cfg.probe.target)
        await prober.start()
        interval = self.cfg.probe.interval
        try:
            while True:
                started = self.clock.monotonic()
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
                await self.clock.sleep(max(0.0, interval - (self.clock.monotonic() - started)))
        finally:
            await prober.stop()

    async def force_reconnect(self, reason: str, *, detail: str) -> None:
        """SIGUSR1 through management; if management is dead, restart the process."""
        client = self.link.client
        if client is not None:
            # Set before signalling: openvpn's RECONNECTING notification can arrive before
            # the command's SUCCESS line, and must be attributed to this reason.
            self._forced = (reason, self.clock.monotonic())
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
        self._forced = ("management", self.clock.monotonic())
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

    def _on_watchdog_tick(self) -> None:
        self.conditions.set("openvpn", self._openvpn_reason())

    async def _on_wedged(self) -> None:
        await self.force_reconnect(
            "management",
            detail=f"management unusable for {self.link.unusable_for():.0f}s: "
            f"{self.link.last_error}",
        )

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
                    self.metrics.tunnel_bytes.labels(self.role, "received").inc(rx.feed(rx_bytes))
                    self.metrics.tunnel_bytes.labels(self.role, "sent").inc(tx.feed(tx_bytes))
            self.common.ready.labels(self.role).set(1 if self.conditions.ready else 0)
            await self.clock.sleep(1.0)

    # --- lifecycle ----------------------------------------------------------------------------

    def _starting_fields(self) -> dict[str, Any]:
        ovpn = self.cfg.openvpn
        return {"remotes": ",".join(f"{h}:{p}" for h, p in ovpn.remotes), "proto": ovpn.proto}

    def role_tasks(self) -> Tasks:
        return {"probe": self._probe_task, "counters": self._counters_task}

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        await super().run(stop)
