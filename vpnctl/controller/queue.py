"""A per-key work queue in kopf's model: events only enqueue keys, workers reconcile them.

Why not one task per event: a burst of watch events about one tenant (its Tunnel status,
three Secrets, a Deployment...) must become *one* reconcile of the latest state, never
three overlapping ones racing each other's writes. So:

- ``add(key)`` only records that the key needs attention, at a time (now, or later);
  a key already waiting keeps the earlier of the two times (coalescing).
- One key is handled at a time. A key added while its handler runs is remembered and
  handled again right after, so no change is lost and none is handled concurrently.
- Different keys run in parallel, at most ``workers`` at once. Workers are started on
  demand and exit when nothing is due, so an idle controller has no idle tasks.
- The handler says what happens next: ``Outcome(requeue_after=...)`` for a delayed
  requeue (renewal time, resync), ``Outcome(retry=True)`` or an exception for a retry
  with per-key exponential backoff and jitter. Success resets the key's backoff.
- A handler's exception is logged with the key and retried; it never kills a worker or
  the queue. Cancellation (shutdown, lost leadership) is not an error and is not retried.

Time comes from the Clock passed in, so the backoff schedule is testable without sleeping.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from telemetry.tasks import cancel_and_wait
from vpnctl.kube import ApiError, Clock
from vpnctl.kube.retry import backoff

_log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """What a handler wants next for its key.

    ``retry``: something was not right yet (an unreachable tenant, a temporary error);
    handle the key again after the key's next backoff delay. ``requeue_after``: handle it
    again after this many seconds even if nothing happens (the earlier wins when both).
    """

    requeue_after: float | None = None
    retry: bool = False


Handler = Callable[[K], Awaitable[Outcome | None]]


class WorkQueue(Generic[K]):
    def __init__(
        self,
        handler: Handler[K],
        *,
        clock: Clock,
        rng: random.Random,
        workers: int = 8,
        backoff_base: float = 1.0,
        backoff_cap: float = 300.0,
        name: str = "tenants",
        on_retry: Callable[[], None] | None = None,
        on_taken: Callable[[float], None] | None = None,
    ) -> None:
        """``on_retry``: called for each retry scheduled (a failure backed off);
        ``on_taken(seconds)``: called when a worker takes a key, with how long it had been
        due. Both feed the controller's metrics; the queue itself knows no Prometheus."""
        if workers < 1:
            raise ValueError(f"WorkQueue needs at least one worker, got {workers}")
        self._handler = handler
        self._clock = clock
        self._rng = rng
        self._max_workers = workers
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._name = name
        self._on_retry = on_retry
        self._on_taken = on_taken
        # Waiting keys: key -> due time; the heap holds (due, seq, key), stale entries
        # (a key since moved earlier, taken, or dropped) are skipped when popped.
        self._due: dict[K, float] = {}
        self._heap: list[tuple[float, int, K]] = []
        self._seq = itertools.count()
        self._running: set[K] = set()
        # Keys added while running: handled again after, at the earliest time asked.
        self._again: dict[K, float] = {}
        self._failures: dict[K, int] = {}
        self._errors: dict[K, Exception] = {}
        self._workers: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self.handled = 0

    # --- producers ---------------------------------------------------------------------

    def add(self, key: K, *, delay: float = 0.0) -> None:
        """Handle ``key`` after ``delay`` seconds (or sooner, if already due sooner)."""
        if self._closed:
            return
        due = self._clock.monotonic() + max(0.0, delay)
        if key in self._running:
            self._again[key] = min(due, self._again.get(key, due))
            return
        current = self._due.get(key)
        if current is not None and current <= due:
            return
        self._due[key] = due
        heapq.heappush(self._heap, (due, next(self._seq), key))
        self._wake.set()

    def failures(self, key: K) -> int:
        """Consecutive failed runs of ``key`` (0 after a success)."""
        return self._failures.get(key, 0)

    def next_backoff(self, key: K) -> float:
        """The delay a retry of ``key`` would get now."""
        return backoff(
            attempt=self._failures.get(key, 0) + 1,
            base=self._backoff_base,
            cap=self._backoff_cap,
            rng=self._rng,
        )

    # --- gauges ---------------------------------------------------------------------------

    def depth(self) -> int:
        """Keys due now and waiting for a worker."""
        now = self._clock.monotonic()
        return sum(1 for due in self._due.values() if due <= now)

    def scheduled(self) -> int:
        """Keys waiting for a later time."""
        now = self._clock.monotonic()
        return sum(1 for due in self._due.values() if due > now)

    def __len__(self) -> int:
        return len(self._due)

    @property
    def running(self) -> frozenset[K]:
        return frozenset(self._running)

    @property
    def active_workers(self) -> int:
        return len(self._workers)

    # --- running ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Dispatch due keys to workers until cancelled; cancels the workers on the way out."""
        try:
            while True:
                self._wake.clear()
                self._spawn_workers()
                wait = self._until_next_due()
                if wait is None or wait <= 0:
                    # Nothing waiting, or due keys already handed to workers (or all
                    # workers busy): a new key or a worker's exit wakes us.
                    await self._wake.wait()
                else:
                    await self._sleep_or_wake(wait)
        finally:
            await self._cancel_workers()

    async def drain(self, *, timeout: float) -> bool:
        """Stop taking keys; wait up to ``timeout`` s for running handlers. True if they
        all finished. Used on graceful shutdown before the lease is released."""
        self._closed = True
        self._due.clear()
        self._heap.clear()
        self._again.clear()
        if not self._running:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    # --- internals ----------------------------------------------------------------------------

    def _until_next_due(self) -> float | None:
        while self._heap:
            due, _, key = self._heap[0]
            if self._due.get(key) != due:
                heapq.heappop(self._heap)  # stale entry
                continue
            return max(0.0, due - self._clock.monotonic())
        return None

    async def _sleep_or_wake(self, seconds: float) -> None:
        sleeper = asyncio.ensure_future(self._clock.sleep(seconds))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(sleeper, waker)

    def _take(self) -> K | None:
        """The next due key, removed from the waiting set; None if none is due."""
        now = self._clock.monotonic()
        while self._heap:
            due, _, key = self._heap[0]
            if self._due.get(key) != due:
                heapq.heappop(self._heap)
                continue
            if due > now:
                return None
            heapq.heappop(self._heap)
            del self._due[key]
            if self._on_taken is not None:
                self._on_taken(now - due)
            return key
        return None

    def _spawn_workers(self) -> None:
        due_now = self.depth()
        while due_now > 0 and len(self._workers) < self._max_workers:
            task = asyncio.create_task(self._worker(), name=f"{self._name}-worker")
            self._workers.add(task)
            task.add_done_callback(self._worker_done)
            due_now -= 1

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        self._workers.discard(task)
        if not task.cancelled() and task.exception() is not None:  # a bug in the queue itself
            _log.error("event=queue_worker_crashed queue=%s error=%r", self._name, task.exception())
        self._wake.set()

    async def _worker(self) -> None:
        while (key := self._take()) is not None:
            self._running.add(key)
            self._idle.clear()
            try:
                outcome = await self._handle(key)
            finally:
                self._running.discard(key)
                if not self._running:
                    self._idle.set()
            self._after(key, outcome)
        # Nothing due: exit. The dispatcher starts a new worker when there is work again.

    async def _handle(self, key: K) -> Outcome:
        started = self._clock.monotonic()
        try:
            outcome = await self._handler(key) or Outcome()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            outcome = Outcome(retry=True)
            self._errors[key] = exc
        finally:
            self.handled += 1
        _log.debug(
            "event=key_handled queue=%s key=%s seconds=%.3f retry=%s",
            self._name,
            key,
            self._clock.monotonic() - started,
            outcome.retry,
        )
        return outcome

    def _after(self, key: K, outcome: Outcome) -> None:
        delays: list[float] = []
        error = self._errors.pop(key, None)
        if outcome.retry:
            delay = self.next_backoff(key)
            delays.append(delay)
            self._failures[key] = self._failures.get(key, 0) + 1
            if self._on_retry is not None:
                self._on_retry()
            if error is not None:
                _log.error(
                    "event=reconcile_failed queue=%s key=%s attempt=%d retry_in=%.1fs error=%r",
                    self._name,
                    key,
                    self._failures[key],
                    delay,
                    f"{type(error).__name__}: {error}",
                    # An apiserver's answer or a transport error says it all; a trace
                    # is for our own bugs.
                    exc_info=None if isinstance(error, ApiError | OSError | ValueError) else error,
                )
        else:
            self._failures.pop(key, None)
        if outcome.requeue_after is not None:
            delays.append(outcome.requeue_after)
        again = self._again.pop(key, None)
        if again is not None:
            delays.append(max(0.0, again - self._clock.monotonic()))
        if delays:
            self.add(key, delay=min(delays))
        self._wake.set()

    async def _cancel_workers(self) -> None:
        await cancel_and_wait(*self._workers)
