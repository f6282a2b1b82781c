"""The data plane, end to end: real openvpn, the three agent roles, the lab topology.

One lab per transport (udp, tcp) is shared by every test in this module (`dataplane` in
conftest.py). The tests prove the properties DESIGN.md promises:

* the apiserver reaches every node's kubelet address and a pod behind every node (HTTPS
  targets stand there, `vpnctl.testenv.https_target`), through that node's own tunnel,
  and through nothing else; a long numbered stream arrives whole and in order;
* nodes can answer but never open a connection towards the apiserver side or another
  node, and it is the server's firewall that stops them;
* handshakes that must fail do fail: another tenant's CA, a revoked certificate, a
  client without a valid tls-crypt-v2 key (which never even reaches TLS); and a client
  revoked while connected is kicked within 2 s.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from ipaddress import IPv4Network

import pytest

import certs
from tests.netns.conftest import (
    DAY,
    READY,
    SERVER_HEALTH_PORT,
    ClientFiles,
    DataPlane,
    Listener,
    LogCursor,
    http_get,
    ip_out,
    link_bytes,
    route_get,
    tcp_connect,
)
from tests.netns.nsutil import NETNS_TIER
from tests.support.polling import eventually
from vpnctl.controller.observe import parse_server_metrics
from vpnctl.lab.probe import check_lines

pytestmark = NETNS_TIER

TENANT = IPv4Network("198.19.0.0/16")
STREAM_LINES = 100_000


# --- reachability -----------------------------------------------------------------------------


def test_apiserver_has_no_path_to_tenant_networks_but_tun(dataplane: DataPlane) -> None:
    api_ns = dataplane.plan.api_ns
    routes = json.loads(ip_out("-4", "-n", api_ns, "-j", "route", "show", "table", "all"))
    for r in routes:
        dst = r.get("dst", "")
        if r.get("type", "unicast") != "unicast" or dst in ("", "default"):
            assert dst != "default", f"the apiserver namespace has a default route: {r}"
            continue
        net = IPv4Network(dst if "/" in dst else f"{dst}/32")
        if net.overlaps(TENANT):
            assert r["dev"] == "tun0", f"route to tenant network off the tunnel: {r}"
    for n in dataplane.agent_nodes:
        for dst in (n.internal_ip, n.pod_ip):
            assert " dev tun0 " in route_get(api_ns, str(dst)) + " ", route_get(api_ns, str(dst))
    service_ip = str(dataplane.plan.service_cidr.network_address + 1)
    assert " dev tun0 " in route_get(api_ns, service_ip) + " "


def test_apiserver_reaches_every_node_and_pod_through_that_nodes_tunnel(
    dataplane: DataPlane,
) -> None:
    api_ns = dataplane.plan.api_ns
    ca = str(dataplane.target_ca_path)
    api_before = link_bytes(api_ns, "tun0")
    for n in dataplane.agent_nodes:
        node_before = link_bytes(n.ns, "tun0")
        others_before = {o.name: link_bytes(o.ns, "tun0") for o in dataplane.agent_nodes}
        for url in (dataplane.node_target_url(n), dataplane.pod_target_url(n)):
            url += "/healthz"
            started = time.monotonic()
            status, body = http_get(api_ns, url, cafile=ca, timeout=3)
            elapsed = time.monotonic() - started
            assert status == 200, f"GET {url} from the apiserver namespace: {status} {body}"
            print(f"{dataplane.proto} GET {url}: {status} in {elapsed * 1000:.1f} ms")
        node_rx, node_tx = link_bytes(n.ns, "tun0")
        # The node's own tunnel carried its traffic (both directions)...
        assert node_rx > node_before[0]
        assert node_tx > node_before[1]
        # ...and no other node's tunnel sent anything back for it. (Keepalives and probes
        # are tiny; an HTTPS exchange is kilobytes.)
        for o in dataplane.agent_nodes:
            if o.name != n.name:
                grew = link_bytes(o.ns, "tun0")[1] - others_before[o.name][1]
                assert grew < 1500, f"{o.name}'s tun sent {grew} bytes during {n.name}'s requests"
    api_rx, api_tx = link_bytes(api_ns, "tun0")
    assert api_tx - api_before[1] > 3000
    assert api_rx - api_before[0] > 3000


def test_a_long_stream_through_the_tunnel_arrives_whole_and_in_order(dataplane: DataPlane) -> None:
    n = dataplane.agent_nodes[-1]
    url = f"{dataplane.node_target_url(n)}/lines?count={STREAM_LINES}"
    started = time.monotonic()
    status, body = http_get(dataplane.plan.api_ns, url, cafile=str(dataplane.target_ca_path),
                            timeout=30)  # fmt: skip
    elapsed = time.monotonic() - started
    assert status == 200, f"GET {url} from the apiserver namespace: {status} {body[-500:]}"
    problem = check_lines(body.encode(), STREAM_LINES)
    assert problem is None, problem
    print(f"{dataplane.proto} {len(body)} bytes in {elapsed:.2f} s")


def test_server_probes_every_kubelet_and_reports_it_per_node(dataplane: DataPlane) -> None:
    names = [n.name for n in dataplane.agent_nodes]

    def all_reachable() -> bool:
        m = dataplane.metrics("server")
        return all(
            m.get("vpnctl_agent_node_connected", node=x) == 1
            and m.get("vpnctl_agent_kubelet_reachable", node=x) == 1
            and (m.get("vpnctl_agent_kubelet_probe_seconds_count", node=x) or 0) >= 1
            and (m.get("vpnctl_agent_node_bytes_total", node=x, direction="received") or 0) > 0
            for x in names
        )

    eventually(all_reachable, what="kubelet probes of every node", timeout=10, interval=0.2)
    m = dataplane.metrics("server")
    assert m.get("vpnctl_agent_apiserver_connected", role="server") == 1
    assert m.get("vpnctl_agent_ready", role="server") == 1

    # Each node's connect time (real openvpn's status) and RTT (the last kubelet probe
    # through its real tunnel), and the controller's reading of the same exposition.
    status, body = dataplane.scrape("server")
    assert status == 200
    seen = parse_server_metrics(body)
    now = time.time()
    for name in names:
        since = m.get("vpnctl_agent_node_connected_since_timestamp_seconds", node=name)
        rtt = m.get("vpnctl_agent_node_rtt_seconds", node=name)
        assert since is not None
        assert now - 3600 < since <= now + 1  # openvpn's clock is this host's
        assert rtt is not None
        assert 0 < rtt < 1.0  # kubelet_probe_timeout
        node = seen[name]
        assert node.connected
        assert node.connected_since is not None
        assert node.connected_since.timestamp() == since
        assert node.rtt_seconds is not None
        print(f"{dataplane.proto} {name}: connected {now - since:.0f} s ago, "
              f"RTT {node.rtt_seconds * 1000:.3f} ms")  # fmt: skip
    for name in names:

        def node_reports(n: str = name) -> bool:
            # Byte counters are sampled periodically, so they may trail the server's view.
            nm = dataplane.metrics(n)
            return (
                nm.get("vpnctl_agent_tunnel_up", role="node") == 1
                and (nm.get("vpnctl_agent_probe_rtt_seconds_count", role="node") or 0) >= 1
                and (
                    nm.get("vpnctl_agent_tunnel_bytes_total", role="node", direction="received")
                    or 0
                )
                > 0
            )

        eventually(
            node_reports,
            what=f"{name} reports its tunnel up, probed and carrying bytes",
            timeout=10,
            interval=0.2,
        )


# --- no initiation from nodes -------------------------------------------------------------------


def _forward_drops(dataplane: DataPlane, rule: str = 'iifname "tun0" counter') -> int:
    """Packets dropped by the forward chain's rule that starts with RULE (default: the
    last one, what came from a tunnel client and was not allowed)."""
    out = ip_out("netns", "exec", dataplane.plan.srv_ns, "nft", "list", "chain", "inet",
                 "vpnctl", "forward")  # fmt: skip
    m = re.search(rf"^\s*{re.escape(rule)} packets (\d+) bytes \d+ drop", out, re.MULTILINE)
    assert m, out
    return int(m.group(1))


def test_nodes_cannot_open_connections_towards_the_apiserver_side(dataplane: DataPlane) -> None:
    plan = dataplane.plan
    n1 = dataplane.agent_nodes[0]
    listener = Listener(plan.api_ns, "0.0.0.0", 18080)
    try:
        api_tunnel_ip = str(plan.tunnel_apiserver_ip)
        # Control: the listener is reachable through the tunnel (from the server pod).
        assert tcp_connect(plan.srv_ns, api_tunnel_ip, 18080) == "ok"
        drops = _forward_drops(dataplane)
        assert tcp_connect(n1.ns, api_tunnel_ip, 18080, timeout=1.5) == "timeout"
        assert _forward_drops(dataplane) > drops, "the server's firewall did not drop it"
        # Nor towards the server pod itself (its health port listens on every address).
        server_ip = str(plan.tunnel_server_ip)
        assert tcp_connect(n1.ns, server_ip, SERVER_HEALTH_PORT, timeout=1.0) == "timeout"
    finally:
        listener.close()


def test_nodes_cannot_reach_each_other_through_the_tunnel(dataplane: DataPlane) -> None:
    plan = dataplane.plan
    n1, n2 = dataplane.agent_nodes[0], dataplane.agent_nodes[1]
    listener = Listener(n2.ns, "0.0.0.0", 18081)
    n2_tunnel_ip = str(dataplane.tunnel_ip(n2.name))
    try:
        # Controls: the apiserver may open it through the tunnel; node-1 may over the LAN.
        assert tcp_connect(plan.api_ns, n2_tunnel_ip, 18081) == "ok"
        assert tcp_connect(n1.ns, str(n2.internal_ip), 18081) == "ok"
        drops = _forward_drops(dataplane)
        assert tcp_connect(n1.ns, n2_tunnel_ip, 18081, timeout=1.5) == "timeout"
        # node-2's InternalIP, forced into node-1's tunnel.
        ip_out("-n", n1.ns, "route", "add", f"{n2.internal_ip}/32", "dev", "tun0")
        try:
            assert " dev tun0 " in route_get(n1.ns, str(n2.internal_ip)) + " "
            assert tcp_connect(n1.ns, str(n2.internal_ip), 18081, timeout=1.5) == "timeout"
        finally:
            ip_out("-n", n1.ns, "route", "del", f"{n2.internal_ip}/32", "dev", "tun0")
        assert _forward_drops(dataplane) >= drops + 2
    finally:
        listener.close()


# --- handshakes that must fail -------------------------------------------------------------------


def _foreign_client(dataplane: DataPlane) -> ClientFiles:
    """A client of another tenant: its own CA, a tls-crypt-v2 key that is valid here."""
    now = datetime.now(UTC)
    other_ca = certs.new_ca(common_name="tenant-b", now=now, lifetime=DAY)
    issued = certs.new_client_cert(other_ca, common_name="intruder", now=now, lifetime=DAY)
    d = dataplane.base / "pki-b"
    d.mkdir(exist_ok=True)
    files = ClientFiles(
        cn="intruder",
        cert=d / "intruder.pem",
        key=d / "intruder.key",
        tc=d / "intruder.tc",
        serial=certs.cert_info(issued.cert_pem).serial,
    )
    files.cert.write_bytes(issued.cert_pem)
    files.key.write_bytes(issued.key_pem)
    files.tc.write_bytes(certs.new_tls_crypt_v2_client_key(dataplane.pki.tc_server, now=now))
    return files


def test_certificate_from_another_tenants_ca_is_refused(dataplane: DataPlane) -> None:
    server_log = LogCursor(dataplane.server_openvpn_log)
    client = dataplane.raw_client("intruder", dev="tun1", files=_foreign_client(dataplane))
    try:
        server_log.wait_for(r"VERIFY ERROR: depth=0.*CN=intruder", timeout=10)
        client_log = LogCursor(client.log)
        client_log.offset = 0
        client_log.never(READY, within=2)
    finally:
        client.stop()


def test_revoked_certificate_is_refused(dataplane: DataPlane) -> None:
    server_log = LogCursor(dataplane.server_openvpn_log)
    client = dataplane.raw_client("revoked-at-start", dev="tun2")
    try:
        server_log.wait_for(
            r"VERIFY ERROR: depth=0, error=certificate revoked.*CN=revoked-at-start", timeout=10
        )
        client_log = LogCursor(client.log)
        client_log.offset = 0
        client_log.never(READY, within=2)
    finally:
        client.stop()


@pytest.mark.parametrize("key", ["wrapped-by-another-server", "none"])
def test_client_without_valid_tls_crypt_v2_key_gets_no_tls_at_all(
    dataplane: DataPlane, key: str
) -> None:
    server_log = LogCursor(dataplane.server_openvpn_log)
    if key == "none":
        client = dataplane.raw_client("wrong-tc", dev="tun5", tls_crypt=False, label="no-tc")
        refused = r"TLS Error: could not determine wrapping from"
    else:
        client = dataplane.raw_client("wrong-tc", dev="tun3")
        refused = r"client key authentication error|Can not unwrap tls-crypt-v2"
    try:
        line = server_log.wait_for(refused, timeout=10)
        print(f"{dataplane.proto} {key}: server: {line}")
        client_log = LogCursor(client.log)
        client_log.offset = 0
        # "TLS: Initial packet from" is the client's first packet *from* the server: never.
        client_log.never(rf"{READY}|Initial packet from|VERIFY", within=3)
        assert "CN=wrong-tc" not in server_log.new(), "the server got as far as TLS"
    finally:
        client.stop()


def test_connected_client_is_kicked_within_2s_of_its_revocation(dataplane: DataPlane) -> None:
    victim = dataplane.pki.clients["victim"]
    revoked_before = list(dataplane.revoked)
    client = dataplane.raw_client("victim", dev="tun4")
    try:
        client_log = LogCursor(client.log)
        client_log.offset = 0
        client_log.wait_for(READY, timeout=15)
        eventually(
            lambda: (
                dataplane.metrics("server").get("vpnctl_agent_node_connected", node="victim") == 1
            ),
            what="the server to list victim as connected",
            timeout=5,
            interval=0.1,
        )
        kicked_before = dataplane.metrics("server").total(
            "vpnctl_agent_clients_kicked_total", reason="revoked"
        )
        after_connect = LogCursor(client.log)
        server_log = LogCursor(dataplane.server_openvpn_log)
        started = time.monotonic()
        dataplane.write_crl([*revoked_before, victim.serial])
        after_connect.wait_for(r"RESTART|server-pushed-connection-reset|Connection reset|SIGUSR1",
                               timeout=2.0)  # fmt: skip
        elapsed = time.monotonic() - started
        print(f"{dataplane.proto}: connected client kicked {elapsed * 1000:.0f} ms after its CRL")
        assert elapsed < 2.0
        assert (
            dataplane.metrics("server").total("vpnctl_agent_clients_kicked_total", reason="revoked")
            >= kicked_before + 1
        )
        # And it stays out: its next handshake meets the new CRL.
        server_log.wait_for(r"VERIFY ERROR: depth=0, error=certificate revoked.*CN=victim",
                            timeout=10)  # fmt: skip
        after_kick = LogCursor(client.log)
        after_kick.never(READY, within=2)
        # Kicked once, not again for each `status` that still lists the dying instance.
        m = dataplane.metrics("server")
        assert m.total("vpnctl_agent_clients_kicked_total", reason="revoked") == kicked_before + 1
        assert m.get("vpnctl_agent_node_connected", node="victim") == 0
    finally:
        client.stop()
        dataplane.write_crl(revoked_before)  # the shared data plane as it was
