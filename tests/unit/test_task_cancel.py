"""Stopping tasks never swallows the stopper's own cancellation (telemetry/tasks.py).

The work queue's dispatcher used to cancel its sleeper and waker and await them under
``suppress(CancelledError)``: cancelled in the loop iteration after a wake-up, it took
its own cancellation for theirs and kept dispatching, and the controller's shutdown (and
a term that lost leadership) waited for it forever. CI saw that as a 300 s hang.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from telemetry.tasks import cancel_and_wait
from vpnctl.controller.queue import WorkQueue
from vpnctl.kube.clock import SystemClock


async def _noop(key: str) -> None:
    return None


async def _ended(task: asyncio.Task[None]) -> bool:
    """Whether TASK ends once cancelled; a task that swallowed it is cancelled again so
    the test cleans up either way."""
    done, _ = await asyncio.wait({task}, timeout=5)
    if not done:
        task.cancel()
        await asyncio.wait({task}, timeout=5)
    return bool(done)


@pytest.mark.parametrize("steps", range(16))
async def test_a_work_queue_cancelled_right_after_a_wake_up_stops(steps: int) -> None:
    queue = WorkQueue(_noop, clock=SystemClock(), rng=random.Random(1))
    queue.add("later", delay=3600)  # the dispatcher sleeps on it, or a wake-up
    dispatcher = asyncio.create_task(queue.run())
    for _ in range(5):
        await asyncio.sleep(0)  # yields to the loop: the dispatcher is asleep
    queue.add("now")  # wakes it
    for _ in range(steps):
        await asyncio.sleep(0)  # each iteration a different point of its wake-up
    dispatcher.cancel()
    assert await _ended(dispatcher), f"the dispatcher swallowed a cancel {steps} steps in"
    assert dispatcher.cancelled()


async def test_cancel_and_wait_propagates_the_callers_own_cancellation() -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await release.wait()  # slow to stop: the caller waits for it
            raise

    child = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    stopper = asyncio.create_task(cancel_and_wait(child))
    await asyncio.sleep(0)
    stopper.cancel()  # the stopper is cancelled while it waits for the child
    assert await _ended(stopper)
    assert stopper.cancelled()
    release.set()
    await asyncio.wait({child})
    assert child.cancelled()


async def test_cancel_and_wait_re_raises_what_a_task_died_of() -> None:
    async def dies() -> None:
        raise RuntimeError("boom")

    dead = asyncio.create_task(dies())
    await asyncio.wait({dead})
    with pytest.raises(RuntimeError, match="boom"):
        await cancel_and_wait(dead, None)


async def test_cancel_and_wait_with_nothing_returns() -> None:
    await cancel_and_wait()
    await cancel_and_wait(None)
