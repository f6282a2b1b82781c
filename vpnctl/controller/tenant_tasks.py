"""``TenantTasks``: the supervisor of the tenant side's background tasks.

(Not the agent's ``agent.openvpn.supervisor.Supervisor``, which runs an openvpn process.)
A body that raises (or returns) is logged with its traceback and started again after a
jittered backoff; only cancellation ends it. So nothing dies silently, and ``healthy()``
(for /healthz) turns False when a task keeps crashing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from vpnctl.kube import Clock

_log = logging.getLogger(__name__)


@dataclass(eq=False)
class _TaskHealth:
    name: str
    started_at: float
    crashes_in_a_row: int = 0


class TenantTasks:
    """Runs background bodies that should never end, in a TaskGroup, and knows whether
    they are well.

    ``backoff(n)``: the pause before the restart after the n-th crash in a row.
    ``healthy()`` is False while a task has crashed ``max_crashes`` times in a row
    without ``stable_after`` seconds of running in between, or when a task ended anyway.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        backoff: Callable[[int], float],
        max_crashes: int,
        stable_after: float,
    ) -> None:
        self._clock = clock
        self._backoff = backoff
        self._max_crashes = max_crashes
        self._stable_after = stable_after
        self._health: dict[asyncio.Task[None], _TaskHealth] = {}

    def spawn(
        self, group: asyncio.TaskGroup, name: str, body: Callable[[], Awaitable[None]]
    ) -> asyncio.Task[None]:
        health = _TaskHealth(name=name, started_at=self._clock.monotonic())
        task = group.create_task(self._run(health, body), name=name)
        self._health[task] = health
        return task

    def discard(self, task: asyncio.Task[None]) -> None:
        """Stop watching ``task`` (it is being cancelled on purpose)."""
        self._health.pop(task, None)

    def crashes(self, task: asyncio.Task[None]) -> int:
        health = self._health.get(task)
        return health.crashes_in_a_row if health is not None else 0

    def healthy(self) -> bool:
        now = self._clock.monotonic()
        for task, health in self._health.items():
            if task.done():
                return False  # ended without discard(): cancelled by someone else
            if (
                health.crashes_in_a_row >= self._max_crashes
                and now - health.started_at < self._stable_after
            ):
                return False
        return True

    async def _run(self, health: _TaskHealth, body: Callable[[], Awaitable[None]]) -> None:
        while True:
            health.started_at = self._clock.monotonic()
            try:
                await body()
                raise RuntimeError(f"{health.name} returned; it should run until cancelled")
            except Exception:
                ran = self._clock.monotonic() - health.started_at
                health.crashes_in_a_row = (
                    1 if ran >= self._stable_after else health.crashes_in_a_row + 1
                )
                delay = self._backoff(health.crashes_in_a_row)
                _log.exception(
                    "event=tenant_task_crashed task=%r crashes_in_a_row=%d retry_in=%.1fs",
                    health.name,
                    health.crashes_in_a_row,
                    delay,
                )
                await self._clock.sleep(delay)
