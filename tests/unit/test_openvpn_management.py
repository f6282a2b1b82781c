"""ManagementClient against a fake management server of our own that speaks openvpn's protocol.

The fake answers scripted commands and can also misbehave on purpose: bytes that are not
UTF-8, unknown notifications, notifications in the middle of a reply, malformed status rows,
a reply cut off by a closed socket, no reply at all. The parse functions are tested directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from agent.openvpn.client_auth import ClientAuthRequest
from agent.openvpn.management import (
    ByteCount,
    ClientStatus,
    Event,
    ManagementClient,
    ManagementError,
    StateEvent,
    parse_bytecount,
    parse_state_line,
    parse_status3,
)
from vpnctl.kube.clock import ManualClock

BANNER = b">INFO:OpenVPN Management Interface Version 5 -- type 'help' for more info\r\n"

STATUS3 = (
    "TITLE\tOpenVPN 2.6.14 x86_64-pc-linux-gnu [SSL (OpenSSL)]\r\n"
    "TIME\t2026-11-25 17:22:33\t1795627353\r\n"
    "HEADER\tCLIENT_LIST\tCommon Name\tReal Address\tVirtual Address\tVirtual IPv6 Address\t"
    "Bytes Received\tBytes Sent\tConnected Since\tConnected Since (time_t)\tUsername\t"
    "Client ID\tPeer ID\tData Channel Cipher\r\n"
    "CLIENT_LIST\tnode-1\t198.19.0.2:53878\t198.18.8.10\t\t2859\t2540\t2026-11-25 17:22:24\t"
    "1795627344\tUNDEF\t4\t0\tAES-256-GCM\r\n"
    "CLIENT_LIST\tnode-2\t198.19.0.6:1194\t\t\t10\t20\t2026-11-25 17:22:25\t"
    "1795627345\tUNDEF\t7\t1\tAES-256-GCM\r\n"
    "HEADER\tROUTING_TABLE\tVirtual Address\tCommon Name\tReal Address\tLast Ref\t"
    "Last Ref (time_t)\r\n"
    "ROUTING_TABLE\t198.18.8.10\tnode-1\t198.19.0.2:53878\t2026-11-25 17:22:24\t1795627344\r\n"
    "GLOBAL_STATS\tMax bcast/mcast queue length\t1\r\n"
    "GLOBAL_STATS\tdco_enabled\t0\r\n"
    "END\r\n"
)

Reply = bytes | Callable[[asyncio.StreamWriter], Awaitable[None]]


class FakeOpenVPN:
    """A unix-socket server speaking the management protocol, scripted per command."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.replies: dict[str, Reply] = {}
        self.received: list[str] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.banner = BANNER
        self.connections = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._handle, self.path)

    async def stop(self) -> None:
        for w in self.writers:
            w.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def push(self, data: bytes) -> None:
        for w in list(self.writers):
            w.write(data)
            await w.drain()

    async def drop_connections(self) -> None:
        for w in list(self.writers):
            w.close()
        self.writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            if self.banner:
                writer.write(self.banner)
                await writer.drain()
            while True:
                raw = await reader.readline()
                if not raw:
                    return
                cmd = raw.decode().rstrip("\r\n")
                self.received.append(cmd)
                reply = self.replies.get(
                    cmd, b"ERROR: unknown command, enter 'help' for more options\r\n"
                )
                if callable(reply):
                    await reply(writer)
                else:
                    writer.write(reply)
                    await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


@pytest.fixture
def sock_path() -> Iterator[str]:
    # Short paths: a unix socket path may be at most 107 bytes, pytest's tmp_path can be longer.
    d = tempfile.mkdtemp(prefix="vtm-")
    try:
        yield str(Path(d) / "m.sock")
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
async def fake(sock_path: str) -> AsyncIterator[FakeOpenVPN]:
    server = FakeOpenVPN(sock_path)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def client(fake: FakeOpenVPN) -> AsyncIterator[ManagementClient]:
    mc = ManagementClient(fake.path, command_timeout=2.0)
    await mc.connect(timeout=5)
    try:
        yield mc
    finally:
        await mc.close()


async def eventually(pred: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


def is_up(mc: ManagementClient) -> bool:
    return mc.connected


async def next_event(mc_events: AsyncIterator[Event]) -> Event:
    return await asyncio.wait_for(anext(mc_events), timeout=5)


# --- pure parsers -----------------------------------------------------------------------


def test_parse_status3_reads_client_list_and_header() -> None:
    clients = parse_status3(STATUS3.splitlines())
    assert clients == [
        ClientStatus(
            common_name="node-1",
            real_address="198.19.0.2:53878",
            virtual_address=IPv4Address("198.18.8.10"),
            bytes_received=2859,
            bytes_sent=2540,
            connected_since=datetime(2026, 11, 25, 17, 22, 24, tzinfo=UTC),
            client_id=4,
        ),
        ClientStatus(
            common_name="node-2",
            real_address="198.19.0.6:1194",
            virtual_address=None,
            bytes_received=10,
            bytes_sent=20,
            connected_since=datetime(2026, 11, 25, 17, 22, 25, tzinfo=UTC),
            client_id=7,
        ),
    ]


def test_parse_status3_follows_a_reordered_header() -> None:
    lines = [
        "HEADER\tCLIENT_LIST\tClient ID\tCommon Name\tBytes Sent\tBytes Received\tReal Address"
        "\tVirtual Address\tConnected Since (time_t)\tNew Column",
        "CLIENT_LIST\t9\tn\t5\t6\t198.19.0.9:1\t198.18.8.9\t0\tx",
    ]
    (c,) = parse_status3(lines)
    assert (c.client_id, c.common_name, c.bytes_sent, c.bytes_received) == (9, "n", 5, 6)
    assert c.connected_since == datetime(1970, 1, 1, tzinfo=UTC)


def test_parse_status3_without_header_uses_default_columns() -> None:
    row = STATUS3.splitlines()[3]
    assert row.startswith("CLIENT_LIST\tnode-1")
    (c,) = parse_status3([row])
    assert c.common_name == "node-1"
    assert c.client_id == 4


def test_parse_status3_skips_malformed_rows(caplog: pytest.LogCaptureFixture) -> None:
    good = STATUS3.splitlines()[3]
    lines = [
        STATUS3.splitlines()[2],
        "CLIENT_LIST\ttoo\tfew",
        good.replace("2859", "lots"),  # bytes not a number
        good.replace("198.18.8.10", "not-an-ip"),
        good.replace("1795627344", "99999999999999999999"),  # time out of range
        good.replace("\tnode-1\t", "\t\t"),  # empty common name
        "CLIENT_LIST",
        "",
        "\t\t\t",
        good,
    ]
    with caplog.at_level(logging.WARNING):
        clients = parse_status3(lines)
    assert [c.common_name for c in clients] == ["node-1"]
    assert caplog.text.count("event=status-row-skipped") == 6


def test_parse_status3_falls_back_to_local_time_text() -> None:
    lines = [
        "HEADER\tCLIENT_LIST\tCommon Name\tReal Address\tVirtual Address\tBytes Received"
        "\tBytes Sent\tConnected Since",
        "CLIENT_LIST\tn\t198.19.0.1:1\t198.18.8.2\t1\t2\t2026-01-02 03:04:05",
    ]
    (c,) = parse_status3(lines)
    assert c.connected_since.tzinfo is not None
    assert c.client_id is None


def test_parse_state_line() -> None:
    ev = parse_state_line("1795627344,CONNECTED,SUCCESS,198.18.8.10,198.19.0.1,1194,,")
    assert ev == StateEvent(
        time=datetime.fromtimestamp(1795627344, tz=UTC),
        name="CONNECTED",
        description="SUCCESS",
        local_ip="198.18.8.10",
        remote_ip="198.19.0.1",
    )
    ev = parse_state_line(">STATE:1795627367,RECONNECTING,ping-restart,,,,,")
    assert (ev.name, ev.description, ev.local_ip, ev.remote_ip) == (
        "RECONNECTING",
        "ping-restart",
        None,
        None,
    )
    assert parse_state_line("1,WAIT").description == ""


@pytest.mark.parametrize("line", ["", "garbage", "abc,CONNECTED", "1795627344,", ">STATE:x"])
def test_parse_state_line_rejects_garbage(line: str) -> None:
    with pytest.raises(ValueError, match="state line"):
        parse_state_line(line)


def test_parse_bytecount() -> None:
    assert parse_bytecount("BYTECOUNT", "5495,6750") == ByteCount(
        bytes_in=5495, bytes_out=6750, client_id=None
    )
    assert parse_bytecount("BYTECOUNT_CLI", "3,1,2") == ByteCount(
        bytes_in=1, bytes_out=2, client_id=3
    )
    for kind, payload in [("BYTECOUNT", "1"), ("BYTECOUNT", "a,b"), ("BYTECOUNT_CLI", "1,2")]:
        with pytest.raises(ValueError, match="malformed"):
            parse_bytecount(kind, payload)


# --- the client against the fake --------------------------------------------------------


async def test_single_and_multi_line_replies(fake: FakeOpenVPN, client: ManagementClient) -> None:
    fake.replies["state on"] = b"SUCCESS: real-time state notification set to ON\r\n"
    fake.replies["version"] = b"OpenVPN Version: 2.6.14\r\nManagement Version: 5\r\nEND\r\n"
    assert client.connected
    assert await client.command("state on") == ["real-time state notification set to ON"]
    assert await client.command("version") == ["OpenVPN Version: 2.6.14", "Management Version: 5"]
    with pytest.raises(ManagementError, match="unknown command"):
        await client.command("bogus")
    assert client.connected  # an ERROR reply is not a broken connection
    assert fake.received == ["state on", "version", "bogus"]


async def test_status_state_bytecount_signal_commands(
    fake: FakeOpenVPN, client: ManagementClient
) -> None:
    fake.replies["status 3"] = STATUS3.encode()
    fake.replies["state"] = b"1795627343,CONNECTED,SUCCESS,198.18.8.1,,,,\r\nEND\r\n"
    fake.replies["state on"] = b"SUCCESS: real-time state notification set to ON\r\n"
    fake.replies["bytecount 2"] = b"SUCCESS: bytecount interval changed\r\n"
    fake.replies["signal SIGUSR1"] = b"SUCCESS: signal SIGUSR1 thrown\r\n"
    assert [c.common_name for c in await client.status()] == ["node-1", "node-2"]
    state = await client.state()
    assert (state.name, state.local_ip) == ("CONNECTED", "198.18.8.1")
    await client.enable_state_events()
    await client.signal("SIGUSR1")
    assert fake.received == ["status 3", "state", "state on", "signal SIGUSR1"]
    with pytest.raises(ValueError, match="signal must be one of"):
        await client.signal("SIGKILL")  # type: ignore[arg-type]
    assert len(fake.received) == 4


async def test_state_with_no_line_is_an_error(fake: FakeOpenVPN, client: ManagementClient) -> None:
    fake.replies["state"] = b"END\r\n"
    with pytest.raises(ManagementError, match="no state line"):
        await client.state()
    fake.replies["state"] = b"what,\r\nEND\r\n"
    with pytest.raises(ManagementError, match="state line"):
        await client.state()


async def test_notifications_inside_a_reply_go_to_events(
    fake: FakeOpenVPN, client: ManagementClient
) -> None:
    fake.replies["status 3"] = (
        STATUS3.replace(
            "HEADER\tROUTING_TABLE",
            ">BYTECOUNT_CLI:4,100,200\r\n>STATE:1795627367,RECONNECTING,ping-restart,,,,,\r\n"
            ">CLIENT:ENV,common_name=node-9\r\n>NEW-THING:whatever\r\nHEADER\tROUTING_TABLE",
            1,
        )
    ).encode()
    events = client.events()
    clients = await client.status()
    assert [c.common_name for c in clients] == ["node-1", "node-2"]
    assert await next_event(events) == ByteCount(bytes_in=100, bytes_out=200, client_id=4)
    ev = await next_event(events)
    assert isinstance(ev, StateEvent)
    assert ev.name == "RECONNECTING"


async def test_garbage_does_not_break_the_client(
    fake: FakeOpenVPN, client: ManagementClient, caplog: pytest.LogCaptureFixture
) -> None:
    fake.replies["state on"] = b"SUCCESS: ok\r\n"
    events = client.events()
    with caplog.at_level(logging.WARNING):
        await fake.push(
            b"\xff\xfe\x00 not utf-8\r\n"
            b">UNKNOWN-TYPE:1,2,3\r\n"
            b">no colon at all\r\n"
            b">STATE:not-a-time,CONNECTED\r\n"
            b">BYTECOUNT:x,y\r\n"
            b"stray line with no command\r\n"
            b">FATAL:something bad\r\n" + b"x" * (2 << 20) + b"\r\n"
            b">STATE:1795627344,CONNECTED,SUCCESS,198.18.8.10,198.19.0.1,1194,,\r\n"
        )
        ev = await next_event(events)
    assert isinstance(ev, StateEvent)
    assert ev.name == "CONNECTED"  # the only well-formed event got through
    assert client.connected
    assert await client.command("state on") == ["ok"]
    assert "invalid-utf8" in caplog.text
    assert "unexpected-line" in caplog.text
    assert "line-too-long" in caplog.text


async def test_lines_before_a_status_line_are_dropped(
    fake: FakeOpenVPN, client: ManagementClient
) -> None:
    fake.replies["state on"] = b"leftover\r\nSUCCESS: ok\r\n"
    assert await client.command("state on") == ["ok"]


async def test_socket_closed_mid_reply(fake: FakeOpenVPN, client: ManagementClient) -> None:
    async def half_then_close(writer: asyncio.StreamWriter) -> None:
        writer.write(STATUS3.encode()[:200])
        await writer.drain()
        writer.close()

    fake.replies["status 3"] = half_then_close
    events = client.events()
    with pytest.raises(ManagementError, match="management socket closed"):
        await client.status()
    assert not client.connected
    with pytest.raises(StopAsyncIteration):
        await next_event(events)  # the iterator of the lost connection ends
    with pytest.raises(ManagementError, match="not connected"):
        await client.command("state")
    with pytest.raises(ManagementError, match="not connected"):
        client.events()

    fake.replies["status 3"] = STATUS3.encode()
    await client.connect(timeout=5)
    assert is_up(client)  # a function call: mypy would narrow the attribute to False
    assert len(await client.status()) == 2
    assert fake.connections == 2


async def test_socket_closed_while_idle(fake: FakeOpenVPN, client: ManagementClient) -> None:
    await fake.drop_connections()
    await eventually(lambda: not client.connected, timeout=5, what="disconnect noticed")
    await client.connect(timeout=5)
    assert client.connected


async def test_command_timeout_drops_the_connection(fake: FakeOpenVPN, sock_path: str) -> None:
    async def never(writer: asyncio.StreamWriter) -> None:
        return None

    fake.replies["status 3"] = never
    mc = ManagementClient(sock_path, command_timeout=0.2)
    await mc.connect(timeout=5)
    try:
        with pytest.raises(ManagementError, match=r"got no reply within 0\.2s"):
            await mc.status()
        assert not mc.connected
    finally:
        await mc.close()


async def test_commands_are_serialised(fake: FakeOpenVPN, client: ManagementClient) -> None:
    release = asyncio.Event()

    async def slow(writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.write(b"SUCCESS: slow\r\n")
        await writer.drain()

    fake.replies["echo slow"] = slow
    fake.replies["echo fast"] = b"SUCCESS: fast\r\n"
    both = asyncio.gather(client.command("echo slow"), client.command("echo fast"))
    await eventually(lambda: fake.received == ["echo slow"], timeout=5, what="slow command sent")
    assert fake.received == ["echo slow"]  # fast waits for slow's reply
    release.set()
    results = await asyncio.wait_for(both, timeout=5)
    assert list(results) == [["slow"], ["fast"]]
    assert fake.received == ["echo slow", "echo fast"]


async def test_cancelled_command_drops_the_connection(
    fake: FakeOpenVPN, client: ManagementClient
) -> None:
    release = asyncio.Event()

    async def slow(writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.write(b"SUCCESS: late\r\n")
        await writer.drain()

    fake.replies["echo slow"] = slow
    task = asyncio.create_task(client.command("echo slow"))
    await eventually(lambda: fake.received == ["echo slow"], timeout=5, what="command sent")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The late "SUCCESS: late" must never be taken as another command's reply.
    assert not client.connected
    release.set()


async def test_multi_line_commands_are_refused(fake: FakeOpenVPN, client: ManagementClient) -> None:
    for bad in ["status 3\nsignal SIGTERM", "kill x\r", "", "   "]:
        with pytest.raises(ManagementError, match="refusing management command"):
            await client.command(bad)
    assert fake.received == []


async def test_client_kill_uses_client_ids(fake: FakeOpenVPN, client: ManagementClient) -> None:
    fake.replies["status 3"] = STATUS3.encode()
    fake.replies["client-kill 4"] = b"SUCCESS: client-kill command succeeded\r\n"
    fake.replies["client-kill 7"] = b"ERROR: client-kill command failed\r\n"
    assert await client.client_kill("node-1") is True
    assert fake.received == ["status 3", "client-kill 4"]
    assert await client.client_kill("node-2") is False  # left between status and kill
    assert await client.client_kill("node-3") is False  # not connected at all
    assert fake.received[-1] == "status 3"
    with pytest.raises(ManagementError, match="refusing to kill"):
        await client.client_kill("node-1\nsignal SIGTERM")


async def test_client_kill_without_client_ids_falls_back_to_kill(
    fake: FakeOpenVPN, client: ManagementClient
) -> None:
    fake.replies["status 3"] = (
        b"HEADER\tCLIENT_LIST\tCommon Name\tReal Address\tVirtual Address\tBytes Received\t"
        b"Bytes Sent\tConnected Since (time_t)\r\n"
        b"CLIENT_LIST\tnode-1\t198.19.0.2:1\t198.18.8.10\t1\t2\t1795627344\r\nEND\r\n"
    )
    fake.replies["kill node-1"] = b"SUCCESS: common name 'node-1' found, 1 client(s) killed\r\n"
    assert await client.client_kill("node-1") is True
    assert fake.received[-1] == "kill node-1"


async def test_sigterm_tolerates_the_socket_closing(
    fake: FakeOpenVPN, client: ManagementClient
) -> None:
    async def exit_now(writer: asyncio.StreamWriter) -> None:
        writer.close()

    fake.replies["signal SIGTERM"] = exit_now
    fake.replies["signal SIGHUP"] = exit_now
    await client.signal("SIGTERM")
    await client.connect(timeout=5)
    with pytest.raises(ManagementError, match="closed"):
        await client.signal("SIGHUP")


async def test_connect_retries_until_the_socket_appears(sock_path: str) -> None:
    clock = ManualClock()
    mc = ManagementClient(sock_path, clock=clock)
    server = FakeOpenVPN(sock_path)
    connecting = asyncio.create_task(mc.connect(timeout=10))
    try:
        await eventually(lambda: len(clock.sleeps) == 1, timeout=5, what="a refused attempt")
        clock.advance(0.05)
        await eventually(lambda: len(clock.sleeps) == 2, timeout=5, what="a second attempt")
        assert clock.sleeps == [0.05, 0.05]
        assert not connecting.done()
        await server.start()
        clock.advance(0.05)
        await asyncio.wait_for(connecting, timeout=5)
        assert mc.connected
    finally:
        await mc.close()
        await server.stop()


async def test_connect_gives_up_with_a_clear_error(sock_path: str) -> None:
    mc = ManagementClient(sock_path)
    t0 = time.monotonic()
    with pytest.raises(ManagementError, match=r"did not accept a connection within 0.3s"):
        await mc.connect(timeout=0.3)
    assert time.monotonic() - t0 < 2
    assert not mc.connected


async def test_connect_without_banner_times_out(sock_path: str) -> None:
    server = FakeOpenVPN(sock_path)
    server.banner = b""
    await server.start()
    mc = ManagementClient(sock_path)
    try:
        with pytest.raises(ManagementError, match="no >INFO banner"):
            await mc.connect(timeout=0.3)
        assert not mc.connected
    finally:
        await mc.close()
        await server.stop()


async def test_connect_to_a_socket_that_closes_at_once(sock_path: str) -> None:
    async def slam(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_unix_server(slam, sock_path)
    mc = ManagementClient(sock_path)
    try:
        t0 = time.monotonic()
        with pytest.raises(ManagementError, match="closed before sending its >INFO banner"):
            await mc.connect(timeout=5)
        assert time.monotonic() - t0 < 2
    finally:
        await mc.close()
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()


async def test_full_event_queue_keeps_the_newest(
    fake: FakeOpenVPN, client: ManagementClient
) -> None:
    fake.replies["echo x"] = b"SUCCESS: x\r\n"
    events = client.events()
    burst = b"".join(b">BYTECOUNT:%d,0\r\n" % i for i in range(1100))
    await fake.push(burst)
    await client.command("echo x")  # a round trip: the burst has been read by now
    first = await next_event(events)
    assert isinstance(first, ByteCount)
    assert first.bytes_in == 1100 - 1024


# --- management-client-auth -------------------------------------------------------------------


async def test_client_auth_blocks_arrive_as_requests_even_inside_a_reply(
    fake: FakeOpenVPN, client: ManagementClient
) -> None:
    block = (
        ">CLIENT:CONNECT,7,1\r\n>CLIENT:ENV,common_name=node-1\r\n"
        ">CLIENT:ENV,tls_serial_0=1234567\r\n>CLIENT:ENV,tls_serial_hex_0=12:d6:87\r\n"
    )
    fake.replies["status 3"] = (
        STATUS3.replace("HEADER\tROUTING_TABLE", block + "HEADER\tROUTING_TABLE", 1)
        + ">CLIENT:ENV,END\r\n>CLIENT:ESTABLISHED,7\r\n>CLIENT:ENV,common_name=x\r\n"
        ">CLIENT:ENV,END\r\n>CLIENT:ADDRESS,7,198.18.8.11,1\r\n"
        ">CLIENT:REAUTH,7,2\r\n>CLIENT:ENV,common_name=node-1\r\n"
        ">CLIENT:ENV,tls_serial_0=1234567\r\n>CLIENT:ENV,END\r\n"
    ).encode()
    events = client.events()
    assert [c.common_name for c in await client.status()] == ["node-1", "node-2"]
    first, second = await next_event(events), await next_event(events)
    assert isinstance(first, ClientAuthRequest)
    assert isinstance(second, ClientAuthRequest)
    assert (first.kind, first.cid, first.kid, first.common_name, first.serial) == (
        "CONNECT", 7, 1, "node-1", 1234567,
    )  # fmt: skip
    assert (second.kind, second.cid, second.kid, second.serial) == ("REAUTH", 7, 2, 1234567)


async def test_client_auth_and_deny_commands(fake: FakeOpenVPN, client: ManagementClient) -> None:
    fake.replies["client-auth-nt 7 1"] = b"SUCCESS: client-auth command succeeded\r\n"
    fake.replies['client-deny 8 0 "serial 5b was not issued_ rm -rf _" "denied"'] = (
        b"SUCCESS: client-deny command succeeded\r\n"
    )
    await client.client_auth(7, 1)
    # The reason is reduced to one quoted token: no quote or newline of the peer's gets in.
    await client.client_deny(8, 0, 'serial 5b was not issued" rm -rf "')
    fake.replies["client-auth-nt 9 0"] = b"ERROR: client-auth command failed\r\n"
    with pytest.raises(ManagementError, match="command failed"):
        await client.client_auth(9, 0)
    with pytest.raises(ManagementError, match="whole numbers"):
        await client.client_auth(-1, 0)
    assert fake.received[-1] == "client-auth-nt 9 0"
