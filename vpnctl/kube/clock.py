"""Time, passed in: watch liveness, lease expiry and retry backoff all depend on it.

``SystemClock`` is the real one. ``ManualClock`` only moves when told to (or when
someone sleeps on it), so tests of "healthy() turns false after 60 s of silence" or
"wait the Retry-After" take no wall time and can't flake.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back; for intervals and deadlines."""
        ...

    def now(self) -> dt.datetime:
        """Wall time, timezone-aware UTC; for timestamps written to the API."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ManualClock:
    """A clock for tests. ``sleep()`` blocks until ``advance()`` moves time past its
    deadline; with ``autoadvance=True`` a sleeper moves time itself (handy when only
    one task sleeps). ``sleeps`` records every requested duration."""

    def __init__(
        self,
        *,
        start: float = 1000.0,
        wall: dt.datetime | None = None,
        autoadvance: bool = False,
    ) -> None:
        self._now = start
        self._start = start
        self._wall = wall or dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
        self._autoadvance = autoadvance
        self._waiters: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self._now

    def now(self) -> dt.datetime:
        return self._wall + dt.timedelta(seconds=self._now - self._start)

    async def sleep(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.sleeps.append(seconds)
        if self._autoadvance:
            self.advance(seconds)
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (self._now + seconds, next(self._seq), future))
        if seconds == 0:
            self._wake()
        await future

    def advance(self, seconds: float) -> None:
        self._now += max(0.0, seconds)
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._waiters[0][0] <= self._now:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)
