"""Watch events map to tenant keys; observations and signed serials map to status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from typing import Any

from vpnctl.controller.interfaces import TenantRef
from vpnctl.controller.operator import key_of
from vpnctl.controller.tenant_server import record_signed
from vpnctl.controller.tenant_settings import MAX_SERIALS_PER_NODE
from vpnctl.controller.tenant_status import observation_fingerprint, observations_from_status
from vpnctl.reconcile.allocation import Allocation
from vpnctl.reconcile.status import NodeObservation


def obj(
    name: str, *, labels: dict[str, str] | None = None, spec: dict[str, str] | None = None
) -> dict[str, Any]:
    meta = {"name": name, "namespace": "ns", "labels": labels or {}}
    return {"metadata": meta, "spec": spec or {}}


def test_every_watched_kind_maps_to_its_tenant() -> None:
    ns = TenantRef("ns", "acme")
    assert key_of("cluster", obj("acme")) == ns
    assert key_of("tunnel", obj("acme")) == ns
    assert key_of("machine", obj("acme-md-0", spec={"clusterName": "acme"})) == ns
    assert key_of("machine", obj("m", labels={"cluster.x-k8s.io/cluster-name": "acme"})) == ns
    assert key_of("owned", obj("acme-vpn-ca", labels={"vpnctl.io/cluster": "acme"})) == ns
    kubeconfig = obj("acme-kubeconfig", labels={"cluster.x-k8s.io/cluster-name": "acme"})
    assert key_of("kubeconfig", kubeconfig) == ns
    # CAPI labels other Secrets too (bootstrap data): not a kubeconfig, no key.
    bootstrap = obj("acme-md-0-bootstrap", labels={"cluster.x-k8s.io/cluster-name": "acme"})
    assert key_of("kubeconfig", bootstrap) is None
    # A hosted apiserver Deployment (its pods each need a slot: apiserver_slots.py).
    assert key_of("apiserver", obj("acme-kube-apiserver",
                                   labels={"vpnctl.io/apiserver-for": "acme"})) == ns  # fmt: skip
    assert key_of("apiserver", obj("unlabelled")) is None
    assert key_of("owned", obj("stranger")) is None
    assert key_of("machine", obj("orphan")) is None


def test_status_rows_stand_in_for_a_server_that_does_not_answer() -> None:
    status = {
        "nodes": [
            {"name": "n1", "tunnelIP": "100.127.255.3", "connected": True,
             "since": "2030-01-01T00:00:00Z", "connectedSince": "2030-01-01T00:00:00Z",
             "rttSeconds": 0.002, "kubeletReachable": True},
            {"name": "n2", "tunnelIP": "100.127.255.4", "connected": False, "since": "x"},
            # Connected, but the time is the controller's own observation, not the server's.
            {"name": "n3", "tunnelIP": "100.127.255.5", "connected": True,
             "since": "2030-01-01T00:00:00Z"},
            {"name": "pending", "connected": False},
        ]
    }  # fmt: skip
    seen = observations_from_status(status)
    assert seen["n1"] == NodeObservation(
        node="n1",
        connected=True,
        connected_since=datetime(2030, 1, 1, tzinfo=UTC),
        rtt_seconds=0.002,
        kubelet_reachable=True,
    )
    assert not seen["n2"].connected
    assert seen["n3"] == NodeObservation(node="n3", connected=True)
    assert "pending" not in seen  # no tunnel, nothing to elect


def test_fingerprints_ignore_rtt_but_not_connectivity_or_a_reconnect() -> None:
    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    a = {"n": NodeObservation(node="n", connected=True, connected_since=t0, rtt_seconds=0.001)}
    b = {"n": NodeObservation(node="n", connected=True, connected_since=t0, rtt_seconds=0.009)}
    c = {"n": NodeObservation(node="n", connected=False)}
    later = t0 + timedelta(seconds=3)  # reconnected between two polls
    d = {"n": NodeObservation(node="n", connected=True, connected_since=later, rtt_seconds=0.001)}
    assert observation_fingerprint(a) == observation_fingerprint(b)
    assert observation_fingerprint(a) != observation_fingerprint(c)
    assert observation_fingerprint(a) != observation_fingerprint(d)
    assert observation_fingerprint(None) != observation_fingerprint({})


def test_signed_serials_are_recorded_once_per_node_and_bounded() -> None:
    allocations = (
        Allocation(machine="m1", node="n1", tunnel_ip=IPv4Address("100.127.255.3")),
        Allocation(machine="m2", node="n2", tunnel_ip=IPv4Address("100.127.255.4")),
    )
    out = record_signed(allocations, [("n1", "0a"), ("n1", "0A"), ("ghost", "ff"), ("n2", "zz")])
    assert out[0].serials == ("0a",)
    assert out[1].serials == ()
    many = [("n1", format(i, "x")) for i in range(1, 20)]
    bounded = record_signed(allocations, many)
    assert len(bounded[0].serials) == MAX_SERIALS_PER_NODE
    assert bounded[0].serial == format(19, "x")  # the newest is the current one
