"""One tenant's background work as a unit that can be paused: its lane.

The tenant side runs, per tenant, watches on what it installed, a drift repair loop, a
node CSR watch and the CSR loop. Any of them can find the tenant over one of its budgets
(``vpnctl.controller.budgets.OverBudget``). Pausing only the part that noticed would
leave the rest running (and caching) for a tenant that already costs too much, so they
all run as children of one TaskGroup here: ``OverBudget`` from any child cancels all of
them, ``on_pause`` drops what they cached, and after the budget's pause ``start`` builds
them again from scratch (a fresh listing, since nothing cached survives a pause).

Any other exception from a child ends ``run()``: that is a bug, and the tenant side's
supervisor (``TenantTasks``) logs it and restarts the lane with backoff, as it would any task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from vpnctl.controller.budgets import OverBudget, TenantBudget
from vpnctl.kube import Clock

_log = logging.getLogger(__name__)


def first_over_budget(group: BaseExceptionGroup[OverBudget]) -> OverBudget:
    """The first OverBudget in a (possibly nested) exception group."""
    for exc in group.exceptions:
        if isinstance(exc, OverBudget):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            return first_over_budget(exc)
    raise AssertionError("an OverBudget group without an OverBudget")  # pragma: no cover


def trip(budget: TenantBudget, over: OverBudget, *, name: str) -> float:
    """Pause the tenant's budget for ``over`` and log it; the pause, in seconds."""
    delay = budget.trip(over)
    _log.warning(
        "event=tenant_over_budget tenant=%s reason=%s paused_for=%.1fs trips=%d message=%r",
        name,
        over.reason,
        delay,
        budget.trips,
        over.message,
    )
    return delay


class Lane:
    """Runs ``start(lane)``'s children until the tenant goes over budget, pauses, and
    starts them again; ``run()`` returns only by cancellation or a child's crash.

    - ``name``: the tenant, in task names (``"tenant <name> <what>"``) and log lines;
    - ``start``: spawns the children with ``spawn()``; called on every (re)start;
    - ``on_pause``: drops what the children cached (called before the pause);
    - ``on_trip``: told the reason and the pause, e.g. to count it in a metric.
    """

    def __init__(
        self,
        *,
        name: str,
        budget: TenantBudget,
        clock: Clock,
        start: Callable[[Lane], None],
        on_pause: Callable[[], None],
        on_trip: Callable[[OverBudget, float], None],
    ) -> None:
        self.name = name
        self._budget = budget
        self._clock = clock
        self._start = start
        self._on_pause = on_pause
        self._on_trip = on_trip
        self._group: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def running(self) -> bool:
        """True while the children run (False while paused, or before ``run()``)."""
        return self._group is not None

    def task_names(self) -> list[str]:
        return [t.get_name() for t in self._tasks if not t.done()]

    def spawn(self, what: str, body: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Start a child now; only while running (from ``start`` or after it)."""
        if self._group is None:
            body.close()
            raise RuntimeError(f"lane of {self.name} is not running; {what} not started")
        task = self._group.create_task(body, name=f"tenant {self.name} {what}")
        self._tasks = [t for t in self._tasks if not t.done()] + [task]
        return task

    def interrupt(self, over: OverBudget) -> None:
        """Pause now, as if a child had found the tenant over budget (``ensure()`` does,
        for a tenant that is too slow). Only while running."""

        async def over_budget() -> None:
            raise over

        self.spawn("over budget", over_budget())

    async def run(self) -> None:
        while True:
            over: OverBudget | None = None
            try:
                async with asyncio.TaskGroup() as group:
                    self._group = group
                    self._start(self)
            except* OverBudget as caught:
                over = first_over_budget(caught)
            finally:
                self._group = None
                self._tasks.clear()
            if over is None:  # pragma: no cover - the children never return
                raise RuntimeError(f"every task of the lane of {self.name} returned")
            self._on_pause()
            delay = trip(self._budget, over, name=self.name)
            self._on_trip(over, delay)
            await self._clock.sleep(delay)
            _log.info("event=tenant_resumed tenant=%s trips=%d", self.name, self._budget.trips)
