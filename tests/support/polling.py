"""Bounded waits on something a test can observe, instead of fixed sleeps.

``eventually`` (blocking) and ``aeventually`` (asyncio) poll a probe until it returns
something truthy and hand that value back. At the deadline they fail with ``what`` and the
last value the probe returned, so a timeout says what was seen, not only what was awaited.

``aeventually`` accepts a probe that returns a value or an awaitable. With ``interval=0`` it
only yields to the event loop between probes, which is what tests on a manual clock want:
the awaited thing needs other tasks to run, not time to pass.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The probe stayed falsy until the deadline."""


def _failure(
    what: str, timeout: float, last: object, diag: Callable[[], str] | None
) -> WaitTimeout:
    msg = f"timed out after {timeout}s waiting for {what}; last seen: {last!r}"
    if diag is not None:
        msg += "\n" + diag()
    return WaitTimeout(msg)


def eventually(
    probe: Callable[[], T | None],
    *,
    what: str,
    timeout: float = 10.0,
    interval: float = 0.05,
    diag: Callable[[], str] | None = None,
) -> T:
    """Call PROBE every INTERVAL seconds until it returns something truthy; return it."""
    deadline = time.monotonic() + timeout
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise _failure(what, timeout, last, diag)
        time.sleep(interval)


@overload
async def aeventually(
    probe: Callable[[], Awaitable[T | None]],
    *,
    what: str,
    timeout: float = ...,
    interval: float = ...,
    diag: Callable[[], str] | None = ...,
) -> T: ...


@overload
async def aeventually(
    probe: Callable[[], T | None],
    *,
    what: str,
    timeout: float = ...,
    interval: float = ...,
    diag: Callable[[], str] | None = ...,
) -> T: ...


async def aeventually(
    probe: Callable[[], object],
    *,
    what: str,
    timeout: float = 10.0,
    interval: float = 0.05,
    diag: Callable[[], str] | None = None,
) -> object:
    """Await PROBE (sync or async) every INTERVAL seconds until truthy; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        last = await result if inspect.isawaitable(result) else result
        if last:
            return last
        if time.monotonic() > deadline:
            raise _failure(what, timeout, last, diag)
        await asyncio.sleep(interval)
