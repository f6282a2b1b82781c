"""The agent's one clock, passed in to every part that reads time or waits.

`AgentClock` is a Protocol of three calls, so a test passes a manual clock (any object
with these methods, e.g. one whose `sleep` returns only when the test advances time)
and drives watchdogs, retries and polls without sleeping. The agent itself runs on
`SystemAgentClock`.

* `now()` is wall time, timezone-aware UTC: certificate validity, renewal deadlines.
* `monotonic()` never goes back: intervals, deadlines, "dead for N seconds".
* `sleep()` is every pause between two looks at the world.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Final, Protocol


class AgentClock(Protocol):
    def now(self) -> datetime:
        """Wall time, timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return after SECONDS (at once for zero or less)."""
        ...


class SystemAgentClock:
    """The real clock: `datetime.now(UTC)`, `time.monotonic()`, `asyncio.sleep()`."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


SYSTEM_CLOCK: Final[AgentClock] = SystemAgentClock()
