"""asyncio client for openvpn's management interface over a unix socket.

Why our own: the agent drives openvpn only through this socket (state, status, kicking
clients, forcing a reconnect), and it must keep working when the other end misbehaves.
The protocol (management-notes.txt in openvpn's docs) is line based:

- a command gets either one `SUCCESS: ...` / `ERROR: ...` line, or data lines ended by `END`;
- real-time notifications (`>STATE:`, `>BYTECOUNT:`, `>CLIENT:`, `>INFO:` ...) start with
  `>` and may arrive at any time, also between the lines of a reply.

One reader task owns the socket's read side. It routes `>` lines to the event queue and the
rest to the one pending command (commands are serialised by a lock). It never raises: lines
that are not UTF-8, unknown notifications and rows it cannot parse are logged and skipped.
When the socket closes, the pending command fails with ManagementError("management socket
closed"), `connected` turns False, iterators from events() end, and connect() may be called
again. A command that times out also drops the connection: a late reply could otherwise be
taken as the answer to the next command.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import IPv4Address
from typing import Literal

from agent.agent_clock import SYSTEM_CLOCK, AgentClock
from agent.openvpn.client_auth import ClientAuthRequest, ClientBlockReader
from agent.openvpn.config import ConfigError, validate_common_name
from telemetry.tasks import cancel_and_wait

_log = logging.getLogger(__name__)

_LINE_LIMIT = 1 << 20  # a status line longer than this is garbage, not data
_EVENT_QUEUE_SIZE = 1024
_SIGNALS = ("SIGHUP", "SIGTERM", "SIGUSR1", "SIGUSR2")

# Column names of `status 3` CLIENT_LIST rows (openvpn 2.4 .. 2.6); a HEADER line in the
# reply overrides this, so added columns in later versions do not shift our fields.
_DEFAULT_CLIENT_LIST_HEADER = (
    "Common Name",
    "Real Address",
    "Virtual Address",
    "Virtual IPv6 Address",
    "Bytes Received",
    "Bytes Sent",
    "Connected Since",
    "Connected Since (time_t)",
    "Username",
    "Client ID",
    "Peer ID",
    "Data Channel Cipher",
)


_UNSAFE_REASON = re.compile(r"[^A-Za-z0-9 _.,:/=()+-]")


def _uint(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ManagementError(f"client and key IDs are whole numbers >= 0, got {value!r}")
    return value


class ManagementError(Exception):
    """The management interface refused a command, timed out, or the socket is gone."""


@dataclass(frozen=True)
class ClientStatus:
    common_name: str
    real_address: str
    virtual_address: IPv4Address | None
    bytes_received: int
    bytes_sent: int
    connected_since: datetime
    client_id: int | None


@dataclass(frozen=True)
class StateEvent:
    time: datetime
    name: str
    description: str
    local_ip: str | None
    remote_ip: str | None


@dataclass(frozen=True)
class ByteCount:
    bytes_in: int
    bytes_out: int
    client_id: int | None  # set on a server (>BYTECOUNT_CLI), None on a client


Event = StateEvent | ByteCount | ClientAuthRequest


def parse_state_line(line: str) -> StateEvent:
    """Parse a `state` reply line or a `>STATE:` notification; ValueError if malformed."""
    payload = line.removeprefix(">STATE:")
    fields = payload.split(",")
    if len(fields) < 2 or not fields[1]:
        raise ValueError(f"state line {line!r} has no state name")
    try:
        when = datetime.fromtimestamp(int(fields[0]), tz=UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise ValueError(f"state line {line!r} does not start with a unix time") from exc

    def field(i: int) -> str | None:
        return fields[i] if len(fields) > i and fields[i] else None

    return StateEvent(
        time=when,
        name=fields[1],
        description=field(2) or "",
        local_ip=field(3),
        remote_ip=field(4),
    )


def parse_bytecount(kind: str, payload: str) -> ByteCount:
    """Parse the payload of `>BYTECOUNT:in,out` or `>BYTECOUNT_CLI:cid,in,out`."""
    fields = payload.split(",")
    try:
        if kind == "BYTECOUNT" and len(fields) == 2:
            return ByteCount(bytes_in=int(fields[0]), bytes_out=int(fields[1]), client_id=None)
        if kind == "BYTECOUNT_CLI" and len(fields) == 3:
            return ByteCount(
                bytes_in=int(fields[1]), bytes_out=int(fields[2]), client_id=int(fields[0])
            )
    except ValueError:
        pass
    raise ValueError(f">{kind} payload {payload!r} is malformed")


def _parse_client_row(cols: dict[str, str]) -> ClientStatus:
    cn = cols["Common Name"]
    if not cn:
        raise ValueError("empty common name")
    vaddr = cols.get("Virtual Address", "")
    since_t = cols.get("Connected Since (time_t)", "")
    if since_t:
        since = datetime.fromtimestamp(int(since_t), tz=UTC)
    else:  # openvpn prints local time here; only used when time_t is missing
        since = datetime.strptime(cols["Connected Since"], "%Y-%m-%d %H:%M:%S").astimezone(UTC)
    cid = cols.get("Client ID", "")
    return ClientStatus(
        common_name=cn,
        real_address=cols["Real Address"],
        virtual_address=IPv4Address(vaddr) if vaddr else None,
        bytes_received=int(cols["Bytes Received"]),
        bytes_sent=int(cols["Bytes Sent"]),
        connected_since=since,
        client_id=int(cid) if cid else None,
    )


def parse_status3(lines: Iterable[str]) -> list[ClientStatus]:
    """The CLIENT_LIST rows of a `status 3` reply (tab separated). Malformed rows are logged
    and skipped: one odd client must not hide the others."""
    header: tuple[str, ...] = _DEFAULT_CLIENT_LIST_HEADER
    clients: list[ClientStatus] = []
    for line in lines:
        parts = line.split("\t")
        if parts[:2] == ["HEADER", "CLIENT_LIST"]:
            header = tuple(parts[2:])
            continue
        if parts[0] != "CLIENT_LIST":
            continue
        values = parts[1:]
        if len(values) < len(header):
            _log.warning(
                "event=status-row-skipped reason=too-few-columns got=%d want=%d row=%r",
                len(values),
                len(header),
                line[:200],
            )
            continue
        try:
            clients.append(_parse_client_row(dict(zip(header, values, strict=False))))
        except (KeyError, ValueError, OverflowError, OSError) as exc:
            _log.warning("event=status-row-skipped reason=%r row=%r", str(exc)[:200], line[:200])
    return clients


class ManagementClient:
    def __init__(
        self, path: str, *, command_timeout: float = 5.0, clock: AgentClock = SYSTEM_CLOCK
    ) -> None:
        self.path = path
        self._clock = clock
        self._command_timeout = command_timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._pending: asyncio.Future[list[str]] | None = None
        self._reply: list[str] = []
        self._banner: asyncio.Event = asyncio.Event()
        self._events: asyncio.Queue[Event | None] = asyncio.Queue(_EVENT_QUEUE_SIZE)
        self._client_blocks = ClientBlockReader()
        self._connected = False

    @property
    def connected(self) -> bool:
        return self._connected

    # --- connection --------------------------------------------------------------------

    async def connect(self, *, timeout: float) -> None:
        """Connect, retrying until the socket accepts, and wait for openvpn's >INFO banner."""
        if self._connected:
            return
        clock = self._clock
        deadline = clock.monotonic() + timeout
        last_error: str = "no attempt"
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(self.path, limit=_LINE_LIMIT)
                break
            except OSError as exc:
                last_error = f"{type(exc).__name__}: {exc.strerror or exc}"
            if clock.monotonic() >= deadline:
                raise ManagementError(
                    f"management socket {self.path} did not accept a connection within "
                    f"{timeout}s ({last_error}); is openvpn running with "
                    f"'management {self.path} unix'?"
                )
            await clock.sleep(min(0.05, max(0.0, deadline - clock.monotonic())))
        old_task = self._reader_task
        if old_task is not None and not old_task.done():
            await cancel_and_wait(old_task)
        self._reader, self._writer = reader, writer
        self._banner = asyncio.Event()
        self._events = asyncio.Queue(_EVENT_QUEUE_SIZE)
        self._client_blocks = ClientBlockReader()
        self._reply = []
        self._connected = True
        reader_task = asyncio.create_task(
            self._read_loop(reader), name=f"openvpn-management-reader {self.path}"
        )
        self._reader_task = reader_task
        banner = asyncio.create_task(self._banner.wait())
        try:
            await asyncio.wait(
                {banner, reader_task},
                timeout=max(0.01, deadline - clock.monotonic()),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            banner.cancel()
        if not self._banner.is_set():
            if reader_task.done() or not self._connected:
                await self._drop("closed before banner")
                raise ManagementError(
                    f"management socket {self.path} closed before sending its >INFO banner"
                )
            await self._drop("no >INFO banner")
            raise ManagementError(
                f"management socket {self.path} accepted but sent no >INFO banner within "
                f"{timeout}s; openvpn serves one management client at a time, is another "
                "one attached?"
            )
        _log.info("event=management-connected path=%s", self.path)

    async def close(self) -> None:
        await self._drop("closed by us")
        task = self._reader_task
        if task is not None and task is not asyncio.current_task():
            await cancel_and_wait(task)
        self._reader_task = None

    async def _drop(self, reason: str) -> None:
        writer = self._mark_lost(reason)
        if writer is not None:
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()

    def _mark_lost(self, reason: str) -> asyncio.StreamWriter | None:
        """Mark the connection lost: fail the pending command, end event iterators, close."""
        was_connected = self._connected
        self._connected = False
        if self._pending is not None and not self._pending.done():
            self._pending.set_exception(ManagementError("management socket closed"))
        self._pending = None
        if was_connected:
            self._put_event(None)
            _log.info("event=management-disconnected path=%s reason=%s", self.path, reason)
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        return writer

    # --- reading -------------------------------------------------------------------------

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        reason = "eof"
        try:
            while True:
                try:
                    raw = await reader.readline()
                except ValueError:  # longer than _LINE_LIMIT; the stream dropped it
                    _log.warning("event=management-garbage reason=line-too-long")
                    continue
                if not raw:
                    break
                if not raw.endswith(b"\n"):
                    reason = "eof mid-line"
                    break
                if self._reader is not reader or not self._connected:
                    return  # this connection was dropped; never touch the next one's state
                self._handle_line(self._decode(raw))
        except (OSError, ConnectionError) as exc:
            reason = f"{type(exc).__name__}"
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must not leave a command waiting forever
            _log.exception("event=management-reader-crashed path=%s", self.path)
            reason = "reader error"
        if self._reader is reader and self._connected:
            await self._drop(reason)

    @staticmethod
    def _decode(raw: bytes) -> str:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("utf-8", errors="replace")
            _log.warning("event=management-garbage reason=invalid-utf8 line=%r", text[:200])
        return text.rstrip("\r\n")

    def _handle_line(self, line: str) -> None:
        if line.startswith(">"):
            self._handle_notification(line)
            return
        pending = self._pending
        if pending is None or pending.done():
            _log.warning("event=management-garbage reason=unexpected-line line=%r", line[:200])
            return
        if line.startswith(("SUCCESS:", "ERROR:")):
            if self._reply:
                _log.warning(
                    "event=management-garbage reason=lines-before-status dropped=%d",
                    len(self._reply),
                )
            self._reply = []
            if line.startswith("ERROR:"):
                pending.set_exception(ManagementError(line.removeprefix("ERROR:").strip()))
            else:
                pending.set_result([line.removeprefix("SUCCESS:").strip()])
        elif line == "END":
            reply, self._reply = self._reply, []
            pending.set_result(reply)
        else:
            self._reply.append(line)

    def _handle_notification(self, line: str) -> None:
        kind, sep, payload = line[1:].partition(":")
        if not sep:
            _log.warning("event=management-garbage reason=bad-notification line=%r", line[:200])
            return
        try:
            if kind == "STATE":
                self._put_event(parse_state_line(payload))
            elif kind in ("BYTECOUNT", "BYTECOUNT_CLI"):
                self._put_event(parse_bytecount(kind, payload))
            elif kind == "CLIENT":
                request = self._client_blocks.feed(payload)
                if request is not None:
                    self._put_event(request)
            elif kind == "INFO":
                self._banner.set()
            elif kind == "FATAL":
                _log.error("event=openvpn-fatal message=%r", payload[:500])
            else:
                # >LOG, >HOLD, ... and types we do not know.
                _log.debug("event=management-notification-ignored type=%s", kind[:40])
        except ValueError as exc:
            _log.warning("event=management-garbage reason=%r", str(exc)[:300])

    def _put_event(self, event: Event | None) -> None:
        if self._events.full():  # nobody is consuming: keep the newest
            with contextlib.suppress(asyncio.QueueEmpty):
                self._events.get_nowait()
            _log.warning("event=management-event-dropped reason=queue-full path=%s", self.path)
        self._events.put_nowait(event)

    def events(self) -> AsyncIterator[Event]:
        """Real-time notifications of the current connection; the iterator ends when it closes.

        Meant for one consumer. Events that arrive before the first iteration are queued.
        """
        if not self._connected:
            raise ManagementError(f"management socket {self.path} is not connected")
        queue = self._events

        async def iterate() -> AsyncIterator[Event]:
            while True:
                event = await queue.get()
                if event is None:
                    return
                yield event

        return iterate()

    # --- commands ------------------------------------------------------------------------

    async def command(self, line: str) -> list[str]:
        """Send one command and return its reply.

        A single-line `SUCCESS: text` reply returns `[text]`; a multi-line reply returns its
        lines without the final END. `ERROR: text` raises ManagementError(text).
        """
        if "\n" in line or "\r" in line or not line.strip():
            raise ManagementError(f"refusing management command {line!r}: empty or multi-line")
        verb = line.split(" ", 1)[0]
        async with self._lock:
            writer = self._writer
            if not self._connected or writer is None:
                raise ManagementError(f"management socket {self.path} is not connected")
            future: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
            self._pending = future
            self._reply = []
            try:
                writer.write(line.encode() + b"\n")
                await writer.drain()
                return await asyncio.wait_for(asyncio.shield(future), self._command_timeout)
            except TimeoutError:
                await self._drop(f"command {verb} timed out")
                raise ManagementError(
                    f"management command {verb!r} got no reply within {self._command_timeout}s "
                    f"on {self.path}; dropped the connection to stay in sync"
                ) from None
            except (OSError, ConnectionError) as exc:
                await self._drop(f"write failed: {type(exc).__name__}")
                raise ManagementError("management socket closed") from exc
            except asyncio.CancelledError:
                # The reply may still come and would be taken for the next command's.
                self._mark_lost(f"command {verb} cancelled")
                raise
            finally:
                if self._pending is future:
                    self._pending = None
                if not future.done():
                    future.cancel()
                elif not future.cancelled():
                    future.exception()  # mark retrieved; it was raised above if set

    async def status(self) -> list[ClientStatus]:
        """Connected clients (server side), from `status 3`."""
        return parse_status3(await self.command("status 3"))

    async def state(self) -> StateEvent:
        """The current state (`state`)."""
        lines = [line for line in await self.command("state") if line]
        if not lines:
            raise ManagementError("'state' returned no state line")
        try:
            return parse_state_line(lines[-1])
        except ValueError as exc:
            raise ManagementError(str(exc)) from exc

    async def enable_state_events(self) -> None:
        await self.command("state on")

    async def client_kill(self, common_name: str) -> bool:
        """Disconnect every instance of `common_name`; False if none is connected.

        Uses `client-kill <cid>`, which sends the client RESTART so it reconnects (and meets
        the current CRL and CCD) at once; the older `kill <cn>` only drops the instance and
        the client notices after ping-restart.
        """
        try:
            validate_common_name(common_name)
        except ConfigError as exc:
            raise ManagementError(f"refusing to kill: {exc}") from exc
        matches = [c for c in await self.status() if c.common_name == common_name]
        if not matches:
            return False
        if any(c.client_id is None for c in matches):  # no client IDs: old openvpn
            try:
                await self.command(f"kill {common_name}")
            except ManagementError as exc:
                if "not found" in str(exc):
                    return False
                raise
            return True
        killed = False
        for c in matches:
            try:
                await self.command(f"client-kill {c.client_id}")
                killed = True
            except ManagementError as exc:
                if "failed" not in str(exc):  # "client-kill command failed": already gone
                    raise
        if killed:
            _log.info("event=client-killed common_name=%s instances=%d", common_name, len(matches))
        return killed

    async def client_auth(self, cid: int, kid: int) -> None:
        """Admit a client held by `management-client-auth` (`client-auth-nt`: no extra
        config; its CCD file still applies)."""
        await self.command(f"client-auth-nt {_uint(cid)} {_uint(kid)}")

    async def client_deny(self, cid: int, kid: int, reason: str) -> None:
        """Refuse a client held by `management-client-auth`; REASON goes to openvpn's log
        (reduced to a quoted token of safe characters), the client is told only "denied"."""
        safe = _UNSAFE_REASON.sub("_", reason)[:200] or "denied"
        await self.command(f'client-deny {_uint(cid)} {_uint(kid)} "{safe}" "denied"')

    async def signal(self, sig: Literal["SIGHUP", "SIGTERM", "SIGUSR1", "SIGUSR2"]) -> None:
        if sig not in _SIGNALS:
            raise ValueError(f"signal must be one of {', '.join(_SIGNALS)}, got {sig!r}")
        try:
            await self.command(f"signal {sig}")
        except ManagementError as exc:
            # openvpn may close the socket as it exits, before the reply is read.
            if not (sig == "SIGTERM" and str(exc) == "management socket closed"):
                raise
