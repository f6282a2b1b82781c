"""Readiness conditions and the metrics every role exports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

from telemetry.health import HealthServer
from telemetry.standard_metrics import register_standard


class Conditions:
    """Named readiness conditions: each is either fine (None) or failing with a reason.

    Registered with the HealthServer as one readiness check per name, so /readyz shows
    exactly which part is unhappy and why.
    """

    def __init__(self) -> None:
        self._reasons: dict[str, str | None] = {}

    def declare(self, name: str, reason: str | None) -> None:
        """Create condition NAME with its initial state (normally a "not yet" reason)."""
        self._reasons[name] = reason

    def set(self, name: str, reason: str | None) -> None:
        if name not in self._reasons:
            raise KeyError(f"condition {name!r} was never declared")
        self._reasons[name] = reason

    def ok(self, name: str) -> None:
        self.set(name, None)

    def reason(self, name: str) -> str | None:
        return self._reasons[name]

    @property
    def ready(self) -> bool:
        return all(r is None for r in self._reasons.values())

    def failing(self) -> dict[str, str]:
        return {n: r for n, r in self._reasons.items() if r is not None}

    def register(self, health: HealthServer) -> None:
        for name in self._reasons:
            health.add_readiness(name, self._check(name))

    def _check(self, name: str) -> Callable[[], str | None]:
        return lambda: self._reasons[name]


@dataclass(frozen=True)
class CommonMetrics:
    """Metrics every role exports, all labelled with `role`."""

    role: str
    openvpn_running: Gauge
    openvpn_starts: Counter
    openvpn_exits: Counter
    config_errors: Counter
    ready: Gauge

    @classmethod
    def create(cls, *, registry: CollectorRegistry, role: str) -> CommonMetrics:
        # The process's own metrics and vpnctl_build_info, once per registry like these.
        register_standard(registry, component="agent")
        return cls(
            role=role,
            openvpn_running=Gauge(
                "vpnctl_agent_openvpn_running",
                "1 while the supervised openvpn process is running.",
                ["role"],
                registry=registry,
            ),
            openvpn_starts=Counter(
                "vpnctl_agent_openvpn_starts",
                "openvpn processes started by the agent (the first one included).",
                ["role"],
                registry=registry,
            ),
            openvpn_exits=Counter(
                "vpnctl_agent_openvpn_exits",
                "openvpn processes that exited, by how (clean, error, signal).",
                ["role", "how"],
                registry=registry,
            ),
            config_errors=Counter(
                "vpnctl_agent_config_errors",
                "Inputs refused (certificate material, desired state, CRL), by source.",
                ["role", "source"],
                registry=registry,
            ),
            ready=Gauge(
                "vpnctl_agent_ready",
                "1 when every readiness condition of the role holds.",
                ["role"],
                registry=registry,
            ),
        )
