"""Stopping asyncio tasks without losing the stopper's own cancellation.

The usual idiom, ``task.cancel()`` then ``with suppress(CancelledError): await task``,
has a hole: if the task running that code is itself cancelled while it awaits TASK, the
``CancelledError`` it receives is its own, and the ``suppress`` swallows it. The caller
then carries on as if nothing had asked it to stop, and whoever cancelled it waits
forever. The controller's work queue did exactly that when its dispatcher was cancelled
in the loop iteration after a wake-up (``tests/unit/test_task_cancel.py`` shows it), so a
controller whose term ended (lost leadership, shutdown) could keep reconciling.

``cancel_and_wait`` waits with ``asyncio.wait``, which never raises the awaited tasks'
``CancelledError`` into the caller: a cancellation of the caller propagates, always.
"""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Future[Any] | None) -> None:
    """Cancel TASKS (None and finished ones are fine) and wait until all have ended.

    A task that ended with an exception other than its cancellation re-raises it here
    (the first one), as awaiting it would have; a cancellation of the caller while it
    waits propagates and is never taken for one of the tasks' own."""
    live = [t for t in tasks if t is not None]
    for task in live:
        task.cancel()
    if live:
        await asyncio.wait(live)
    for task in live:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
