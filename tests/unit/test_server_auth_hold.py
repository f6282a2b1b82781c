"""A first connect that the next desired state may admit is held, not denied.

A node whose certificate vpnctl signed a moment ago connects before its serial reaches
the server's desired state; a denial would send it into its reconnect backoff (seen in
the lab: 43 s before the new node's kubelet was reachable). These tests drive the
ClientAuthorizer with the real `authorize` decision and a fake of our own management
interface.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import cast

import pytest
from prometheus_client import CollectorRegistry

from agent.event_log import EventLog
from agent.openvpn.client_auth import ClientAuthRequest
from agent.roles.mgmt import Management
from agent.roles.server_auth import ClientAuthorizer
from agent.roles.server_state import AuthVerdict


@dataclass
class FakeManagement:
    """Records each answer: (verb, cid)."""

    answers: list[tuple[str, int]] = field(default_factory=list)

    async def client_auth(self, cid: int, kid: int) -> None:
        self.answers.append(("auth", cid))

    async def client_deny(self, cid: int, kid: int, reason: str) -> None:
        self.answers.append(("deny", cid))


@dataclass
class Issued:
    """The serials the current desired state lists, and those the CRL revokes."""

    serials: set[int] = field(default_factory=set)
    revoked: set[int] = field(default_factory=set)

    def decide(self, request: ClientAuthRequest) -> AuthVerdict:
        serial = request.serial
        assert serial is not None
        if serial in self.revoked:
            return AuthVerdict(allow=False, reason="revoked")
        if serial in self.serials:
            return AuthVerdict(allow=True, reason="issued")
        return AuthVerdict(allow=False, reason="not issued", pending=True)


def ask(serial: int, *, cid: int, kind: str = "CONNECT") -> ClientAuthRequest:
    env = {"common_name": "node-3", "tls_serial_0": str(serial)}
    return ClientAuthRequest(kind="REAUTH" if kind == "REAUTH" else "CONNECT", cid=cid, kid=0,
                             env=env)  # fmt: skip


@pytest.fixture
def setup() -> tuple[ClientAuthorizer, FakeManagement, Issued, CollectorRegistry]:
    mgmt, issued, registry = FakeManagement(), Issued(), CollectorRegistry()
    auth = ClientAuthorizer(
        client=lambda: (1, cast(Management, mgmt)),
        decide=issued.decide,
        events=EventLog(logger=logging.getLogger("test"), role="server"),
        registry=registry,
        role="server",
        hold_seconds=30.0,
    )
    return auth, mgmt, issued, registry


async def answered(mgmt: FakeManagement, count: int) -> list[tuple[str, int]]:
    async with asyncio.timeout(5):
        while len(mgmt.answers) < count:
            await asyncio.sleep(0.005)
    return mgmt.answers


def held(registry: CollectorRegistry) -> float:
    return registry.get_sample_value(
        "vpnctl_agent_client_auth_total", {"role": "server", "kind": "CONNECT", "result": "held"}
    ) or 0.0


async def test_a_fresh_serial_is_admitted_when_the_desired_state_catches_up(
    setup: tuple[ClientAuthorizer, FakeManagement, Issued, CollectorRegistry],
) -> None:
    auth, mgmt, issued, registry = setup
    runner = asyncio.create_task(auth.run())
    try:
        auth.submit(ask(0x1F, cid=1))
        async with asyncio.timeout(5):
            while held(registry) < 1:
                await asyncio.sleep(0.005)
        assert mgmt.answers == []  # held: neither admitted nor sent into its backoff
        issued.serials.add(0x1F)  # the signer's serial reaches this server
        auth.reconsider()
        assert await answered(mgmt, 1) == [("auth", 1)]  # long before the 30 s deadline
    finally:
        runner.cancel()


async def test_a_held_question_is_denied_at_its_deadline(
    setup: tuple[ClientAuthorizer, FakeManagement, Issued, CollectorRegistry],
) -> None:
    auth, mgmt, _, registry = setup
    auth.hold_seconds = 0.05
    runner = asyncio.create_task(auth.run())
    try:
        auth.submit(ask(0x2E, cid=2))
        auth.reconsider()  # a change that does not list it: still held, then denied
        assert await answered(mgmt, 1) == [("deny", 2)]
        assert held(registry) == 1
    finally:
        runner.cancel()


async def test_revoked_renegotiating_and_overflowing_are_answered_at_once(
    setup: tuple[ClientAuthorizer, FakeManagement, Issued, CollectorRegistry],
) -> None:
    auth, mgmt, issued, registry = setup
    issued.revoked.add(0x3D)
    runner = asyncio.create_task(auth.run())
    try:
        auth.submit(ask(0x3D, cid=3))  # revoked: never held
        auth.submit(ask(0x4C, cid=4, kind="REAUTH"))  # a live session's serial withdrawn
        assert await answered(mgmt, 2) == [("deny", 3), ("deny", 4)]
        assert held(registry) == 0
        from agent.roles import server_auth

        for cid in range(100, 100 + server_auth.MAX_HELD):
            auth.submit(ask(0x5B, cid=cid))
        auth.submit(ask(0x5B, cid=999))  # one more than may be held
        assert await answered(mgmt, 3) == [("deny", 3), ("deny", 4), ("deny", 999)]
        async with asyncio.timeout(5):
            while held(registry) < server_auth.MAX_HELD:
                await asyncio.sleep(0.005)
    finally:
        runner.cancel()
