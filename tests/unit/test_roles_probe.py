"""Probes: miss counting and its verdicts, counters that reset, and the UDP echo on loopback."""

from __future__ import annotations

import asyncio
import socket
from ipaddress import IPv4Address

import pytest

from agent.tunnel_probe import (
    CounterDelta,
    EchoProber,
    EchoResponder,
    ProbeError,
    ProbeTracker,
    Verdict,
    decode_probe,
    encode_probe,
    tcp_probe,
)

LOOPBACK = IPv4Address("127.0.0.1")


def test_three_misses_while_up_force_a_reconnect_then_counting_restarts() -> None:
    t = ProbeTracker(misses_allowed=3)
    assert t.record(ok=False, tunnel_up=True) is Verdict.MISS
    assert t.record(ok=False, tunnel_up=True) is Verdict.MISS
    assert t.record(ok=False, tunnel_up=True, error="no answer") is Verdict.RECONNECT
    assert t.consecutive_misses == 0
    assert t.last_error == "no answer"
    assert t.record(ok=False, tunnel_up=True) is Verdict.MISS


def test_an_answer_resets_the_count() -> None:
    t = ProbeTracker(misses_allowed=3)
    t.record(ok=False, tunnel_up=True)
    t.record(ok=False, tunnel_up=True)
    assert t.record(ok=True, tunnel_up=True) is Verdict.OK
    assert t.last_ok
    assert t.record(ok=False, tunnel_up=True) is Verdict.MISS
    assert t.record(ok=False, tunnel_up=True) is Verdict.MISS


def test_misses_while_the_tunnel_is_down_do_not_count() -> None:
    t = ProbeTracker(misses_allowed=2)
    assert t.record(ok=False, tunnel_up=True) is Verdict.MISS
    assert t.record(ok=False, tunnel_up=False) is Verdict.IGNORED
    assert t.record(ok=False, tunnel_up=False) is Verdict.IGNORED
    assert t.record(ok=False, tunnel_up=True) is Verdict.MISS
    assert t.record(ok=False, tunnel_up=True) is Verdict.RECONNECT


def test_tracker_needs_at_least_one_miss() -> None:
    with pytest.raises(ValueError, match="misses_allowed must be >= 1"):
        ProbeTracker(misses_allowed=0)


def test_counter_delta_handles_resets() -> None:
    d = CounterDelta()
    assert d.feed(100) == 100
    assert d.feed(150) == 50
    assert d.feed(150) == 0
    assert d.feed(20) == 20  # a new openvpn session counts from zero again
    assert d.feed(25) == 5


def test_probe_packet_round_trip_and_junk() -> None:
    assert decode_probe(encode_probe(7, 2**63)) == (7, 2**63)
    assert decode_probe(b"hello") is None
    assert decode_probe(b"X" * len(encode_probe(1, 1))) is None


async def test_echo_over_loopback() -> None:
    responder = EchoResponder(address=LOOPBACK, port=0)
    await responder.start()
    try:
        assert responder._transport is not None
        port = responder._transport.get_extra_info("sockname")[1]
        prober = EchoProber(target=(LOOPBACK, port))
        await prober.start()
        try:
            rtt = await prober.probe(timeout=1.0)
            assert 0 <= rtt < 1.0
            assert responder.answered == 1
        finally:
            await prober.stop()
    finally:
        await responder.stop()


async def test_responder_binds_an_address_that_does_not_exist_yet() -> None:
    # IP_FREEBIND: the server's tunnel address appears only when openvpn brings tun up.
    responder = EchoResponder(address=IPv4Address("198.18.255.254"), port=0)
    await responder.start()
    await responder.stop()


async def test_responder_ignores_foreign_packets() -> None:
    responder = EchoResponder(address=LOOPBACK, port=0)
    await responder.start()
    try:
        assert responder._transport is not None
        port = responder._transport.get_extra_info("sockname")[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.3)
            s.sendto(b"amplify me" * 10, ("127.0.0.1", port))
            with pytest.raises(TimeoutError):
                await asyncio.to_thread(s.recvfrom, 2048)
        assert responder.answered == 0
    finally:
        await responder.stop()


async def test_probe_without_answer_times_out() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        prober = EchoProber(target=(LOOPBACK, silent.getsockname()[1]))
        await prober.start()
        try:
            with pytest.raises(ProbeError, match=r"no answer from 127\.0\.0\.1"):
                await prober.probe(timeout=0.2)
        finally:
            await prober.stop()


async def test_tcp_probe_connects_and_reports_refusal() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        assert await tcp_probe("127.0.0.1", port, timeout=1.0) < 1.0
    finally:
        server.close()
        await server.wait_closed()
    with pytest.raises(ProbeError, match=rf"TCP connect to 127\.0\.0\.1:{port} failed"):
        await tcp_probe("127.0.0.1", port, timeout=1.0)
