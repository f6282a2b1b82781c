"""The task and signal frame every role runs in.

Why it is shaped this way:

* One asyncio TaskGroup per role. Every long-running task is wrapped by `guarded`, so a
  task that dies is logged with its name and then escalates: the group cancels the
  others, the role cleans up (stops openvpn, removes its firewall, stops serving) and
  the process exits non-zero for its own supervisor (kubelet, systemd, the lab) to
  restart. Nothing is swallowed.
* SIGTERM/SIGINT only set an event; the role's `finally` blocks do the shutdown, so a
  graceful stop and a crash clean up the same way.
* Bad input never crash-loops: certificates, keys and desired state are checked before
  they reach openvpn, a failure becomes a readiness reason and a counted config error,
  and the role waits for the file to change and tries again.
* No module-level state: the clock, the registry and the paths are passed in.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, TypeVar

from agent.event_log import EventLog

T = TypeVar("T")


class Stopping(Exception):
    """Raised inside the role's TaskGroup when SIGTERM/SIGINT asks for a graceful stop."""


async def guarded(name: str, coro: Awaitable[T], *, events: EventLog) -> T:
    """Await CORO; if it raises, log which task died and re-raise (escalate)."""
    try:
        return await coro
    except (asyncio.CancelledError, Stopping):
        raise
    except BaseException as e:
        events.error("task_died", task=name, error=f"{type(e).__name__}: {e}")
        raise


def spawn(
    tg: asyncio.TaskGroup, name: str, coro: Coroutine[Any, Any, Any], *, events: EventLog
) -> asyncio.Task[Any]:
    return tg.create_task(guarded(name, coro, events=events), name=name)


async def wait_for_stop(stop: asyncio.Event) -> None:
    """A TaskGroup member that turns the stop signal into `Stopping`, ending the group."""
    await stop.wait()
    raise Stopping


def install_signal_handlers(stop: asyncio.Event, *, events: EventLog) -> None:
    loop = asyncio.get_running_loop()

    def handler(sig: signal.Signals) -> None:
        events("signal", signal=sig.name, action="graceful shutdown")
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, handler, sig)


async def run_group(
    tasks: Mapping[str, Callable[[], Coroutine[Any, Any, Any]]],
    *,
    stop: asyncio.Event,
    events: EventLog,
) -> None:
    """Run every task in one TaskGroup until STOP is set or one of them dies.

    Returns normally on a graceful stop; re-raises the first real failure.
    """
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(wait_for_stop(stop), name="stop")
            for name, factory in tasks.items():
                spawn(tg, name, factory(), events=events)
    except* Stopping:
        events("stopping")
