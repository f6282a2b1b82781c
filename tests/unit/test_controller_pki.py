"""CRL decisions: the CRL lists exactly the book's revocations, numbers only grow, refreshed
early. (Which serials stay listed, and until when, is the book's: test_revocation_book.py.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

import certs
from vpnctl.controller import pki_decisions as pki

NOW = datetime(2030, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def at(when: datetime, *serials: int) -> dict[int, datetime]:
    return dict.fromkeys(serials, when)


@pytest.fixture(scope="module")
def ca() -> certs.Issued:
    return certs.new_ca(common_name="tenant-vpn-ca", now=NOW - DAY, lifetime=timedelta(days=3650))


def test_a_first_crl_is_issued_empty_with_number_one(ca: certs.Issued) -> None:
    plan = pki.plan_crl(ca=ca, current_pem=None, revoked={}, now=NOW)
    assert plan.changed
    assert plan.problem is None
    assert certs.crl_serials(plan.pem, ca_pem=ca.cert_pem) == frozenset()
    state = pki.read_crl(plan.pem, ca_pem=ca.cert_pem)
    assert state.number == 1
    assert state.next_update == NOW + pki.DEFAULT_CRL_LIFETIME
    assert plan.refresh_at == NOW + pki.DEFAULT_CRL_LIFETIME / 2


def test_nothing_new_and_fresh_keeps_the_same_bytes(ca: certs.Issued) -> None:
    first = pki.plan_crl(ca=ca, current_pem=None, revoked={}, now=NOW)
    again = pki.plan_crl(ca=ca, current_pem=first.pem, revoked={}, now=NOW + DAY)
    assert not again.changed
    assert again.pem == first.pem  # no write on a resync


def test_revoking_adds_the_serial_and_the_number_grows(ca: certs.Issued) -> None:
    first = pki.plan_crl(ca=ca, current_pem=None, revoked={}, now=NOW)
    second = pki.plan_crl(
        ca=ca, current_pem=first.pem, revoked=at(NOW, 0xABC, 0xDEF), now=NOW + DAY
    )
    assert second.changed
    assert second.newly_revoked == {0xABC, 0xDEF}
    assert certs.crl_serials(second.pem, ca_pem=ca.cert_pem) == {0xABC, 0xDEF}
    assert pki.read_crl(second.pem, ca_pem=ca.cert_pem).number == 2
    # Listing what is already listed changes nothing.
    third = pki.plan_crl(
        ca=ca, current_pem=second.pem, revoked=at(NOW, 0xABC, 0xDEF), now=NOW + 2 * DAY
    )
    assert not third.changed
    assert third.newly_revoked == frozenset()


def test_a_crl_is_reissued_once_half_its_validity_is_gone(ca: certs.Issued) -> None:
    first = pki.plan_crl(ca=ca, current_pem=None, revoked=at(NOW, 7), now=NOW)
    later = NOW + pki.DEFAULT_CRL_LIFETIME / 2 + timedelta(seconds=1)
    renewed = pki.plan_crl(ca=ca, current_pem=first.pem, revoked=at(NOW, 7), now=later)
    assert renewed.changed
    assert certs.crl_serials(renewed.pem, ca_pem=ca.cert_pem) == {7}
    state = pki.read_crl(renewed.pem, ca_pem=ca.cert_pem)
    assert state.number == 2
    assert state.next_update == later + pki.DEFAULT_CRL_LIFETIME


def test_the_number_grows_above_the_books_floor_when_the_crl_was_lost(
    ca: certs.Issued,
) -> None:
    """A deleted server ConfigMap must not restart CRL numbers at 1."""
    plan = pki.plan_crl(ca=ca, current_pem=None, revoked=at(NOW, 7), now=NOW, number_floor=41)
    assert pki.read_crl(plan.pem, ca_pem=ca.cert_pem).number == 42
    assert certs.crl_serials(plan.pem, ca_pem=ca.cert_pem) == {7}


def test_a_crl_of_another_ca_is_replaced_and_reported(ca: certs.Issued) -> None:
    other = certs.new_ca(common_name="tenant-vpn-ca", now=NOW - DAY, lifetime=timedelta(days=10))
    foreign = pki.plan_crl(ca=other, current_pem=None, revoked=at(NOW, 9), now=NOW)
    plan = pki.plan_crl(ca=ca, current_pem=foreign.pem, revoked=at(NOW, 5), now=NOW)
    assert plan.changed
    assert plan.problem is not None
    assert "unusable" in plan.problem
    assert certs.crl_serials(plan.pem, ca_pem=ca.cert_pem) == {5}
    garbage = pki.plan_crl(ca=ca, current_pem=b"not a crl", revoked={}, now=NOW)
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
