"""Two hosted apiserver replicas at once, over real openvpn: each with its own identity
and tunnel address, each reaching every node's HTTPS target, neither evicting the other.

The second replica is an apiserver role on the spare machine (its namespace reaches the
server like a pod of the service cluster would), with the certificate of apiserver slot
1; the server's desired state is the one the controller renders for two apiserver pods
(vpnctl/reconcile/apiserver_slots.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.netns.conftest import DataPlane, Metrics, http_get, ip_out
from tests.netns.nsutil import NETNS_TIER
from tests.support.polling import eventually
from vpnctl.lab.netns_tenant import signed
from vpnctl.reconcile.apiserver_slots import Slot, replica_block, slot_common_name

pytestmark = NETNS_TIER

REPLICA = "apiserver-1"  # the second replica's agent (process, directory)


def _reconnects(m: Metrics) -> float:
    return m.total("vpnctl_agent_reconnects_total")


@pytest.fixture
def two_apiservers(dataplane: DataPlane) -> Iterator[DataPlane]:
    dp = dataplane
    cn = slot_common_name(1)
    files = dp.pki.client(cn)
    cidr = dp.tenant.tenant.spec.tunnel_cidr
    slots = (
        Slot(index=0, common_name=slot_common_name(0), tunnel_ip=dp.tenant.tenant.spec.apiserver_ip,
             pod="api-a", pod_uid="uid-a"),
        Slot(index=1, common_name=cn, tunnel_ip=replica_block(cidr)[0], pod="api-b",
             pod_uid="uid-b"),
    )  # fmt: skip
    serials = {c: f.serial for c, f in dp.pki.clients.items()}
    doc = dp.tenant.desired_state(
        apiserver_serial=dp.pki.clients[slot_common_name(0)].serial,
        allocations=signed(dp.tenant, serials),
        apiserver_slots=slots,
        replica_serials={cn: format(files.serial, "x")},
    )
    dp.write_desired(doc)
    try:
        dp.start_agent(REPLICA, role="apiserver", ns=dp.spare.ns,
                       config=dp.client_config("apiserver"), identity=cn)  # fmt: skip
        yield dp
    finally:
        proc = dp.procs.pop(REPLICA, None)
        if proc is not None:
            proc.stop()
        dp.write_desired(dp.desired_doc())


@pytest.mark.spoils_dataplane
def test_two_apiserver_replicas_each_reach_every_node_and_neither_evicts_the_other(
    two_apiservers: DataPlane,
) -> None:
    dp = two_apiservers
    dp.wait_ready(REPLICA, "apiserver", timeout=45)

    def both_connected() -> bool:
        return dp.metrics("server").get("vpnctl_agent_apiserver_connected", role="server") == 2

    eventually(both_connected, what="two apiserver clients connected", timeout=30, interval=0.2)
    before = {name: _reconnects(dp.metrics(name)) for name in ("apiserver", REPLICA)}
    kicked_before = dp.metrics("server").total("vpnctl_agent_clients_kicked_total")
    ca = str(dp.target_ca_path)
    for _round in range(3):
        for ns, who in ((dp.plan.api_ns, "apiserver"), (dp.spare.ns, REPLICA)):
            for n in dp.agent_nodes:
                url = f"{dp.node_target_url(n)}/healthz"
                status, body = http_get(ns, url, cafile=ca, timeout=3)
                assert status == 200, f"GET {url} from {who}: {status} {body}"
    # Both still connected, neither reconnected, the server kicked nobody.
    assert both_connected()
    after = {name: _reconnects(dp.metrics(name)) for name in ("apiserver", REPLICA)}
    assert after == before, f"reconnects during the requests: {before} -> {after}"
    assert dp.metrics("server").total("vpnctl_agent_clients_kicked_total") == kicked_before
    # Each has its own address on its tun: the one its slot has in desired.json.
    cidr = dp.tenant.tenant.spec.tunnel_cidr
    assert _tun_ip(dp.plan.api_ns) == str(dp.tenant.tenant.spec.apiserver_ip)
    assert _tun_ip(dp.spare.ns) == str(replica_block(cidr)[0])


def _tun_ip(ns: str) -> str:
    (link,) = json.loads(ip_out("-4", "-n", ns, "-j", "addr", "show", "dev", "tun0"))
    return str(link["addr_info"][0]["local"])
