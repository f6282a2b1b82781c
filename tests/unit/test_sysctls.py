"""SysctlKeeper checks and reports where it cannot set (issue 9, item 7), against a fake of
our own `SysctlAccess`: a container's /proc/sys is read-only, and the node agent no longer
gets the host's mounted writable."""

from __future__ import annotations

import errno
import logging

import pytest
from prometheus_client import CollectorRegistry

from agent.netlink import SysctlNotFound
from agent.sysctls import (
    SysctlKeeper,
    SysctlRefused,
    forwarding_sysctls,
    readiness_reason,
)

ROLE = "node"
TUN_KEY = "net/ipv4/conf/tun0/rp_filter"
ALL_KEY = "net/ipv4/conf/all/rp_filter"


class FakeSysctls:
    """/proc/sys as a dict; read-only like a container's unless told otherwise."""

    def __init__(self, values: dict[str, str], *, read_only: bool = True) -> None:
        self.values = dict(values)
        self.read_only = read_only
        self.writes: list[tuple[str, str]] = []

    def _key(self, key: str) -> str:
        return key.replace(".", "/") if "/" not in key else key

    def read(self, key: str) -> str:
        try:
            return self.values[self._key(key)]
        except KeyError:
            raise SysctlNotFound(f"sysctl {key} does not exist", errno=errno.ENOENT) from None

    def write(self, key: str, value: str) -> None:
        self.writes.append((key, value))
        if self.read_only:
            raise SysctlRefused(f"cannot set {key}: read-only", errno=errno.EROFS)
        self.values[self._key(key)] = value


def keeper(fake: FakeSysctls) -> tuple[SysctlKeeper, CollectorRegistry]:
    registry = CollectorRegistry()
    k = SysctlKeeper(registry=registry, role=ROLE, access=fake)
    k.set_desired(forwarding_sysctls(tun="tun0"))
    return k, registry


def ok_gauge(registry: CollectorRegistry, key: str) -> float | None:
    return registry.get_sample_value("vpnctl_agent_sysctl_ok", {"role": ROLE, "key": key})


async def test_read_only_and_already_right_is_ready_without_a_write() -> None:
    fake = FakeSysctls({"net/ipv4/ip_forward": "1", TUN_KEY: "2", ALL_KEY: "0"})
    k, registry = keeper(fake)
    result = await k.sync_once()
    assert readiness_reason(result, dev="tun0") is None
    assert fake.writes == []
    assert k.in_sync
    assert k.healthy
    assert ok_gauge(registry, "net.ipv4.ip_forward") == 1
    assert ok_gauge(registry, TUN_KEY) == 1


async def test_rp_filter_counts_as_the_kernel_applies_it() -> None:
    """conf.tun0.rp_filter=1 (strict) with conf.all=2: the kernel uses max() = 2, loose,
    which is what we want; nothing to write, nothing to report."""
    fake = FakeSysctls({"net/ipv4/ip_forward": "1", TUN_KEY: "1", ALL_KEY: "2"})
    k, _ = keeper(fake)
    result = await k.sync_once()
    assert (result.wrong, result.errors, fake.writes) == ((), (), [])
    assert readiness_reason(result, dev="tun0") is None


async def test_rp_filter_off_is_as_good_as_loose_for_the_tunnel() -> None:
    """A node's fresh tun0 with rp_filter 0 (conf.default 0, conf.all 0), /proc/sys
    read-only: replies are let in, so ready, nothing to write (found on a real kubelet:
    the agent pods never became Ready and a DaemonSet rollout would stall)."""
    fake = FakeSysctls({"net/ipv4/ip_forward": "1", TUN_KEY: "0", ALL_KEY: "0"})
    k, registry = keeper(fake)
    result = await k.sync_once()
    assert (result.wrong, result.errors, fake.writes) == ((), (), [])
    assert readiness_reason(result, dev="tun0") is None
    assert ok_gauge(registry, TUN_KEY) == 1
    fake.values[ALL_KEY] = "1"  # strict everywhere: replies would be dropped
    result = await k.sync_once()
    reason = readiness_reason(result, dev="tun0")
    assert reason is not None
    assert f"sysctl {TUN_KEY} is 1, wants 2" in reason


async def test_read_only_and_wrong_is_reported_with_the_fix(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeSysctls({"net/ipv4/ip_forward": "0", TUN_KEY: "1", ALL_KEY: "1"})
    k, registry = keeper(fake)
    caplog.set_level(logging.WARNING, logger="agent.sysctls")
    for _ in range(5):  # more passes than the keeper's unhealthy threshold
        result = await k.sync_once()
    reason = readiness_reason(result, dev="tun0")
    assert reason is not None
    # What is wrong, what it is and wants, and the command that fixes it on the host.
    assert "sysctl net.ipv4.ip_forward is 0, wants 1" in reason
    assert "sysctl -w net.ipv4.ip_forward=1" in reason
    assert f"sysctl {TUN_KEY} is 1, wants 2" in reason
    assert "Read-only file system" in reason
    assert result.errors == ()
    assert k.healthy  # not a failure of the keeper: retrying won't make /proc/sys writable
    assert not k.in_sync
    assert ok_gauge(registry, "net.ipv4.ip_forward") == 0
    assert ok_gauge(registry, TUN_KEY) == 0
    # Logged once per change, not once a second.
    wrong_lines = [r for r in caplog.records if "sysctl_wrong" in r.getMessage()]
    assert len(wrong_lines) == 2

    fake.values["net/ipv4/ip_forward"] = "1"  # the operator fixes it on the host
    fake.values[ALL_KEY] = "2"
    result = await k.sync_once()
    assert readiness_reason(result, dev="tun0") is None
    assert ok_gauge(registry, "net.ipv4.ip_forward") == 1
    assert k.in_sync


async def test_where_it_can_it_still_sets_and_repairs() -> None:
    fake = FakeSysctls({"net/ipv4/ip_forward": "0"}, read_only=False)
    k, registry = keeper(fake)
    result = await k.sync_once()
    assert result.applied == ("net.ipv4.ip_forward",)
    assert result.pending == (TUN_KEY,)  # no tun yet: waiting, not wrong
    assert readiness_reason(result, dev="tun0") == f"waiting for tun0: {TUN_KEY}"
    assert ok_gauge(registry, TUN_KEY) == 0
    fake.values[TUN_KEY] = "1"
    fake.values["net/ipv4/ip_forward"] = "0"
    result = await k.sync_once()
    assert (result.applied, result.repaired) == ((TUN_KEY,), ("net.ipv4.ip_forward",))
    assert fake.values == {"net/ipv4/ip_forward": "1", TUN_KEY: "2"}
    assert readiness_reason(result, dev="tun0") is None
