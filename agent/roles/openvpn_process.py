"""The supervised openvpn process of a role: its config file, its Supervisor, its restart."""

from __future__ import annotations

import random
from collections.abc import Callable

from agent.agent_clock import AgentClock
from agent.event_log import EventLog
from agent.files import atomic_write
from agent.openvpn.supervisor import Supervisor
from agent.role_config import Common
from agent.roles.readiness import CommonMetrics


def render_to(path: str, text: str) -> None:
    atomic_write(path, text.encode(), mode=0o600)


def openvpn_supervisor(
    *,
    common: Common,
    config_path: str,
    metrics: CommonMetrics,
    rng: random.Random,
    clock: AgentClock,
    extra_on_start: Callable[[int], None] | None = None,
    extra_on_exit: Callable[[int], None] | None = None,
) -> Supervisor:
    """A Supervisor for `openvpn --config CONFIG_PATH` that keeps the common metrics."""
    role = metrics.role

    def on_start(pid: int) -> None:
        metrics.openvpn_running.labels(role).set(1)
        metrics.openvpn_starts.labels(role).inc()
        if extra_on_start is not None:
            extra_on_start(pid)

    def on_exit(rc: int) -> None:
        metrics.openvpn_running.labels(role).set(0)
        how = "clean" if rc == 0 else ("signal" if rc < 0 else "error")
        metrics.openvpn_exits.labels(role, how).inc()
        if extra_on_exit is not None:
            extra_on_exit(rc)

    metrics.openvpn_running.labels(role).set(0)
    return Supervisor(
        name=f"openvpn-{role}",
        argv=[common.openvpn_binary, "--config", config_path],
        rng=rng,
        log_path=common.openvpn_log,
        on_start=on_start,
        on_exit=on_exit,
        clock=clock,
    )


async def restart_openvpn(supervisor: Supervisor, *, events: EventLog, reason: str) -> None:
    """Restart the supervised openvpn; a no-op (logged) if its run() has not begun yet."""
    if not supervisor.running:
        events("openvpn_restart_skipped", reason=reason, why="not running yet")
        return
    try:
        await supervisor.restart()
    except RuntimeError as e:  # run() ended or not started: nothing to restart
        events.warning("openvpn_restart_skipped", reason=reason, why=str(e))
