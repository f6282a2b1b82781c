"""End-to-end probes through the tunnel, and the bookkeeping that turns them into action.

Why probe at all when openvpn has keepalive: keepalive only says the *openvpn peers* hear
each other. It misses a server whose tun or routes are gone, a firewall that eats the
data path, a tun device someone took down. A tiny UDP echo to the server's tunnel
address, every second, crosses exactly the path the apiserver's traffic takes, so a few
missed answers are a reason to reconnect at once instead of after the keepalive timeout.

* `EchoResponder` runs in the server role, bound to the server's tunnel address (with
  IP_FREEBIND, so it can start before openvpn has brought tun up). It answers only our
  own small probe packets, so it cannot be used as a reflector.
* `EchoProber` is the client side: one socket, one outstanding probe per sequence number.
* `ProbeTracker` is pure: it counts consecutive misses *while openvpn says the tunnel is
  up* (when it is down, openvpn is already reconnecting and a miss says nothing new) and
  says when to force a reconnect.
* `tcp_probe` is the server's kubelet check: a TCP connect through the tunnel.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import socket
import struct
import time
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any, cast

MAGIC = b"VPNCTLP1"
_PACKET = struct.Struct("!8sQQ")  # magic, sequence, nonce
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)


def encode_probe(seq: int, nonce: int) -> bytes:
    return _PACKET.pack(MAGIC, seq, nonce)


def decode_probe(data: bytes) -> tuple[int, int] | None:
    """(seq, nonce) of a well-formed probe packet, else None."""
    if len(data) != _PACKET.size:
        return None
    magic, seq, nonce = _PACKET.unpack(data)
    if magic != MAGIC:
        return None
    return seq, nonce


# --- server side ----------------------------------------------------------------------------


class _EchoProtocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.answered = 0
        self.ignored = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector datagram transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if self.transport is None or decode_probe(data) is None:
            self.ignored += 1
            return
        self.transport.sendto(data, addr)
        self.answered += 1


class EchoResponder:
    """Answers probe packets on ADDRESS:PORT; bind works before the address exists."""

    def __init__(self, *, address: IPv4Address, port: int) -> None:
        self.address = address
        self.port = port
        self._transport: asyncio.DatagramTransport | None = None
        self._protocol: _EchoProtocol | None = None

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((str(self.address), self.port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(_EchoProtocol, sock=sock)
        self._transport = transport
        self._protocol = protocol

    @property
    def answered(self) -> int:
        return self._protocol.answered if self._protocol else 0

    async def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


# --- client side ------------------------------------------------------------------------------


class ProbeError(Exception):
    """A probe got no valid answer in time (or could not be sent)."""


class _ProberProtocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.waiting: dict[int, tuple[int, asyncio.Future[float]]] = {}

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        decoded = decode_probe(data)
        if decoded is None:
            return
        seq, nonce = decoded
        entry = self.waiting.get(seq)
        if entry is not None and entry[0] == nonce and not entry[1].done():
            entry[1].set_result(time.monotonic())

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port/host unreachable) arrive here; the waiting probe times out.
        pass


class EchoProber:
    """Sends one probe at a time to TARGET and measures the round trip."""

    def __init__(self, *, target: tuple[IPv4Address, int]) -> None:
        self.target = (str(target[0]), target[1])
        self._seq = 0
        self._transport: asyncio.DatagramTransport | None = None
        self._protocol: _ProberProtocol | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            _ProberProtocol, local_addr=("0.0.0.0", 0), family=socket.AF_INET
        )
        self._transport = transport
        self._protocol = protocol

    async def probe(self, *, timeout: float) -> float:
        """Round-trip seconds, or ProbeError."""
        if self._transport is None or self._protocol is None:
            raise ProbeError("prober not started")
        self._seq += 1
        seq, nonce = self._seq, int.from_bytes(os.urandom(8), "big")
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._protocol.waiting[seq] = (nonce, fut)
        sent = time.monotonic()
        try:
            try:
                self._transport.sendto(encode_probe(seq, nonce), self.target)
            except OSError as e:  # e.g. ENETUNREACH while tun is gone
                raise ProbeError(f"cannot send to {self.target[0]}:{self.target[1]}: {e}") from e
            try:
                received = await asyncio.wait_for(fut, timeout)
            except TimeoutError:
                raise ProbeError(
                    f"no answer from {self.target[0]}:{self.target[1]} within {timeout:g}s"
                ) from None
            return received - sent
        finally:
            self._protocol.waiting.pop(seq, None)

    async def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


# --- pure bookkeeping -------------------------------------------------------------------------


class Verdict(enum.Enum):
    OK = "ok"
    MISS = "miss"  # counted, not yet enough to act
    IGNORED = "ignored"  # tunnel not up: openvpn is already reconnecting
    RECONNECT = "reconnect"


@dataclass
class ProbeTracker:
    """Consecutive-miss counter that decides when to force a reconnect.

    Only misses while the tunnel is reported up count: that is the case keepalive is
    slow to notice. After a RECONNECT verdict the count starts again from zero, so a
    server that stays away gets one forced reconnect per MISSES_ALLOWED probes at most
    (openvpn's own connect-retry backoff runs in between).
    """

    misses_allowed: int
    consecutive_misses: int = 0
    last_ok: bool = False
    last_error: str | None = None

    def __post_init__(self) -> None:
        if self.misses_allowed < 1:
            raise ValueError(f"misses_allowed must be >= 1, got {self.misses_allowed}")

    def record(self, *, ok: bool, tunnel_up: bool, error: str | None = None) -> Verdict:
        self.last_ok = ok
        self.last_error = None if ok else (error or "probe failed")
        if ok:
            self.consecutive_misses = 0
            return Verdict.OK
        if not tunnel_up:
            self.consecutive_misses = 0
            return Verdict.IGNORED
        self.consecutive_misses += 1
        if self.consecutive_misses >= self.misses_allowed:
            self.consecutive_misses = 0
            return Verdict.RECONNECT
        return Verdict.MISS


@dataclass
class CounterDelta:
    """Turns a cumulative counter that resets (per openvpn session) into increments."""

    last: int | None = None

    def feed(self, value: int) -> int:
        """The increase since the previous value; a drop means a reset (count from zero)."""
        previous, self.last = self.last, value
        if previous is None:
            return value
        if value < previous:
            return value
        return value - previous


# --- kubelet --------------------------------------------------------------------------------------


async def tcp_probe(host: str, port: int, *, timeout: float) -> float:
    """Seconds to complete a TCP handshake with HOST:PORT; raises ProbeError otherwise."""
    start = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            _reader, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        raise ProbeError(f"TCP connect to {host}:{port} timed out after {timeout:g}s") from None
    except OSError as e:
        raise ProbeError(f"TCP connect to {host}:{port} failed: {e.strerror or e}") from None
    elapsed = time.monotonic() - start
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), timeout=timeout)
    return elapsed
