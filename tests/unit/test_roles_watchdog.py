"""The watchdog every openvpn role inherits (`agent.roles.openvpn_role`), on a manual clock.

openvpn here is a stand-in process (a shell script that sleeps), supervised for real;
management is a fake whose connect never completes, so the link stays unusable. Time
moves only when the test advances the role's clock: "dead for ten seconds" takes no
ten seconds.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from agent.netlink import Kernel
from agent.openvpn.config import ClientConfig, ServerConfig
from agent.role_config import ClientRoleConfig, Common, ProbeSettings, ServerRoleConfig
from agent.roles.mgmt import Management
from agent.roles.node import NodeRole
from agent.roles.openvpn_role import MANAGEMENT_DEAD_AFTER, OpenVPNRole
from agent.roles.server import ServerRole
from vpnctl.kube.clock import ManualClock

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class HangingManagement:
    """A management socket that accepts nothing: connect() never returns."""

    connected = False

    async def connect(self, *, timeout: float) -> None:
        await asyncio.Event().wait()

    async def close(self) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the watchdog must not use management ({name}) while it is dead")


async def _no_kernel() -> Kernel:
    raise AssertionError("the watchdog needs no kernel")


def _fake_openvpn(tmp_path: Path) -> str:
    script = tmp_path / "openvpn"
    script.write_text("#!/bin/sh\nexec sleep 60\n")
    script.chmod(0o755)
    return str(script)


def _server(tmp_path: Path, clock: ManualClock) -> ServerRole:
    ovpn = ServerConfig(
        tunnel_cidr=IPv4Network("198.18.8.0/24"), ca="/ca.pem", cert="/s.pem", key="/s.key",
        crl=str(tmp_path / "crl.pem"), tls_crypt_v2="/tc.key", ccd_dir=str(tmp_path / "ccd"),
        management=str(tmp_path / "m.sock"),
    )  # fmt: skip
    cfg = ServerRoleConfig(
        common=Common(state_dir=str(tmp_path), openvpn_binary=_fake_openvpn(tmp_path)),
        openvpn=ovpn,
        desired_path=str(tmp_path / "desired.json"),
        crl_source=str(tmp_path / "crl-source.pem"),
    )
    return ServerRole(cfg=cfg, registry=CollectorRegistry(), clock=clock, rng=random.Random(1),
                      kernel_factory=_no_kernel, management_factory=_hanging)  # fmt: skip


def _node(tmp_path: Path, clock: ManualClock) -> NodeRole:
    cfg = ClientRoleConfig(
        role="node",
        common=Common(state_dir=str(tmp_path), openvpn_binary=_fake_openvpn(tmp_path)),
        openvpn=ClientConfig(
            remotes=[("198.18.0.1", 1194)], ca="/ca.pem", cert="/c.pem", key="/c.key",
            tls_crypt_v2="/tc.key", management=str(tmp_path / "m.sock"),
        ),
        probe=ProbeSettings(target=(IPv4Address("198.18.8.1"), 7947)),
    )  # fmt: skip
    role = NodeRole(cfg=cfg, registry=CollectorRegistry(), clock=clock, rng=random.Random(1),
                    kernel_factory=_no_kernel, management_factory=_hanging)  # fmt: skip
    role._material_ready.set()  # as the material task does once the files are valid
    return role


def _hanging(_path: str) -> Management:
    return HangingManagement()


async def eventually(check: Callable[[], bool], *, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.01)


def _starts(role: OpenVPNRole) -> float:
    value = role.registry.get_sample_value("vpnctl_agent_openvpn_starts_total", {"role": role.role})
    return value or 0.0


@pytest.fixture
async def running() -> AsyncIterator[Callable[[OpenVPNRole], None]]:
    started: list[tuple[OpenVPNRole, list[asyncio.Task[None]]]] = []

    def start(role: OpenVPNRole) -> None:
        tasks = [asyncio.create_task(c) for c in (role.supervisor.run(), role.link.run(),
                                                   role._watchdog_task())]  # fmt: skip
        started.append((role, tasks))

    yield start
    for role, tasks in started:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await role.supervisor.stop()


@pytest.mark.parametrize("make", [_server, _node], ids=["server", "node"])
async def test_a_wedged_openvpn_is_restarted_after_management_is_dead_ten_seconds(
    tmp_path: Path, make: Callable[[Path, ManualClock], OpenVPNRole],
    running: Callable[[OpenVPNRole], None],
) -> None:  # fmt: skip
    clock = ManualClock(wall=NOW)
    role = make(tmp_path, clock)
    running(role)
    await eventually(lambda: _starts(role) == 1 and len(clock.sleeps) == 1,
                     what="openvpn started and the watchdog waiting")  # fmt: skip
    assert clock.sleeps == [role.watchdog_interval]

    clock.advance(MANAGEMENT_DEAD_AFTER - 1)
    await eventually(lambda: len(clock.sleeps) == 2, what="the watchdog looked again")
    assert _starts(role) == 1  # dead for 9 s: not yet wedged
    assert role.supervisor.running

    clock.advance(1.5)
    await eventually(lambda: _starts(role) == 2, what="openvpn restarted")
    if isinstance(role, NodeRole):
        reconnects = role.registry.get_sample_value(
            "vpnctl_agent_reconnects_total", {"role": "node", "reason": "management"}
        )
        assert reconnects == 1
