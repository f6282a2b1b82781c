"""The lab's underlay on the real kernel: NAT out works, nothing comes in.

The whole point of the lab is that the apiserver namespace can reach the tenant
only through the tunnel; these tests prove the underlay gives it no other way,
while the nodes can still dial out to the server through the NAT.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import sys
from collections.abc import AsyncIterator

import pytest

from tests.netns.nsutil import NETNS_TIER
from vpnctl.lab import netns
from vpnctl.lab.address_plan import LabPlan, make_plan
from vpnctl.lab.probe import probe_tcp
from vpnctl.lab.underlay import build_underlay, destroy_underlay

pytestmark = NETNS_TIER

PORT = 7000

# Prints "ready" once listening, then the source address of every connection.
LISTENER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen()
print("ready", flush=True)
while True:
    c, addr = s.accept()
    print(addr[0], flush=True)
    c.close()
"""


def unique_prefix() -> str:
    return "vt" + secrets.token_hex(3)


class Listener:
    """A TCP listener process inside a namespace; reports each peer's address."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, ns: str, host: str, port: int) -> Listener:
        proc = await asyncio.create_subprocess_exec(
            *netns.exec_argv(ns, [sys.executable, "-c", LISTENER, host, str(port)]),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        listener = cls(proc)
        try:
            assert await listener.next_line() == "ready"
        except BaseException:
            await listener.stop()
            raise
        return listener

    async def next_line(self, timeout: float = 10.0) -> str:
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            line = await self.proc.stdout.readline()
        if not line:
            err = await self.proc.stderr.read() if self.proc.stderr else b""
            raise AssertionError(f"listener exited: {err.decode(errors='replace')}")
        return line.decode().strip()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


@pytest.fixture
async def lab() -> AsyncIterator[LabPlan]:
    plan = make_plan(prefix=unique_prefix(), nodes=2)
    try:
        await build_underlay(plan)
        yield plan
    finally:
        await destroy_underlay(plan)
    assert await netns.list_lab_namespaces(plan.prefix) == []


async def test_apiserver_namespace_has_no_way_to_the_tenant(lab: LabPlan) -> None:
    node = lab.nodes[0]
    for dst in (node.internal_ip, node.pod_ip, lab.lan_gateway.ip):
        assert await netns.route_get(str(dst), ns=lab.api_ns) is None, dst
    listener = await Listener.start(node.ns, str(node.internal_ip), PORT)
    try:
        # Positive control: the listener is reachable from the tenant's own LAN...
        from_lan = await probe_tcp(lab.nodes[1].ns, str(node.internal_ip), PORT, timeout=5)
        assert from_lan.ok, from_lan
        assert await listener.next_line() == str(lab.nodes[1].internal_ip)
        # ...and not from the apiserver namespace, which has no route at all.
        from_api = await probe_tcp(lab.api_ns, str(node.internal_ip), PORT, timeout=3)
        assert not from_api.ok
        assert from_api.error == "unreachable"
        # Nor from the server namespace, which shares the wan with the NAT gateway.
        from_srv = await probe_tcp(lab.srv_ns, str(node.internal_ip), PORT, timeout=3)
        assert (from_srv.ok, from_srv.error) == (False, "unreachable")
    finally:
        await listener.stop()


async def test_nodes_and_pods_reach_the_server_through_the_nat(lab: LabPlan) -> None:
    listener = await Listener.start(lab.srv_ns, str(lab.server_ip), PORT)
    try:
        for ns in (lab.nodes[0].ns, lab.nodes[1].ns, lab.nodes[0].pod_ns):
            result = await probe_tcp(ns, str(lab.server_ip), PORT, timeout=5)
            assert result.ok, (ns, result)
            # The server sees the NAT gateway's wan address, never the private one.
            assert await listener.next_line() == str(lab.nat_ip), ns
    finally:
        await listener.stop()


async def test_pod_reaches_its_node_and_node_forwards(lab: LabPlan) -> None:
    node = lab.nodes[0]
    for ns in (lab.rtr_ns, node.ns):
        assert await netns.get_sysctl("net.ipv4.ip_forward", ns=ns) == "1", ns
    listener = await Listener.start(node.ns, str(node.pod_gateway.ip), PORT)
    try:
        result = await probe_tcp(node.pod_ns, str(node.pod_gateway.ip), PORT, timeout=5)
        assert result.ok, result
        assert await listener.next_line() == str(node.pod_ip)
    finally:
        await listener.stop()


async def test_build_is_idempotent_and_destroy_removes_everything() -> None:
    plan = make_plan(prefix=unique_prefix(), nodes=1)
    node = plan.nodes[0]
    listener: Listener | None = None
    try:
        await build_underlay(plan)
        await build_underlay(plan)  # a second build repairs, never fails
        assert await netns.list_lab_namespaces(plan.prefix) == sorted(plan.namespaces)
        rules = await netns.run("iptables", "-t", "nat", "-S", "POSTROUTING", ns=plan.rtr_ns)
        assert rules.count("MASQUERADE") == 1, rules
        listener = await Listener.start(node.ns, str(node.internal_ip), PORT)
        pid = listener.proc.pid
        assert pid in await netns.netns_pids(node.ns)

        await destroy_underlay(plan)

        assert await netns.list_lab_namespaces(plan.prefix) == []
        # destroy killed the process it found inside the node namespace
        async with asyncio.timeout(10):
            returncode = await listener.proc.wait()
        assert returncode == -signal.SIGTERM
        await destroy_underlay(plan)  # a second destroy is a no-op
        assert await netns.list_lab_namespaces(plan.prefix) == []
    finally:
        if listener is not None:
            await listener.stop()
        await destroy_underlay(plan)


async def test_destroy_also_removes_nodes_the_plan_does_not_list() -> None:
    prefix = unique_prefix()
    big, small = make_plan(prefix=prefix, nodes=3), make_plan(prefix=prefix, nodes=1)
    try:
        await build_underlay(big)
        await destroy_underlay(small)
        assert await netns.list_lab_namespaces(prefix) == []
    finally:
        await destroy_underlay(big)
