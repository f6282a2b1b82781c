"""A tenant's lane pauses all its work together (vpnctl/controller/tenant_lane.py)."""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.support.polling import aeventually
from vpnctl.controller.budgets import (
    REASON_CSR_RATE,
    REASON_SLOW,
    Budgets,
    OverBudget,
    TenantBudget,
)
from vpnctl.controller.tenant_lane import Lane
from vpnctl.kube import ManualClock


async def _forever() -> None:
    await asyncio.Event().wait()


class Recorder:
    def __init__(self) -> None:
        self.starts = 0
        self.pauses = 0
        self.trips: list[tuple[str, float]] = []
        self.fail_on_start: OverBudget | None = None

    def start(self, lane: Lane) -> None:
        self.starts += 1
        lane.spawn("watch", _forever())
        lane.spawn("loop", self._loop())

    async def _loop(self) -> None:
        if self.fail_on_start is not None:
            over, self.fail_on_start = self.fail_on_start, None
            raise over
        await asyncio.Event().wait()

    def on_pause(self) -> None:
        self.pauses += 1

    def on_trip(self, over: OverBudget, delay: float) -> None:
        self.trips.append((over.reason, delay))


async def test_over_budget_anywhere_pauses_everything_and_it_all_restarts() -> None:
    clock = ManualClock()
    budget = TenantBudget(
        Budgets(pause_base=30.0, pause_cap=60.0), tenant="t/a", clock=clock, rng=random.Random(1)
    )
    rec = Recorder()
    rec.fail_on_start = OverBudget(REASON_CSR_RATE, "too many")
    lane = Lane(
        name="t/a",
        budget=budget,
        clock=clock,
        start=rec.start,
        on_pause=rec.on_pause,
        on_trip=rec.on_trip,
    )
    assert not lane.running
    task = asyncio.create_task(lane.run())
    try:
        # A child found the tenant over budget: every child stopped, caches dropped.
        await aeventually(lambda: rec.trips, what="the first trip", interval=0)
        assert rec.trips == [(REASON_CSR_RATE, 30.0)]
        assert (rec.starts, rec.pauses) == (1, 1)
        assert not lane.running
        assert lane.task_names() == []
        assert budget.paused()
        with pytest.raises(RuntimeError, match="not running"):
            lane.spawn("late", asyncio.sleep(0))
        # After the pause, everything starts again.
        clock.advance(30.0)

        def restarted() -> bool:
            return lane.running and len(lane.task_names()) == 2

        await aeventually(restarted, what="restarted", interval=0)
        assert rec.starts == 2
        assert sorted(lane.task_names()) == ["tenant t/a loop", "tenant t/a watch"]
        # ensure() may stop it from outside (a tenant too slow to install into).
        lane.interrupt(OverBudget(REASON_SLOW, "slow"))
        await aeventually(lambda: len(rec.trips) == 2, what="the second trip", interval=0)
        assert rec.trips[1][0] == REASON_SLOW
        assert 30.0 <= rec.trips[1][1] <= 60.0  # the second pause in a row is longer
        assert not lane.running
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_crashing_child_ends_the_lane_for_the_supervisor() -> None:
    clock = ManualClock()
    budget = TenantBudget(Budgets(), tenant="t/a", clock=clock, rng=random.Random(1))

    async def crash() -> None:
        raise ValueError("bug")

    def start(lane: Lane) -> None:
        lane.spawn("crash", crash())

    lane = Lane(
        name="t/a",
        budget=budget,
        clock=clock,
        start=start,
        on_pause=lambda: None,
        on_trip=lambda over, delay: None,
    )
    with pytest.raises(ExceptionGroup) as group:
        await lane.run()
    assert [type(e) for e in group.value.exceptions] == [ValueError]
    assert not budget.paused()
