"""The revocation book (vpnctl.reconcile.revocation_book): what is revoked, and until when."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import certs
from tests.support import capi
from vpnctl.reconcile.diff import needs_update
from vpnctl.reconcile.errors import PermanentError
from vpnctl.reconcile.revocation_book import (
    IssuedCert,
    LiveMachine,
    RevocationBook,
    live_machines,
    parse_book,
    prune,
    render_book,
    revoke_gone,
    server_config_after_revocation,
    with_issued,
)

NOW = datetime(2030, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)
M1 = LiveMachine(name="m-1", node="node-1")
M2 = LiveMachine(name="m-2", node="node-2")


def issued(serial: int, node: str, *, days: int = 30, machine: str | None = None) -> IssuedCert:
    return IssuedCert(serial=serial, node=node, machine=machine, not_after=NOW + days * DAY)


def test_a_revoked_serial_stays_until_its_own_certificate_expires() -> None:
    """Node certificates live 30 days (--node-cert-lifetime) while a Tunnel's
    clientLifetime may be a day: the serial must outlive the latter."""
    book = with_issued(RevocationBook(), [issued(7, "node-2", days=30, machine="m-2")])
    book, newly = revoke_gone(book, machines=[M1], now=NOW)
    assert newly == {7}
    assert set(book.revoked) == {7}
    assert not book.issued
    # Long past any clientLifetime, but before the certificate's not_after: still listed.
    assert set(prune(book, now=NOW + 29 * DAY).revoked) == {7}
    # Within the skew margin after not_after: still listed.
    assert set(prune(book, now=NOW + 30 * DAY).revoked) == {7}
    gone = prune(book, now=NOW + 30 * DAY + certs.CLOCK_SKEW + timedelta(seconds=1))
    assert gone.revoked == {}


def test_every_certificate_of_a_node_is_recorded_and_revoked_no_cut_by_count() -> None:
    many = [issued(100 + i, "node-2", days=1 + i, machine="m-2") for i in range(40)]
    book = with_issued(RevocationBook(), many)
    assert len(book.issued) == 40
    book, newly = revoke_gone(book, machines=[M1], now=NOW)
    assert newly == {c.serial for c in many}


def test_revocation_follows_the_machine_that_vouched_not_only_the_node_name() -> None:
    """A new Machine that reuses the node name does not keep the old one's certificate."""
    book = with_issued(RevocationBook(), [issued(7, "node-2", machine="m-2")])
    replaced = LiveMachine(name="m-2b", node="node-2")
    book, newly = revoke_gone(book, machines=[M1, replaced], now=NOW)
    assert newly == {7}
    # Without a known Machine, any live Machine of that node keeps it.
    book = with_issued(RevocationBook(), [issued(8, "node-2")])
    kept, newly = revoke_gone(book, machines=[replaced], now=NOW)
    assert newly == frozenset()
    assert set(kept.issued) == {8}


def test_what_the_book_knows_is_never_overwritten_or_unrevoked() -> None:
    book = with_issued(RevocationBook(), [issued(7, "node-2", machine="m-2")])
    book, _ = revoke_gone(book, machines=[M1], now=NOW)
    # A late report of the same serial does not bring it back to "issued".
    again = with_issued(book, [issued(7, "node-2", machine="m-2")])
    assert again is book
    # A machine learnt later fills in; a report without one does not erase it.
    book = with_issued(RevocationBook(), [issued(9, "node-1")])
    book = with_issued(book, [issued(9, "node-1", machine="m-1")])
    assert book.issued[9].machine == "m-1"
    assert with_issued(book, [issued(9, "node-1")]).issued[9].machine == "m-1"


def test_expired_issued_certificates_are_forgotten() -> None:
    book = with_issued(RevocationBook(), [issued(7, "node-1", days=1)])
    assert prune(book, now=NOW + 2 * DAY).issued == {}


def test_the_book_round_trips_and_a_corrupt_one_is_an_error() -> None:
    book = with_issued(
        RevocationBook(ca="ab" * 32, crl_number=5),
        [issued(7, "node-1", machine="m-1"), issued(8, "node-2")],
    )
    book, _ = revoke_gone(book, machines=[M1], now=NOW)
    text = render_book(book)
    assert parse_book(text, where="test") == book
    for bad in ("", "{}", json.dumps({"format": 1, "revoked": [{"serial": "zz"}]})):
        with pytest.raises(PermanentError) as err:
            parse_book(bad, where="ConfigMap ns/x-vpn-revocations")
        assert err.value.reason == "CorruptRevocations"
        assert "ConfigMap ns/x-vpn-revocations" in err.value.message


def test_machines_being_deleted_are_not_live() -> None:
    deleting = capi.machine(name="m-2", node="node-2", internal_ip="198.19.0.12")
    deleting["metadata"]["deletionTimestamp"] = "2030-01-01T00:00:00Z"
    machines = [capi.machine(name="m-1", node="node-1", internal_ip="198.19.0.11"), deleting]
    assert live_machines(machines) == (M1,)


def _server_cm(clients: list[str], crl: str) -> dict[str, Any]:
    desired = {
        "apiserver": {"common_name": "vpnctl-apiserver"},
        "clients": [{"common_name": c, "serial": "1"} for c in clients],
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "t-vpn-server",
            "namespace": "ns",
            "labels": {"vpnctl.io/cluster": "t"},
            "annotations": {"vpnctl.io/desired-hash": "old"},
            "ownerReferences": [{"kind": "Tunnel", "name": "t", "uid": "u"}],
            "uid": "live-uid",
        },
        "data": {"crl.pem": crl, "desired.json": json.dumps(desired), "server.json": "{}"},
    }


def test_with_an_invalid_spec_the_server_config_drops_gone_nodes_and_takes_the_crl() -> None:
    live = _server_cm(["node-1", "node-2"], "OLD CRL")
    machines = [capi.machine(name="m-1", node="node-1", internal_ip="198.19.0.11")]
    body = server_config_after_revocation(live, crl_pem=b"NEW CRL", machines=machines)
    assert body is not None
    assert body["data"]["crl.pem"] == "NEW CRL"
    desired = json.loads(body["data"]["desired.json"])
    assert [c["common_name"] for c in desired["clients"]] == ["node-1"]
    assert desired["apiserver"] == {"common_name": "vpnctl-apiserver"}
    assert body["data"]["server.json"] == "{}"
    assert body["metadata"]["ownerReferences"] == live["metadata"]["ownerReferences"]
    assert needs_update(live, body)
    # Nothing to change: nothing to write.
    same = _server_cm(["node-1"], "NEW CRL")
    assert server_config_after_revocation(same, crl_pem=b"NEW CRL", machines=machines) is None
