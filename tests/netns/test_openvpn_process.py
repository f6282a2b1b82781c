"""Real openvpn, run from our rendered configs, supervised and driven through management.

Two fresh namespaces (server and client) joined by a veth in 198.19.0.0/30; the tunnel is
198.18.8.0/24. For UDP and TCP this proves, with real openvpn 2.6:

- `openvpn --config` runs the files render_server / render_client / render_ccd write;
- the client gets its CCD `ifconfig-push` address and pushed route, the server its `route`;
- ManagementClient.status() lists the client with its virtual address;
- the client-side management client sees CONNECTED as a real-time event;
- client_kill() disconnects the client (it then reconnects on its own);
- a client without a CCD file is refused (ccd-exclusive);
- Supervisor.restart() of the server (old exits before new starts) and the client recovers;
- with `management-client-auth`, every client waits for the management client's answer
  (here the test answers client-auth for everyone; the agent's policy is tested with the
  data plane), and openvpn runs as nobody after start while all of the above still works.

Material comes from `certs`; every wait polls against a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

import certs
from agent.openvpn.client_auth import ClientAuthRequest
from agent.openvpn.config import (
    CCDEntry,
    ClientConfig,
    Proto,
    ServerConfig,
    render_ccd,
    render_client,
    render_server,
)
from agent.openvpn.management import Event, ManagementClient, StateEvent
from agent.openvpn.supervisor import Supervisor
from tests.netns.nsutil import NETNS_TIER, NsEnd, netns_pair

OPENVPN = shutil.which("openvpn") or "/usr/sbin/openvpn"

pytestmark = [
    *NETNS_TIER,
    pytest.mark.skipif(not os.path.exists(OPENVPN), reason="openvpn is not installed"),
]

TUNNEL = IPv4Network("198.18.8.0/24")
NODE_IP = IPv4Address("198.18.8.10")
NODE_IROUTE = IPv4Network("198.19.100.0/24")
PUSHED = IPv4Network("198.19.200.0/24")
SERVER_UNDERLAY = "198.19.0.1/30"
CLIENT_UNDERLAY = "198.19.0.2/30"
PORT = 1194
DAY = timedelta(days=1)


async def eventually(
    pred: Callable[[], Awaitable[bool]], *, timeout: float, what: str, diag: Callable[[], str]
) -> None:
    deadline = time.monotonic() + timeout
    while not await pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{diag()}")
        await asyncio.sleep(0.1)


async def wait_state(
    events: AsyncIterator[Event],
    name: str,
    *,
    timeout: float,
    diag: Callable[[], str],
) -> StateEvent:
    """The next real-time state event called `name` (earlier ones are skipped)."""
    seen: list[str] = []
    try:
        async with asyncio.timeout(timeout):
            async for ev in events:
                if isinstance(ev, StateEvent):
                    seen.append(ev.name)
                    if ev.name == name:
                        return ev
    except TimeoutError:
        pass
    raise AssertionError(f"no {name} state event within {timeout}s; saw {seen}\n{diag()}")


def _openvpn_pids(*namespaces: str) -> list[int]:
    pids = []
    for ns in namespaces:
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
        for text in out.stdout.split():
            with contextlib.suppress(OSError):
                if os.path.basename(os.readlink(f"/proc/{text}/exe")) == "openvpn":
                    pids.append(int(text))
    assert pids, f"no openvpn in {namespaces}"
    return pids


def _uid(pid: int) -> int:
    """The process's uid; fails unless real, effective, saved and fs uid are all one."""
    status = Path(f"/proc/{pid}/status").read_text()
    (line,) = [ln for ln in status.splitlines() if ln.startswith("Uid:")]
    (uid,) = {int(u) for u in line.split()[1:]}
    return uid


def ip_out(ns: str, *argv: str) -> str:
    return subprocess.run(
        ["ip", "-n", ns, *argv], capture_output=True, text=True, check=True, timeout=10
    ).stdout


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Short, so management socket paths stay under the 107-byte unix socket limit.
    d = Path(tempfile.mkdtemp(prefix="vto-"))
    d.chmod(0o755)  # openvpn, as nobody after start, re-reads the CRL and CCD in here
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def namespaces() -> Iterator[tuple[NsEnd, NsEnd]]:
    with netns_pair(suffixes=("srv", "cli"), addrs=(SERVER_UNDERLAY, CLIENT_UNDERLAY)) as pair:
        yield pair


class Material:
    """A tenant's PKI written to files: CA, server, tls-crypt-v2 keys, clients on demand."""

    def __init__(self, d: Path) -> None:
        self.dir = d
        now = datetime.now(UTC)
        self.ca = certs.new_ca(common_name="tenant-ca", now=now, lifetime=2 * DAY)
        server = certs.new_server_cert(self.ca, common_name="vpn-server", now=now, lifetime=2 * DAY)
        self.tc_server = certs.new_tls_crypt_v2_server_key()
        self.ca_path = self.write("ca.crt", self.ca.cert_pem)
        self.server_cert = self.write("server.crt", server.cert_pem)
        self.server_key = self.write("server.key", server.key_pem)
        self.tc_server_path = self.write("tc-server.key", self.tc_server)
        crl = certs.build_crl(self.ca, revoked=[], now=now, next_update=DAY, crl_number=1)
        self.crl = self.write("crl.pem", crl)
        os.chmod(self.crl, 0o644)  # re-read by openvpn after it dropped root

    def write(self, name: str, data: bytes) -> str:
        path = self.dir / name
        path.write_bytes(data)
        path.chmod(0o600)
        return str(path)

    def client(self, cn: str) -> tuple[str, str, str]:
        now = datetime.now(UTC)
        issued = certs.new_client_cert(self.ca, common_name=cn, now=now, lifetime=2 * DAY)
        tc = certs.new_tls_crypt_v2_client_key(self.tc_server, now=now)
        return (
            self.write(f"{cn}.crt", issued.cert_pem),
            self.write(f"{cn}.key", issued.key_pem),
            self.write(f"{cn}.tc", tc),
        )


def log_tail(*paths: Path, lines: int = 40) -> str:
    out = []
    for p in paths:
        text = p.read_text(errors="replace").splitlines() if p.exists() else ["(no log)"]
        out.append(f"--- {p.name} (last {lines} lines)\n" + "\n".join(text[-lines:]))
    return "\n".join(out)


def supervise(name: str, ns: str, conf: str, log: Path, **kw: object) -> Supervisor:
    return Supervisor(
        name=name,
        argv=["ip", "netns", "exec", ns, OPENVPN, "--config", conf],
        rng=random.Random(0),
        log_path=str(log),
        backoff_initial=0.5,
        backoff_max=2.0,
        stop_timeout=5.0,
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("proto", ["udp", "tcp"])
async def test_rendered_configs_run_in_real_openvpn(
    proto: Proto, workdir: Path, namespaces: tuple[NsEnd, NsEnd]
) -> None:
    srv_ns, cli_ns = namespaces
    mat = Material(workdir)
    ccd = workdir / "ccd"
    ccd.mkdir()
    server_log, client_log, stranger_log = (workdir / f"{n}.log" for n in ("s", "c", "x"))

    def diag() -> str:
        return log_tail(server_log, client_log, stranger_log)

    server_conf = mat.write(
        "server.conf",
        render_server(
            ServerConfig(
                proto=proto,
                port=PORT,
                listen=IPv4Address(SERVER_UNDERLAY.split("/")[0]),
                tunnel_cidr=TUNNEL,
                ca=mat.ca_path,
                cert=mat.server_cert,
                key=mat.server_key,
                crl=mat.crl,
                tls_crypt_v2=mat.tc_server_path,
                ccd_dir=str(ccd),
                management=str(workdir / "s.sock"),
                routes=[NODE_IROUTE],
                status_file=str(workdir / "status"),
            )
        ).encode(),
    )
    (ccd / "node-1").write_text(
        render_ccd(
            CCDEntry(
                common_name="node-1",
                ifconfig_ip=NODE_IP,
                iroutes=[NODE_IROUTE],
                push_routes=[PUSHED],
            ),
            tunnel_cidr=TUNNEL,
        )
    )

    def client_conf(cn: str) -> str:
        cert, key, tc = mat.client(cn)
        return mat.write(
            f"{cn}.conf",
            render_client(
                ClientConfig(
                    proto=proto,
                    remotes=[(SERVER_UNDERLAY.split("/")[0], PORT)],
                    ca=mat.ca_path,
                    cert=cert,
                    key=key,
                    tls_crypt_v2=tc,
                    management=str(workdir / f"{cn}.sock"),
                )
            ).encode(),
        )

    stranger_exits: list[int] = []
    server_sup = supervise("openvpn-server", srv_ns.ns, server_conf, server_log)
    client_sup = supervise("openvpn-node-1", cli_ns.ns, client_conf("node-1"), client_log)
    stranger_sup = supervise(
        "openvpn-stranger",
        cli_ns.ns,
        client_conf("stranger"),
        stranger_log,
        on_exit=stranger_exits.append,
    )
    server_mc = ManagementClient(str(workdir / "s.sock"))
    client_mc = ManagementClient(str(workdir / "node-1.sock"))

    async with AsyncExitStack() as stack:
        tasks: list[asyncio.Task[None]] = []

        async def cleanup() -> None:
            for mc in (server_mc, client_mc):
                await mc.close()
            for sup in (stranger_sup, client_sup, server_sup):
                await sup.stop()
            for t in tasks:
                await t

        stack.push_async_callback(cleanup)

        # The client first: its management socket is up long before it can connect, so
        # the CONNECTED transition is seen as a real-time event, not raced.
        tasks.append(asyncio.create_task(client_sup.run()))
        await client_mc.connect(timeout=15)
        await client_mc.enable_state_events()
        client_events = client_mc.events()

        tasks.append(asyncio.create_task(server_sup.run()))
        await server_mc.connect(timeout=15)
        answered: list[ClientAuthRequest] = []

        async def answer_auth() -> None:
            # Stands in for the server role: admit everyone (ccd-exclusive still applies).
            while True:
                if server_mc.connected:
                    async for ev in server_mc.events():
                        if isinstance(ev, ClientAuthRequest):
                            answered.append(ev)
                            await server_mc.client_auth(ev.cid, ev.kid)
                await asyncio.sleep(0.1)

        auth_task = asyncio.create_task(answer_auth())
        stack.callback(auth_task.cancel)

        connected = await wait_state(client_events, "CONNECTED", timeout=45, diag=diag)
        assert connected.local_ip == str(NODE_IP)
        first = answered[0]
        assert (first.kind, first.common_name) == ("CONNECT", "node-1")
        assert first.serial == certs.cert_info(Path(workdir / "node-1.crt").read_bytes()).serial
        # openvpn dropped root once started; it still answers management and routes.
        assert {_uid(pid) for pid in _openvpn_pids(srv_ns.ns, cli_ns.ns)} == {65534}
        assert (await client_mc.state()).name == "CONNECTED"

        # Addresses and routes came from our CCD and server config.
        assert f"inet {NODE_IP}/24" in ip_out(cli_ns.ns, "-4", "addr", "show", "dev", "tun0")
        assert f"{PUSHED} via 198.18.8.1 dev tun0" in ip_out(cli_ns.ns, "-4", "route")
        assert f"{NODE_IROUTE} via" in ip_out(srv_ns.ns, "-4", "route", "show", "dev", "tun0")

        (node,) = [c for c in await server_mc.status() if c.common_name == "node-1"]
        assert node.virtual_address == NODE_IP
        assert node.real_address.startswith("198.19.0.2:")
        assert node.client_id is not None

        # client_kill disconnects it; it comes back by itself with a new client id.
        assert await server_mc.client_kill("nobody") is False
        assert await server_mc.client_kill("node-1") is True
        await wait_state(client_events, "RECONNECTING", timeout=15, diag=diag)
        await wait_state(client_events, "CONNECTED", timeout=30, diag=diag)

        async def node_back_with_new_id() -> bool:
            return any(
                c.common_name == "node-1"
                and c.client_id != node.client_id
                and c.virtual_address == NODE_IP
                for c in await server_mc.status()
            )

        await eventually(node_back_with_new_id, timeout=15, what="node-1 back", diag=diag)

        # ccd-exclusive: a valid certificate without a CCD file is refused, and its
        # openvpn gives up (AUTH_FAILED), which its supervisor sees as an exit.
        tasks.append(asyncio.create_task(stranger_sup.run()))

        async def stranger_refused() -> bool:
            return bool(stranger_exits) and "client-config-dir authentication failed" in (
                server_log.read_text(errors="replace")
            )

        await eventually(stranger_refused, timeout=45, what="stranger refused", diag=diag)
        assert "AUTH_FAILED" in stranger_log.read_text(errors="replace")
        # A refused client can still be listed for a moment (openvpn keeps the instance
        # until it goes away), but never with a tunnel address.
        assert all(
            c.virtual_address is None
            for c in await server_mc.status()
            if c.common_name == "stranger"
        )
        await stranger_sup.stop()

        # Restarting the server: the old process exits before the new one starts, and the
        # client recovers without help.
        old_pid = server_sup.pid
        await server_sup.restart()
        assert server_sup.pid not in (None, old_pid)
        assert server_sup.restarts == 1

        async def server_mc_reconnected() -> bool:
            if not server_mc.connected:
                try:
                    await server_mc.connect(timeout=1)
                except Exception:
                    return False
            return any(c.common_name == "node-1" for c in await server_mc.status())

        await eventually(server_mc_reconnected, timeout=45, what="node-1 after restart", diag=diag)
        assert "Address already in use" not in server_log.read_text(errors="replace")
        assert client_sup.restarts == 0  # the client process recovered in place
