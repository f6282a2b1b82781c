"""Retry the transient tier of API errors, and nothing else.

Transport trouble and 429 are retried with capped, jittered exponential backoff (a 429's
Retry-After wins over our own guess); 409 Conflict is retried only when the caller says
the operation re-reads before it writes (``conflicts=True``): retrying a stale PUT as is
would only fail again. Everything else (404, 403, 422, ...) is permanent for this call
and propagates at once, so the reconciler above can turn it into a condition.

Each retry is logged the way kopf does it, one line per failed attempt:
``attempt #2/4 failed; will retry in 1.5s: <what went wrong>``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from vpnctl.kube.clock import Clock
from vpnctl.kube.errors import ApiError, Conflict, TooManyRequests, TransportError

T = TypeVar("T")

_log = logging.getLogger(__name__)


def backoff(*, attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Seconds before retry number ``attempt`` (1 = after the first failure): doubling
    from ``base``, jittered to [50 %, 100 %] of that, never above ``cap``."""
    ceiling = min(cap, base * (2.0 ** max(0, attempt - 1)))
    return ceiling * rng.uniform(0.5, 1.0)


def is_retryable(exc: BaseException, *, conflicts: bool) -> bool:
    if isinstance(exc, TransportError | TooManyRequests):
        return True
    return conflicts and isinstance(exc, Conflict)


async def with_retries(
    fn: Callable[[], Awaitable[T]],
    *,
    rng: random.Random,
    clock: Clock,
    attempts: int = 4,
    base: float = 0.5,
    cap: float = 8.0,
    conflicts: bool = False,
    max_retry_after: float = 60.0,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger] = _log,
) -> T:
    """Await ``fn()`` up to ``attempts`` times; return its first result.

    ``fn`` is called anew for every attempt, so it must do the whole operation (for an
    update: read, modify, write). A 429's Retry-After is honoured (capped at
    ``max_retry_after``, so a confused server can't park us for an hour). The last error
    propagates unchanged once the attempts are used up.
    """
    if attempts < 1:
        raise ValueError(f"with_retries: attempts must be >= 1, got {attempts}")
    attempt = 1
    while True:
        try:
            return await fn()
        except ApiError as exc:
            if attempt >= attempts or not is_retryable(exc, conflicts=conflicts):
                raise
            delay = backoff(attempt=attempt, base=base, cap=cap, rng=rng)
            if isinstance(exc, TooManyRequests) and exc.retry_after is not None:
                delay = min(max_retry_after, exc.retry_after)
            logger.warning(
                "attempt #%d/%d failed; will retry in %.1fs: %s", attempt, attempts, delay, exc
            )
            await clock.sleep(delay)
            attempt += 1
