"""The per-key work queue: one key at a time, keys in parallel, coalescing, backoff."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable, Iterable

import pytest

from vpnctl.controller.queue import Outcome, WorkQueue
from vpnctl.kube import ApiError, ManualClock, SystemClock
from vpnctl.kube.retry import backoff


async def settle(rounds: int = 20) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def running(queue: WorkQueue[str]) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(queue.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Recorder:
    """A handler that logs calls and can be held open per key."""

    def __init__(
        self,
        outcome: Callable[[str], Outcome | None] = lambda _: None,
        *,
        gated: Iterable[str] = (),
    ) -> None:
        self.calls: list[str] = []
        self.active: set[str] = set()
        self.max_parallel = 0
        self.overlap = False
        self.gates: dict[str, asyncio.Event] = {key: asyncio.Event() for key in gated}
        self.outcome = outcome

    async def __call__(self, key: str) -> Outcome | None:
        if key in self.active:
            self.overlap = True
        self.active.add(key)
        self.max_parallel = max(self.max_parallel, len(self.active))
        self.calls.append(key)
        try:
            gate = self.gates.get(key)
            if gate is not None:
                await gate.wait()
            return self.outcome(key)
        finally:
            self.active.discard(key)


def queue_for(handler: Recorder) -> WorkQueue[str]:
    return WorkQueue(handler, clock=SystemClock(), rng=random.Random(1))


async def test_repeated_adds_of_a_waiting_key_become_one_run() -> None:
    handler = Recorder()
    queue = queue_for(handler)
    for _ in range(5):
        queue.add("a")
    queue.add("b")
    assert len(queue) == 2
    async with running(queue):
        await settle()
    assert sorted(handler.calls) == ["a", "b"]
    assert queue.active_workers == 0  # idle workers exit


async def test_a_key_is_never_handled_twice_at_once_and_changes_meanwhile_are_kept() -> None:
    handler = Recorder(gated=["a"])
    queue = queue_for(handler)
    async with running(queue):
        queue.add("a")
        await settle()
        assert handler.calls == ["a"]
        for _ in range(3):  # events while it runs
            queue.add("a")
        await settle()
        assert handler.calls == ["a"]  # not concurrently
        handler.gates["a"].set()
        await settle()
    assert handler.calls == ["a", "a"]  # once more, for everything that came meanwhile
    assert not handler.overlap


async def test_different_keys_run_in_parallel_up_to_the_worker_limit() -> None:
    keys = [f"k{i}" for i in range(10)]
    handler = Recorder(gated=keys)
    queue: WorkQueue[str] = WorkQueue(handler, clock=SystemClock(), rng=random.Random(1), workers=3)
    async with running(queue):
        for key in keys:
            queue.add(key)
        await settle()
        assert len(handler.active) == 3
        assert queue.depth() == 7
        for key in keys:
            handler.gates[key].set()
        await settle(100)
    assert sorted(handler.calls) == sorted(keys)
    assert handler.max_parallel == 3
    assert queue.active_workers == 0


async def test_failures_back_off_per_key_with_jitter_and_success_resets() -> None:
    clock = ManualClock()
    failing = {"bad"}

    def outcome(key: str) -> Outcome | None:
        if key in failing:
            raise RuntimeError(f"{key} failed")
        return None

    handler = Recorder(outcome)
    retries: list[None] = []
    waits: list[float] = []
    queue: WorkQueue[str] = WorkQueue(
        handler, clock=clock, rng=random.Random(5), backoff_base=1.0, backoff_cap=10.0,
        on_retry=lambda: retries.append(None), on_taken=waits.append,
    )  # fmt: skip
    expected = random.Random(5)
    delays = [backoff(attempt=n, base=1.0, cap=10.0, rng=expected) for n in (1, 2, 3)]
    assert 0.5 <= delays[0] <= 1.0
    assert 1.0 <= delays[1] <= 2.0
    async with running(queue):
        queue.add("bad")
        queue.add("good")
        await settle()
        assert sorted(handler.calls) == ["bad", "good"]  # an error kills nothing
        assert queue.failures("bad") == 1
        for n, delay in enumerate(delays, start=2):
            clock.advance(delay - 0.01)
            await settle()
            assert handler.calls.count("bad") == n - 1  # not before its backoff
            clock.advance(0.02)
            await settle()
            assert handler.calls.count("bad") == n
        assert queue.failures("bad") == 4  # the first run and three retries
        assert len(retries) == 4  # what vpnctl_workqueue_retries_total counts
        assert len(waits) == len(handler.calls)  # one observation per key taken
        assert all(0.0 <= w <= 0.02 for w in waits)  # the manual clock ran on past due
        failing.clear()
        clock.advance(10.0)
        await settle()
        assert queue.failures("bad") == 0
        assert len(queue) == 0
    assert handler.calls.count("good") == 1


async def test_outcomes_requeue_later_or_retry_with_backoff() -> None:
    clock = ManualClock()
    handler = Recorder(
        lambda key: Outcome(requeue_after=30.0) if key == "renew" else Outcome(retry=True)
    )
    queue: WorkQueue[str] = WorkQueue(
        handler, clock=clock, rng=random.Random(1), backoff_base=2.0, backoff_cap=4.0
    )
    async with running(queue):
        queue.add("renew")
        queue.add("unreachable")
        await settle()
        assert queue.scheduled() == 2
        assert queue.depth() == 0
        clock.advance(4.0)  # at most the cap
        await settle()
        assert handler.calls.count("unreachable") == 2
        assert handler.calls.count("renew") == 1
        # An event for a scheduled key brings it forward; the later time is dropped.
        queue.add("renew")
        await settle()
        assert handler.calls.count("renew") == 2
        clock.advance(29.0)
        await settle()
        assert handler.calls.count("renew") == 2
        clock.advance(1.5)
        await settle()
        assert handler.calls.count("renew") == 3


async def test_drain_lets_running_handlers_finish_and_takes_no_more() -> None:
    handler = Recorder(gated=["a"])
    queue = queue_for(handler)
    async with running(queue):
        queue.add("a")
        await settle()
        queue.add("b", delay=0.0)
        draining = asyncio.create_task(queue.drain(timeout=5.0))
        await settle()
        assert not draining.done()
        handler.gates["a"].set()
        assert await draining is True
        queue.add("c")
        await settle()
    assert handler.calls == ["a"]


async def test_drain_gives_up_after_its_timeout() -> None:
    handler = Recorder(gated=["stuck"])
    queue = queue_for(handler)
    async with running(queue):
        queue.add("stuck")
        await settle()
        assert await queue.drain(timeout=0.05) is False


def test_a_queue_needs_a_worker() -> None:
    with pytest.raises(ValueError, match="at least one worker"):
        WorkQueue(Recorder(), clock=SystemClock(), rng=random.Random(1), workers=0)


async def test_a_failure_logs_a_trace_only_for_our_own_bugs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An apiserver's refusal (e.g. a namespace being terminated) is logged with its
    message; only an unexpected exception, a bug of ours, brings its traceback."""

    def outcome(key: str) -> Outcome | None:
        if key == "refused":
            raise ApiError("namespace is being terminated", status=403, reason="Forbidden")
        raise RuntimeError("a bug")

    queue = queue_for(Recorder(outcome))
    with caplog.at_level(logging.ERROR, logger="vpnctl.controller.queue"):
        async with running(queue):
            queue.add("refused")
            queue.add("bug")
            await settle()
    failed = {
        str(r.args[1]): r  # type: ignore[index]
        for r in caplog.records
        if r.getMessage().startswith("event=reconcile_failed")
    }
    assert set(failed) == {"refused", "bug"}
    assert failed["refused"].exc_info is None
    assert "being terminated" in failed["refused"].getMessage()
    assert failed["bug"].exc_info is not None
