"""The server and client roles against fakes of our own interfaces (management, kernel).

No openvpn here: `FakeManagement` implements `agent.roles.mgmt.Management`, the files are
real (tmp_path), the clock and registry are passed in. The netns tests run the same code
against real openvpn.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Literal

import pytest
from prometheus_client import CollectorRegistry

import certs
from agent.desired_state import DesiredState, parse_desired
from agent.event_log import EventLog
from agent.firewall import FirewallPolicy
from agent.netlink import Kernel, Route
from agent.openvpn.client_auth import ClientAuthRequest
from agent.openvpn.config import ClientConfig, ServerConfig
from agent.openvpn.management import ClientStatus, Event, StateEvent
from agent.role_config import ClientRoleConfig, Common, ProbeSettings, ServerRoleConfig
from agent.roles.material import MaterialError
from agent.roles.node import NodeRole
from agent.roles.server import ServerRole
from agent.roles.server_auth import ClientAuthorizer
from agent.roles.server_state import AuthVerdict
from tests.support.polling import aeventually
from vpnctl.kube.clock import ManualClock

TUNNEL = IPv4Network("198.18.8.0/24")
NOW = datetime(2026, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)


class FakeManagement:
    """An openvpn management interface in memory: a set of connected clients."""

    def __init__(self) -> None:
        self._connected = False
        self.clients: dict[str, ClientStatus] = {}
        self.killed: list[str] = []
        self.status_calls = 0
        self.signals: list[str] = []
        self.answers: list[tuple[str, int, int, str]] = []
        self.fail_commands = False
        self._closed = asyncio.Event()
        self._notifications: asyncio.Queue[Event] = asyncio.Queue()

    def connect_client(self, cn: str, *, client_id: int, since: datetime = NOW) -> None:
        self.clients[cn] = ClientStatus(
            common_name=cn, real_address="198.18.0.3:4000", virtual_address=None,
            bytes_received=100, bytes_sent=200, connected_since=since, client_id=client_id,
        )  # fmt: skip

    @property
    def connected(self) -> bool:
        return self._connected

    async def connect(self, *, timeout: float) -> None:
        self._connected = True

    async def close(self) -> None:
        self._connected = False
        self._closed.set()

    def _check(self) -> None:
        if self.fail_commands:
            raise OSError("management socket closed")

    async def status(self) -> list[ClientStatus]:
        self._check()
        self.status_calls += 1
        return list(self.clients.values())

    async def state(self) -> StateEvent:
        self._check()
        return StateEvent(time=NOW, name="CONNECTED", description="SUCCESS", local_ip=None,
                          remote_ip=None)  # fmt: skip

    async def enable_state_events(self) -> None:
        self._check()

    async def client_kill(self, common_name: str) -> bool:
        self._check()
        if common_name not in self.clients:
            return False
        self.killed.append(common_name)
        del self.clients[common_name]
        return True

    async def client_auth(self, cid: int, kid: int) -> None:
        self._check()
        self.answers.append(("auth", cid, kid, ""))

    async def client_deny(self, cid: int, kid: int, reason: str) -> None:
        self._check()
        self.answers.append(("deny", cid, kid, reason))

    async def signal(self, sig: Literal["SIGHUP", "SIGTERM", "SIGUSR1", "SIGUSR2"]) -> None:
        self._check()
        self.signals.append(sig)

    def notify(self, event: Event) -> None:
        """A real-time notification from "openvpn" (e.g. a >CLIENT:CONNECT block)."""
        self._notifications.put_nowait(event)

    def events(self) -> AsyncIterator[Event]:
        async def it() -> AsyncIterator[Event]:
            while not self._closed.is_set():
                get = asyncio.ensure_future(self._notifications.get())
                closed = asyncio.ensure_future(self._closed.wait())
                done, _ = await asyncio.wait({get, closed}, return_when=asyncio.FIRST_COMPLETED)
                for f in (get, closed):
                    if f not in done:
                        f.cancel()
                if get in done:
                    yield get.result()

        return it()


class NoKernel:
    """A Kernel that has nothing; the role tests here do not exercise routes."""

    async def list_routes(self, *, proto: int | None = 211) -> list[Route]:
        return []

    async def replace_route(self, route: Route) -> None: ...

    async def delete_route(self, route: Route) -> None: ...

    async def link_exists(self, dev: str) -> bool:
        return False

    async def link_index(self, dev: str) -> int:
        raise AssertionError("not used")

    async def link_counters(self, dev: str) -> tuple[int, int]:
        return (0, 0)

    async def addresses(self, dev: str) -> list[IPv4Interface]:
        return []

    async def replace_address(self, dev: str, addr: IPv4Interface) -> None: ...

    async def set_link_up(self, dev: str) -> None: ...

    async def close(self) -> None: ...


async def _no_kernel() -> Kernel:
    return NoKernel()


class FakeFirewall:
    def __init__(self) -> None:
        self.applied: list[FirewallPolicy] = []

    async def apply(self, policy: FirewallPolicy) -> None:
        self.applied.append(policy)

    async def present(self) -> bool:
        return bool(self.applied)

    async def remove(self) -> None:
        self.applied.clear()


# --- fixtures ---------------------------------------------------------------------------------


class Pki:
    def __init__(self, base: Path) -> None:
        self.ca = certs.new_ca(common_name="tenant-a", now=NOW, lifetime=DAY)
        self.ca_path = base / "ca.pem"
        self.ca_path.write_bytes(self.ca.cert_pem)
        self.serials: dict[str, int] = {}
        for cn in ("apiserver", "node-1", "node-2"):
            issued = certs.new_client_cert(self.ca, common_name=cn, now=NOW, lifetime=DAY)
            self.serials[cn] = certs.cert_info(issued.cert_pem).serial

    def crl(self, *cns: str, number: int) -> bytes:
        return certs.build_crl(
            self.ca,
            revoked=[certs.Revoked(serial=self.serials[cn], revoked_at=NOW) for cn in cns],
            now=NOW,
            next_update=DAY,
            crl_number=number,
        )


def _desired(pki: Pki, *, node1_iroutes: list[str], with_node2: bool = True) -> DesiredState:
    clients = [
        {"common_name": "node-1", "ifconfig_ip": "198.18.8.11", "iroutes": node1_iroutes,
         "serial": f"{pki.serials['node-1']:x}"},
    ]  # fmt: skip
    if with_node2:
        serial = f"{pki.serials['node-2']:x}"
        clients.append({"common_name": "node-2", "ifconfig_ip": "198.18.8.12",
                        "iroutes": ["198.19.0.12/32"], "serial": serial})  # fmt: skip
    doc = {
        "apiserver": {"common_name": "apiserver", "ifconfig_ip": "198.18.8.2",
                      "serial": f"{pki.serials['apiserver']:x}"},
        "clients": clients,
    }  # fmt: skip
    return parse_desired(doc, path="/d.json", tunnel_cidr=TUNNEL)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


@pytest.fixture
async def server(tmp_path: Path, pki: Pki) -> AsyncIterator[tuple[ServerRole, FakeManagement]]:
    (tmp_path / "ccd").mkdir()
    ovpn = ServerConfig(
        tunnel_cidr=TUNNEL, ca=str(pki.ca_path), cert=str(tmp_path / "s.pem"),
        key=str(tmp_path / "s.key"), crl=str(tmp_path / "crl-installed.pem"),
        tls_crypt_v2=str(tmp_path / "tc.key"), ccd_dir=str(tmp_path / "ccd"),
        management=str(tmp_path / "m.sock"),
    )  # fmt: skip
    cfg = ServerRoleConfig(
        common=Common(state_dir=str(tmp_path / "state")),
        openvpn=ovpn,
        desired_path=str(tmp_path / "desired.json"),
        crl_source=str(tmp_path / "crl.pem"),
    )
    fake = FakeManagement()
    role = ServerRole(
        cfg=cfg, registry=CollectorRegistry(), clock=ManualClock(wall=NOW), rng=random.Random(1),
        kernel_factory=_no_kernel, management_factory=lambda _path: fake,
        firewall=FakeFirewall(),
    )  # fmt: skip
    link = asyncio.create_task(role.link.run())
    try:
        yield role, fake
    finally:
        link.cancel()
        with pytest.raises(asyncio.CancelledError):
            await link


async def _usable(role: ServerRole | NodeRole) -> None:
    await aeventually(lambda: role.link.usable, timeout=2, interval=0.01, what="management usable")


async def _serving(
    server: tuple[ServerRole, FakeManagement], pki: Pki
) -> tuple[ServerRole, FakeManagement]:
    """The server role, its management link usable and the desired state applied
    (node-1 routes 198.19.0.11/32)."""
    role, mgmt = server
    await _usable(role)
    await role.apply_desired(_desired(pki, node1_iroutes=["198.19.0.11/32"]))
    return role, mgmt


def _kicked(role: ServerRole, reason: str) -> float:
    value = role.registry.get_sample_value(
        "vpnctl_agent_clients_kicked_total", {"role": "server", "reason": reason}
    )
    return value or 0.0


# --- server --------------------------------------------------------------------------------------


async def test_ccd_follows_desired_state_and_changed_clients_are_kicked(
    server: tuple[ServerRole, FakeManagement], pki: Pki, tmp_path: Path
) -> None:
    role, mgmt = await _serving(server, pki)
    ccd = tmp_path / "ccd"
    assert sorted(p.name for p in ccd.iterdir()) == ["apiserver", "node-1", "node-2"]
    assert "iroute 198.19.0.11 255.255.255.255" in (ccd / "node-1").read_text()
    assert mgmt.killed == []  # first write: nobody to kick

    mgmt.connect_client("node-1", client_id=1)
    mgmt.connect_client("node-2", client_id=2)
    await role.apply_desired(_desired(pki, node1_iroutes=["198.19.0.11/32", "198.19.65.0/24"]))
    assert "iroute 198.19.65.0 255.255.255.0" in (ccd / "node-1").read_text()
    assert mgmt.killed == ["node-1"]
    assert _kicked(role, "ccd_changed") == 1

    await role.apply_desired(
        _desired(pki, node1_iroutes=["198.19.0.11/32", "198.19.65.0/24"], with_node2=False)
    )
    assert not (ccd / "node-2").exists()
    assert mgmt.killed == ["node-1", "node-2"]
    assert _kicked(role, "removed") == 1
    assert not [p for p in ccd.iterdir() if p.name.startswith(".tmp-")]


async def test_crl_install_kicks_revoked_clients_and_refuses_a_foreign_crl(
    server: tuple[ServerRole, FakeManagement], pki: Pki, tmp_path: Path
) -> None:
    role, mgmt = await _serving(server, pki)
    mgmt.connect_client("node-1", client_id=1)
    mgmt.connect_client("node-2", client_id=2)
    source, target = tmp_path / "crl.pem", tmp_path / "crl-installed.pem"

    source.write_bytes(pki.crl(number=1))
    await role.install_crl()
    assert target.read_bytes() == source.read_bytes()
    assert mgmt.killed == []

    source.write_bytes(pki.crl("node-2", number=2))
    await role.install_crl()
    assert target.read_bytes() == source.read_bytes()
    assert mgmt.killed == ["node-2"]
    assert _kicked(role, "revoked") == 1
    assert role.revoked == {pki.serials["node-2"]}
    # The installed CRL's nextUpdate, as a Unix timestamp (VpnctlCRLExpiring reads it).
    expiry = role.registry.get_sample_value(
        "vpnctl_agent_crl_expiry_timestamp_seconds", {"role": "server"}
    )
    assert expiry == (NOW + DAY).timestamp()

    other = certs.new_ca(common_name="tenant-b", now=NOW, lifetime=DAY)
    installed = target.read_bytes()
    source.write_bytes(certs.build_crl(other, revoked=[], now=NOW, next_update=DAY, crl_number=1))
    with pytest.raises(MaterialError, match=r"crl\.pem: .*tenant-b"):
        await role.install_crl()
    assert target.read_bytes() == installed


async def test_a_node_replaced_under_its_name_is_not_kicked_for_its_predecessors_revocation(
    server: tuple[ServerRole, FakeManagement], pki: Pki, tmp_path: Path
) -> None:
    """node-2's machine was replaced: the desired state still lists the old node's serial
    next to the new one, and the CRL revokes the old. The new node, admitted with its own
    serial, stays connected; the server used to kick every connection named node-2 on
    every status poll, so the new node never kept its tunnel."""
    role, mgmt = await _serving(server, pki)
    fresh = certs.new_client_cert(pki.ca, common_name="node-2", now=NOW, lifetime=DAY)
    new_serial = certs.cert_info(fresh.cert_pem).serial
    doc = {
        "apiserver": {"common_name": "apiserver", "ifconfig_ip": "198.18.8.2",
                      "serial": f"{pki.serials['apiserver']:x}"},
        "clients": [{"common_name": "node-2", "ifconfig_ip": "198.18.8.12",
                     "iroutes": ["198.19.0.12/32"],
                     "serials": [f"{pki.serials['node-2']:x}", f"{new_serial:x}"]}],
    }  # fmt: skip
    await role.apply_desired(parse_desired(doc, path="/d.json", tunnel_cidr=TUNNEL))
    (tmp_path / "crl.pem").write_bytes(pki.crl("node-2", number=1))
    await role.install_crl()
    clock = role.clock
    assert isinstance(clock, ManualClock)
    answering = asyncio.create_task(role.authorizer.run())
    polling = asyncio.create_task(role._status_task())
    try:
        mgmt.notify(_ask("node-2", new_serial, cid=5))
        assert [(verb, cid) for verb, cid, _, _ in await _answers(mgmt, 1)] == [("auth", 5)]
        mgmt.connect_client("node-2", client_id=5)
        clock.advance(role.cfg.status_interval)
        await aeventually(lambda: "node-2" in role.connected, what="node-2 seen", interval=0)
        polls = mgmt.status_calls
        await role.install_crl()  # a CRL refresh, and another status poll
        clock.advance(role.cfg.status_interval)
        await aeventually(lambda: mgmt.status_calls > polls, what="another poll", interval=0)
        assert mgmt.killed == []
        assert _kicked(role, "revoked") == 0

        # The same node, had it been admitted with the revoked serial, goes.
        mgmt.notify(_ask("node-2", pki.serials["node-2"], cid=6))
        assert (await _answers(mgmt, 2))[1][:2] == ("deny", 6)
    finally:
        answering.cancel()
        polling.cancel()


async def test_kicks_wait_for_management_and_are_not_lost(
    server: tuple[ServerRole, FakeManagement], pki: Pki, tmp_path: Path
) -> None:
    role, mgmt = await _serving(server, pki)
    mgmt.connect_client("node-1", client_id=1)
    mgmt.fail_commands = True
    await role.apply_desired(_desired(pki, node1_iroutes=["198.19.65.0/24"]))
    assert role.pending_kicks == {"node-1": "ccd_changed"}
    mgmt.fail_commands = False
    await role.flush_kicks()
    assert role.pending_kicks == {}
    assert mgmt.killed == ["node-1"]


# --- connect time and round-trip time per node ------------------------------------------------


def _node_doc(pki: Pki, kubelets: dict[str, str]) -> DesiredState:
    """The apiserver and one node per KUBELETS entry ("node-N" -> "ip:port"), each
    routing its kubelet's address, so the probe goes to a real listener on this host."""
    doc = {
        "apiserver": {"common_name": "apiserver", "ifconfig_ip": "198.18.8.2",
                      "serial": f"{pki.serials['apiserver']:x}"},
        "clients": [
            {"common_name": cn, "ifconfig_ip": f"198.18.8.{10 + int(cn[-1])}",
             "iroutes": [f"{target.split(':')[0]}/32"], "kubelet": target,
             "serial": f"{pki.serials[cn]:x}"}
            for cn, target in sorted(kubelets.items())
        ],
    }  # fmt: skip
    return parse_desired(doc, path="/d.json", tunnel_cidr=TUNNEL)


async def _kubelet_listener(host: str) -> tuple[asyncio.Server, str]:
    """A real TCP listener standing in for a kubelet: the probe only needs the handshake."""

    def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    listener = await asyncio.start_server(accept, host, 0)
    return listener, f"{host}:{listener.sockets[0].getsockname()[1]}"


async def test_each_nodes_connect_time_and_rtt_are_exported_while_they_hold(
    server: tuple[ServerRole, FakeManagement], pki: Pki
) -> None:
    role, mgmt = server
    await _usable(role)
    clock = role.clock
    assert isinstance(clock, ManualClock)
    kubelet_1, target_1 = await _kubelet_listener("127.0.0.1")
    kubelet_2, target_2 = await _kubelet_listener("127.0.0.2")
    await role.apply_desired(_node_doc(pki, {"node-1": target_1, "node-2": target_2}))

    def sample(name: str, node: str) -> float | None:
        return role.registry.get_sample_value(name, {"role": "server", "node": node})

    def since(node: str) -> float | None:
        return sample("vpnctl_agent_node_connected_since_timestamp_seconds", node)

    def rtt(node: str) -> float | None:
        return sample("vpnctl_agent_node_rtt_seconds", node)

    async def ticking(probe: Callable[[], bool], what: str) -> None:
        """Move the manual clock past both polls' intervals until PROBE holds (the TCP
        probe itself is real I/O, so real time passes between tries)."""

        def tick() -> bool:
            clock.advance(max(role.cfg.status_interval, role.cfg.kubelet_probe_interval))
            return probe()

        await aeventually(tick, what=what, interval=0.01, timeout=5)

    an_hour_ago = NOW - timedelta(hours=1)
    polling = [asyncio.create_task(role._status_task()), asyncio.create_task(role._kubelet_task())]
    try:
        assert since("node-1") is None
        assert rtt("node-1") is None
        mgmt.connect_client("node-1", client_id=1, since=an_hour_ago)
        mgmt.connect_client("node-2", client_id=2)
        await ticking(
            lambda: rtt("node-1") is not None and rtt("node-2") is not None, "both nodes' RTT"
        )
        assert since("node-1") == an_hour_ago.timestamp()
        assert since("node-2") == NOW.timestamp()
        for node in ("node-1", "node-2"):
            value = rtt(node)
            assert value is not None
            assert 0 < value < role.cfg.kubelet_probe_timeout
            # The histogram counts the same probes the gauge shows the last of.
            count = sample("vpnctl_agent_kubelet_probe_seconds_count", node)
            assert count is not None
            assert count >= 1

        # node-1 reconnected between two polls: the new connection's time.
        del mgmt.clients["node-1"]
        mgmt.connect_client("node-1", client_id=3, since=NOW)
        await ticking(lambda: since("node-1") == NOW.timestamp(), "node-1's new connect time")

        # node-2's kubelet stops answering: its RTT is unknown, it is still connected.
        kubelet_2.close()
        await kubelet_2.wait_closed()
        await ticking(lambda: rtt("node-2") is None, "node-2's RTT removed")
        assert sample("vpnctl_agent_kubelet_reachable", "node-2") == 0
        assert since("node-2") == NOW.timestamp()
        assert rtt("node-1") is not None

        # node-1 disconnects: neither its connect time nor a stale RTT remains.
        del mgmt.clients["node-1"]
        await ticking(lambda: since("node-1") is None, "node-1's connect time removed")
        assert rtt("node-1") is None
        assert sample("vpnctl_agent_node_connected", "node-1") == 0

        # Back, then removed from the desired state: every series of node-1 goes.
        mgmt.connect_client("node-1", client_id=4)
        await ticking(lambda: rtt("node-1") is not None, "node-1's RTT back")
        await role.apply_desired(_node_doc(pki, {"node-2": target_2}))
        assert mgmt.killed == ["node-1"]
        polls = mgmt.status_calls  # and no later poll or probe brings a series back:
        await ticking(lambda: mgmt.status_calls > polls + 1, "two more polls")
        for name in (
            "vpnctl_agent_node_connected",
            "vpnctl_agent_node_connected_since_timestamp_seconds",
            "vpnctl_agent_node_rtt_seconds",
            "vpnctl_agent_kubelet_reachable",
            "vpnctl_agent_kubelet_probe_seconds_count",
        ):
            assert sample(name, "node-1") is None, name
        assert since("node-2") == NOW.timestamp()
    finally:
        for task in polling:
            task.cancel()
        kubelet_1.close()
        kubelet_2.close()


# --- client roles --------------------------------------------------------------------------------


def _node(tmp_path: Path, fake: FakeManagement) -> NodeRole:
    cfg = ClientRoleConfig(
        role="node",
        common=Common(state_dir=str(tmp_path / "state")),
        openvpn=ClientConfig(
            remotes=[("198.18.0.1", 1194)],
            ca="/ca.pem",
            cert="/c.pem",
            key="/c.key",
            tls_crypt_v2="/tc.key",
            management=str(tmp_path / "m.sock"),
        ),
        probe=ProbeSettings(target=(IPv4Address("198.18.8.1"), 7947)),
    )
    return NodeRole(
        cfg=cfg, registry=CollectorRegistry(), clock=ManualClock(wall=NOW), rng=random.Random(1),
        kernel_factory=_no_kernel, management_factory=lambda _path: fake,
    )  # fmt: skip


def _reconnects(role: NodeRole, reason: str) -> float:
    value = role.registry.get_sample_value(
        "vpnctl_agent_reconnects_total", {"role": "node", "reason": reason}
    )
    return value or 0.0


def _state(name: str, description: str = "") -> StateEvent:
    return StateEvent(time=NOW, name=name, description=description, local_ip=None, remote_ip=None)


async def test_client_reconnects_are_attributed_to_their_cause(tmp_path: Path) -> None:
    fake = FakeManagement()
    role = _node(tmp_path, fake)
    link = asyncio.create_task(role.link.run())
    try:
        await _usable(role)
        assert role.tunnel_up  # on_connect read the current state: CONNECTED
        gauge = role.registry.get_sample_value("vpnctl_agent_tunnel_up", {"role": "node"})
        assert gauge == 1

        await role.force_reconnect("probe", detail="3 probes missed")
        assert fake.signals == ["SIGUSR1"]
        role._apply_state(_state("RECONNECTING", "SIGUSR1"))
        # One tuple: a bare ``assert not role.tunnel_up`` after the ``assert role.tunnel_up``
        # above would make mypy call the rest unreachable (it keeps the narrowing).
        assert (_reconnects(role, "probe"), role.tunnel_up) == (1, False)
        assert role.conditions.reason("tunnel") == "openvpn state is RECONNECTING, not CONNECTED"

        role._apply_state(_state("CONNECTED", "SUCCESS"))
        role._apply_state(_state("RECONNECTING", "ping-restart"))
        assert _reconnects(role, "ping-restart") == 1
        assert _reconnects(role, "probe") == 1
    finally:
        link.cancel()
        with pytest.raises(asyncio.CancelledError):
            await link


# --- who may connect -------------------------------------------------------------------------


def _ask(cn: str, serial: int, *, cid: int, kind: str = "CONNECT") -> ClientAuthRequest:
    return ClientAuthRequest(kind="REAUTH" if kind == "REAUTH" else "CONNECT", cid=cid, kid=0,
                             env={"common_name": cn, "tls_serial_0": str(serial)})  # fmt: skip


async def _answers(mgmt: FakeManagement, count: int) -> list[tuple[str, int, int, str]]:
    async with asyncio.timeout(2):
        while len(mgmt.answers) < count:
            await asyncio.sleep(0.01)
    return mgmt.answers


async def test_openvpn_questions_are_answered_from_the_desired_state_and_the_crl(
    server: tuple[ServerRole, FakeManagement], pki: Pki, tmp_path: Path
) -> None:
    role, mgmt = await _serving(server, pki)
    role.authorizer.hold_seconds = 0.2  # an unknown serial is held that long, then denied
    answering = asyncio.create_task(role.authorizer.run())
    try:
        mgmt.notify(_ask("node-1", pki.serials["node-1"], cid=1))
        mgmt.notify(_ask("apiserver", pki.serials["node-1"] + 1, cid=2))  # an impostor
        mgmt.notify(_ask("apiserver", pki.serials["apiserver"], cid=3))
        first = await _answers(mgmt, 3)
        assert [(verb, cid) for verb, cid, _, _ in first] == [("auth", 1), ("auth", 3), ("deny", 2)]
        assert "was not issued by vpnctl for apiserver" in first[2][3]

        # node-1 is revoked: its next renegotiation is refused.
        (tmp_path / "crl.pem").write_bytes(pki.crl("node-1", number=1))
        await role.install_crl()
        mgmt.notify(_ask("node-1", pki.serials["node-1"], cid=1, kind="REAUTH"))
        verb, cid, _, reason = (await _answers(mgmt, 4))[3]
        assert (verb, cid) == ("deny", 1)
        assert "is revoked" in reason
    finally:
        answering.cancel()
    sample = role.registry.get_sample_value
    assert sample("vpnctl_agent_client_auth_total",
                  {"role": "server", "kind": "CONNECT", "result": "denied"}) == 1  # fmt: skip
    assert sample("vpnctl_agent_client_auth_total",
                  {"role": "server", "kind": "REAUTH", "result": "denied"}) == 1  # fmt: skip


async def test_questions_from_an_earlier_management_connection_are_never_answered() -> None:
    # If openvpn restarted in between, its client IDs start again: an answer for the old
    # question would admit whichever new client got that ID.
    mgmt = FakeManagement()
    link: list[tuple[int, FakeManagement | None]] = [(1, mgmt)]
    registry = CollectorRegistry()
    auth = ClientAuthorizer(
        client=lambda: link[0], decide=lambda _r: AuthVerdict(allow=True, reason="ok"),
        events=EventLog(logger=logging.getLogger("test"), role="server"), registry=registry,
        role="server",
    )  # fmt: skip
    auth.submit(_ask("node-1", 1, cid=7))
    link[0] = (2, mgmt)  # the link reconnected
    auth.submit(_ask("node-1", 1, cid=8))

    def unanswered() -> float:
        return (
            registry.get_sample_value(
                "vpnctl_agent_client_auth_total",
                {"role": "server", "kind": "CONNECT", "result": "unanswered"},
            )
            or 0.0
        )

    answering = asyncio.create_task(auth.run())
    try:
        assert [cid for _, cid, _, _ in await _answers(mgmt, 1)] == [8]
        assert unanswered() == 1  # cid 7 came on connection 1
        link[0] = (3, None)  # the link is down: nobody is answered (openvpn holds them)
        auth.submit(_ask("node-1", 1, cid=9))
        async with asyncio.timeout(2):
            while unanswered() < 2:
                await asyncio.sleep(0.01)
    finally:
        answering.cancel()
    assert [cid for _, cid, _, _ in mgmt.answers] == [8]


# --- several apiserver replicas ------------------------------------------------------------------


def _replicas_doc(pki: Pki, names: list[str]) -> DesiredState:
    """The first apiserver, a further apiserver client per NAMES (198.18.8.254 down), and
    node-1."""
    doc = {
        "apiserver": {"common_name": "apiserver", "ifconfig_ip": "198.18.8.2",
                      "serial": f"{pki.serials['apiserver']:x}"},
        "apiserver_replicas": [
            {"common_name": cn, "ifconfig_ip": f"198.18.8.{254 - i}",
             "serial": f"{pki.serials[cn]:x}"} for i, cn in enumerate(names)
        ],
        "clients": [{"common_name": "node-1", "ifconfig_ip": "198.18.8.11",
                     "iroutes": ["198.19.0.11/32"], "serial": f"{pki.serials['node-1']:x}"}],
    }  # fmt: skip
    return parse_desired(doc, path="/d.json", tunnel_cidr=TUNNEL)


async def test_every_apiserver_replica_is_admitted_may_initiate_and_goes_when_unlisted(
    server: tuple[ServerRole, FakeManagement], pki: Pki, tmp_path: Path
) -> None:
    role, mgmt = server
    for cn in ("apiserver-1", "apiserver-2"):
        issued = certs.new_client_cert(pki.ca, common_name=cn, now=NOW, lifetime=DAY)
        pki.serials[cn] = certs.cert_info(issued.cert_pem).serial
    await _usable(role)
    await role.apply_desired(_replicas_doc(pki, ["apiserver-1", "apiserver-2"]))
    ccd = tmp_path / "ccd"
    assert sorted(p.name for p in ccd.iterdir()) == [
        "apiserver", "apiserver-1", "apiserver-2", "node-1"]  # fmt: skip
    assert "ifconfig-push 198.18.8.253" in (ccd / "apiserver-2").read_text()
    # The firewall lets each apiserver client, and no node, open connections.
    policy = role._desired_policy()
    assert policy.apiserver_ips == tuple(
        IPv4Address(a) for a in ("198.18.8.2", "198.18.8.253", "198.18.8.254"))  # fmt: skip
    assert policy.owners == ((IPv4Network("198.18.8.11/32"), IPv4Network("198.19.0.11/32")),)

    role.authorizer.hold_seconds = 0.2
    answering = asyncio.create_task(role.authorizer.run())
    polling = asyncio.create_task(role._status_task())
    clock = role.clock
    assert isinstance(clock, ManualClock)
    try:
        mgmt.notify(_ask("apiserver", pki.serials["apiserver"], cid=1))
        mgmt.notify(_ask("apiserver-1", pki.serials["apiserver-1"], cid=2))
        mgmt.notify(_ask("apiserver-2", pki.serials["apiserver-2"], cid=3))
        mgmt.notify(_ask("apiserver-2", pki.serials["apiserver-1"], cid=4))  # not its own
        answers = await _answers(mgmt, 4)
        assert [(verb, cid) for verb, cid, _, _ in answers] == [
            ("auth", 1), ("auth", 2), ("auth", 3), ("deny", 4)]  # fmt: skip
        for cid, cn in enumerate(("apiserver", "apiserver-1", "apiserver-2"), start=1):
            mgmt.connect_client(cn, client_id=cid)
        clock.advance(role.cfg.status_interval)
        gauge = role.registry.get_sample_value
        await aeventually(
            lambda: gauge("vpnctl_agent_apiserver_connected", {"role": "server"}) == 3,
            what="three apiserver clients counted", interval=0,
        )  # fmt: skip
        assert mgmt.killed == []  # none evicted another

        # Scaled down to two replicas: the third is unlisted, kicked and refused.
        await role.apply_desired(_replicas_doc(pki, ["apiserver-1"]))
        assert mgmt.killed == ["apiserver-2"]
        assert _kicked(role, "removed") == 1
        assert not (ccd / "apiserver-2").exists()
        assert role._desired_policy().apiserver_ips == (
            IPv4Address("198.18.8.2"), IPv4Address("198.18.8.254"))  # fmt: skip
        assert gauge("vpnctl_agent_apiserver_connected", {"role": "server"}) == 2
        mgmt.notify(_ask("apiserver-2", pki.serials["apiserver-2"], cid=5))
        verb, cid, _, reason = (await _answers(mgmt, 5))[4]
        assert (verb, cid) == ("deny", 5)
        assert "not a client of this tunnel" in reason
    finally:
        answering.cancel()
        polling.cancel()
