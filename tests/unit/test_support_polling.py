"""The shared bounded waits: they return the first truthy value, or fail naming what they
waited for and the last value seen."""

from __future__ import annotations

import itertools

import pytest

from tests.support.polling import WaitTimeout, aeventually, eventually


def test_eventually_returns_the_first_truthy_value() -> None:
    counter = itertools.count()
    assert (
        eventually(lambda: next(counter) >= 3 and "done", what="three polls", interval=0) == "done"
    )


def test_eventually_fails_with_what_and_the_last_value_seen() -> None:
    with pytest.raises(WaitTimeout, match=r"waiting for the moon; last seen: \[\]") as info:
        eventually(list, what="the moon", timeout=0.05, interval=0.01, diag=lambda: "diag text")
    assert "diag text" in str(info.value)


async def test_aeventually_awaits_an_async_probe() -> None:
    counter = itertools.count()

    async def probe() -> int:
        return max(0, next(counter) - 2)

    assert await aeventually(probe, what="the third poll", interval=0) == 1


async def test_aeventually_fails_at_the_deadline_with_the_last_value() -> None:
    with pytest.raises(AssertionError, match="waiting for nothing; last seen: 0"):
        await aeventually(lambda: 0, what="nothing", timeout=0.05, interval=0.01)
