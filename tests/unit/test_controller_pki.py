"""CRL decisions: numbers only grow, revocations stick until expiry, refreshed early."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

import certs
from vpnctl.controller import pki

NOW = datetime(2030, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)
KEEP = timedelta(days=30)


@pytest.fixture(scope="module")
def ca() -> certs.Issued:
    return certs.new_ca(common_name="tenant-vpn-ca", now=NOW - DAY, lifetime=timedelta(days=3650))


def test_a_first_crl_is_issued_empty_with_number_one(ca: certs.Issued) -> None:
    plan = pki.plan_crl(ca=ca, current_pem=None, revoke=(), now=NOW, keep_for=KEEP)
    assert plan.changed
    assert plan.problem is None
    assert certs.crl_serials(plan.pem, ca_pem=ca.cert_pem) == frozenset()
    state = pki.read_crl(plan.pem, ca_pem=ca.cert_pem)
    assert state.number == 1
    assert state.next_update == NOW + pki.DEFAULT_CRL_LIFETIME
    assert plan.refresh_at == NOW + pki.DEFAULT_CRL_LIFETIME / 2


def test_nothing_new_and_fresh_keeps_the_same_bytes(ca: certs.Issued) -> None:
    first = pki.plan_crl(ca=ca, current_pem=None, revoke=(), now=NOW, keep_for=KEEP)
    again = pki.plan_crl(ca=ca, current_pem=first.pem, revoke=(), now=NOW + DAY, keep_for=KEEP)
    assert not again.changed
    assert again.pem == first.pem  # no write on a resync


def test_revoking_adds_the_serial_and_the_number_grows(ca: certs.Issued) -> None:
    first = pki.plan_crl(ca=ca, current_pem=None, revoke=(), now=NOW, keep_for=KEEP)
    second = pki.plan_crl(
        ca=ca, current_pem=first.pem, revoke=[0xABC, 0xDEF], now=NOW + DAY, keep_for=KEEP
    )
    assert second.changed
    assert second.newly_revoked == {0xABC, 0xDEF}
    assert certs.crl_serials(second.pem, ca_pem=ca.cert_pem) == {0xABC, 0xDEF}
    assert pki.read_crl(second.pem, ca_pem=ca.cert_pem).number == 2
    # Revoking what is already listed changes nothing.
    third = pki.plan_crl(
        ca=ca, current_pem=second.pem, revoke=[0xABC], now=NOW + 2 * DAY, keep_for=KEEP
    )
    assert not third.changed
    assert third.newly_revoked == frozenset()


def test_a_crl_is_reissued_once_half_its_validity_is_gone(ca: certs.Issued) -> None:
    first = pki.plan_crl(ca=ca, current_pem=None, revoke=[7], now=NOW, keep_for=KEEP)
    later = NOW + pki.DEFAULT_CRL_LIFETIME / 2 + timedelta(seconds=1)
    renewed = pki.plan_crl(ca=ca, current_pem=first.pem, revoke=(), now=later, keep_for=KEEP)
    assert renewed.changed
    assert certs.crl_serials(renewed.pem, ca_pem=ca.cert_pem) == {7}
    state = pki.read_crl(renewed.pem, ca_pem=ca.cert_pem)
    assert state.number == 2
    assert state.next_update == later + pki.DEFAULT_CRL_LIFETIME


def test_a_serial_is_dropped_once_every_certificate_it_names_has_expired(
    ca: certs.Issued,
) -> None:
    first = pki.plan_crl(ca=ca, current_pem=None, revoke=[7], now=NOW, keep_for=KEEP)
    within = NOW + KEEP  # the skew margin keeps it a little longer
    kept = pki.plan_crl(ca=ca, current_pem=first.pem, revoke=(), now=within, keep_for=KEEP)
    assert certs.crl_serials(kept.pem, ca_pem=ca.cert_pem) == {7}
    after = NOW + KEEP + certs.CLOCK_SKEW + timedelta(seconds=1)
    dropped = pki.plan_crl(ca=ca, current_pem=kept.pem, revoke=(), now=after, keep_for=KEEP)
    assert dropped.changed
    assert certs.crl_serials(dropped.pem, ca_pem=ca.cert_pem) == frozenset()


def test_a_crl_of_another_ca_is_replaced_and_reported(ca: certs.Issued) -> None:
    other = certs.new_ca(common_name="tenant-vpn-ca", now=NOW - DAY, lifetime=timedelta(days=10))
    foreign = pki.plan_crl(ca=other, current_pem=None, revoke=[9], now=NOW, keep_for=KEEP)
    plan = pki.plan_crl(ca=ca, current_pem=foreign.pem, revoke=[5], now=NOW, keep_for=KEEP)
    assert plan.changed
    assert plan.problem is not None
    assert "unusable" in plan.problem
    assert certs.crl_serials(plan.pem, ca_pem=ca.cert_pem) == {5}
    garbage = pki.plan_crl(ca=ca, current_pem=b"not a crl", revoke=(), now=NOW, keep_for=KEEP)
    assert garbage.problem is not None


def test_serials_in_hex() -> None:
    issued = certs.new_ca(common_name="x", now=NOW, lifetime=DAY)
    text = pki.serial_hex(issued.cert_pem)
    assert pki.parse_serial(text) == certs.cert_info(issued.cert_pem).serial
    assert pki.parse_serial("0A:bc") == 0xABC
    assert pki.parse_serial("zz") is None
    assert pki.parse_serial("0") is None


def test_a_tls_crypt_client_key_fits_only_its_server_key() -> None:
    server = certs.new_tls_crypt_v2_server_key()
    client = certs.new_tls_crypt_v2_client_key(server, now=NOW)
    assert pki.tls_crypt_client_key_fits(server, client)
    assert not pki.tls_crypt_client_key_fits(certs.new_tls_crypt_v2_server_key(), client)
    assert not pki.tls_crypt_client_key_fits(server, None)
    assert not pki.tls_crypt_client_key_fits(server, b"garbage")
