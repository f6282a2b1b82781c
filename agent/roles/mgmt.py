"""Keep one management-interface connection to the local openvpn, forever.

openvpn serves exactly one management client at a time, and it goes away whenever openvpn
restarts. So a role never holds a `ManagementClient` directly: `ManagementLink.run`
connects, runs the role's `on_connect` (enable state events, read the current state),
feeds every notification to `on_event`, and when the socket closes or speaks nonsense it
closes, waits a moment and connects again. Other tasks use `link.client` only while
`link.usable` is true, and treat any ManagementError as "not now".

`usable_since` / `unusable_since` let the client roles notice a management interface
that stays dead while openvpn runs (a wedged process): they restart it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Literal, Protocol

from agent.agent_clock import SYSTEM_CLOCK, AgentClock
from agent.event_log import EventLog
from agent.openvpn.management import (
    ClientStatus,
    Event,
    ManagementClient,
    ManagementError,
    StateEvent,
)

# What can go wrong talking to a socket that may be gone, half-open or full of garbage.
LINK_ERRORS: tuple[type[BaseException], ...] = (ManagementError, OSError, TimeoutError, EOFError)


class Management(Protocol):
    """The part of `ManagementClient` the roles use (tests pass a fake of this)."""

    @property
    def connected(self) -> bool: ...

    async def connect(self, *, timeout: float) -> None: ...

    async def close(self) -> None: ...

    async def status(self) -> list[ClientStatus]: ...

    async def state(self) -> StateEvent: ...

    async def enable_state_events(self) -> None: ...

    async def client_kill(self, common_name: str) -> bool: ...

    async def client_auth(self, cid: int, kid: int) -> None: ...

    async def client_deny(self, cid: int, kid: int, reason: str) -> None: ...

    async def signal(self, sig: Literal["SIGHUP", "SIGTERM", "SIGUSR1", "SIGUSR2"]) -> None: ...

    def events(self) -> AsyncIterator[Event]: ...


def real_management(path: str) -> Management:
    return ManagementClient(path, command_timeout=3.0)


class ManagementLink:
    def __init__(
        self,
        *,
        path: str,
        events: EventLog,
        factory: Callable[[str], Management] = real_management,
        on_connect: Callable[[Management], Awaitable[None]] | None = None,
        on_event: Callable[[Event], None] | None = None,
        retry_interval: float = 0.5,
        connect_timeout: float = 2.0,
        clock: AgentClock = SYSTEM_CLOCK,
    ) -> None:
        self._path = path
        self._events = events
        self._factory = factory
        self._on_connect = on_connect
        self._on_event = on_event
        self._retry = retry_interval
        self._connect_timeout = connect_timeout
        self._clock = clock
        self._client: Management | None = None
        self.usable_since: float | None = None
        self.unusable_since: float = clock.monotonic()
        self.last_error: str | None = "not connected yet"
        self.connects = 0

    @property
    def usable(self) -> bool:
        c = self._client
        return c is not None and self.usable_since is not None and c.connected

    @property
    def client(self) -> Management | None:
        """The connected client, or None. Commands on it may still fail: catch LINK_ERRORS."""
        return self._client if self.usable else None

    def unusable_for(self) -> float:
        """Seconds since the link was last usable (0 while usable)."""
        return 0.0 if self.usable else self._clock.monotonic() - self.unusable_since

    def restart_grace(self) -> None:
        """A new openvpn process just started: count its unusable time from now."""
        if not self.usable:
            self.unusable_since = self._clock.monotonic()

    def _mark_unusable(self, error: str) -> None:
        if self.usable_since is not None:
            self.unusable_since = self._clock.monotonic()
        self.usable_since = None
        self.last_error = error

    async def run(self) -> None:
        logged_error: str | None = None
        while True:
            client = self._factory(self._path)
            try:
                await client.connect(timeout=self._connect_timeout)
                self._client = client
                if self._on_connect is not None:
                    await self._on_connect(client)
                self.usable_since = self._clock.monotonic()
                self.last_error = None
                self.connects += 1
                logged_error = None
                self._events("management_connected", socket=self._path)
                async for event in client.events():
                    if self._on_event is not None:
                        self._on_event(event)
                self._mark_unusable("management socket closed")
                self._events("management_disconnected", socket=self._path)
            except LINK_ERRORS as e:
                error = f"{type(e).__name__}: {e}"
                was_usable = self.usable_since is not None
                self._mark_unusable(error)
                # One line per new problem: a missing socket during a restart would
                # otherwise log twice a second.
                if was_usable or error != logged_error:
                    self._events.warning("management_unusable", socket=self._path, error=error)
                    logged_error = error
            finally:
                self._client = None
                with contextlib.suppress(*LINK_ERRORS):
                    await client.close()
            await self._clock.sleep(self._retry)
