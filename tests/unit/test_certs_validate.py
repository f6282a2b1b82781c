"""Validating loaded material, the CRL, and the renewal policy.

Each bad input is one a person really produces: a truncated file, the key of
another certificate, files swapped, another tenant's CA, a clock that is off.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import certs
from certs import Issued

from . import certsfix
from .certsfix import DAY, NOW, YEAR

ca = certsfix.ca  # the shared module-scoped fixture: one tenant CA per module


@pytest.fixture(scope="module")
def other_ca() -> Issued:
    return certs.new_ca(common_name="tenant-b-ca", now=NOW, lifetime=10 * YEAR)


@pytest.fixture(scope="module")
def twin_ca() -> Issued:
    """Another CA that happens to have the same name (a re-created tenant)."""
    return certs.new_ca(common_name="tenant-a-ca", now=NOW, lifetime=10 * YEAR)


@pytest.fixture(scope="module")
def server(ca: Issued) -> Issued:
    return certs.new_server_cert(ca, common_name="server", now=NOW, lifetime=YEAR)


@pytest.fixture(scope="module")
def client(ca: Issued) -> Issued:
    return certs.new_client_cert(ca, common_name="node-1", now=NOW, lifetime=YEAR)


def _secret_line(key_pem: bytes) -> str:
    return key_pem.decode().splitlines()[1]


# --- validate: the good case --------------------------------------------------------------


def test_valid_material_returns_its_info(ca: Issued, client: Issued, server: Issued) -> None:
    info = certs.validate(
        client.cert_pem, key_pem=client.key_pem, ca_pem=ca.cert_pem, now=NOW, usage="client"
    )
    assert info == certs.cert_info(client.cert_pem)
    assert (info.common_name, info.issuer_cn, info.usage, info.is_ca) == (
        "node-1",
        "tenant-a-ca",
        "client",
        False,
    )
    assert info.not_before == NOW - certs.CLOCK_SKEW
    assert info.not_after == NOW + YEAR
    assert info.serial == x509.load_pem_x509_certificate(client.cert_pem).serial_number
    certs.validate(
        server.cert_pem, key_pem=server.key_pem, ca_pem=ca.cert_pem, now=NOW, usage="server"
    )
    certs.validate(ca.cert_pem, key_pem=ca.key_pem, ca_pem=ca.cert_pem, now=NOW, usage="ca")
    # Only the certificate itself is required.
    assert certs.validate(client.cert_pem, now=NOW).common_name == "node-1"


def test_validity_bounds_are_inclusive(client: Issued) -> None:
    info = certs.cert_info(client.cert_pem)
    certs.validate(client.cert_pem, now=info.not_before)
    certs.validate(client.cert_pem, now=info.not_after)


# --- validate: each defect gets its own error ----------------------------------------------


def test_corrupt_certificate_is_malformed(client: Issued) -> None:
    truncated = client.cert_pem[:120] + client.cert_pem[-30:]
    der = x509.load_pem_x509_certificate(client.cert_pem).public_bytes(serialization.Encoding.DER)
    for bad, message in [
        (truncated, "not a valid certificate"),
        (b"", "not PEM"),
        (b"hello world", "not PEM"),
        (der, "not PEM.*not DER"),
    ]:
        with pytest.raises(certs.MalformedMaterial, match=message):
            certs.validate(bad, now=NOW)
    with pytest.raises(certs.MalformedMaterial, match="read the file in binary mode"):
        certs.validate(client.cert_pem.decode(), now=NOW)  # type: ignore[arg-type]


def test_key_passed_as_certificate_is_named_but_not_quoted(client: Issued) -> None:
    with pytest.raises(certs.MalformedMaterial) as caught:
        certs.validate(client.key_pem, now=NOW)
    message = str(caught.value)
    assert "'PRIVATE KEY' block where 'CERTIFICATE' was expected" in message
    assert "swapped" in message
    assert _secret_line(client.key_pem) not in message


def test_corrupt_key_is_malformed_and_not_quoted(client: Issued) -> None:
    lines = client.key_pem.splitlines()
    corrupt = b"\n".join([lines[0], lines[1][:-8] + b"AAAAAAAA", *lines[2:]]) + b"\n"
    with pytest.raises(certs.MalformedMaterial, match="not a valid private key") as caught:
        certs.validate(client.cert_pem, key_pem=corrupt, now=NOW)
    assert lines[1].decode() not in str(caught.value)
    with pytest.raises(certs.MalformedMaterial, match="'CERTIFICATE' block where 'PRIVATE KEY'"):
        certs.validate(client.cert_pem, key_pem=client.cert_pem, now=NOW)


def test_encrypted_key_is_refused(client: Issued) -> None:
    key = serialization.load_pem_private_key(client.key_pem, password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(certs.MalformedMaterial, match="pass an unencrypted key"):
        certs.validate(client.cert_pem, key_pem=encrypted, now=NOW)
    traditional = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.BestAvailableEncryption(b"secret"),
    )
    assert b"ENCRYPTED" in traditional
    with pytest.raises(certs.MalformedMaterial, match="pass an unencrypted key"):
        certs.validate(client.cert_pem, key_pem=traditional, now=NOW)


def test_traditional_openssl_key_format_is_accepted(client: Issued) -> None:
    key = serialization.load_pem_private_key(client.key_pem, password=None)
    sec1 = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert sec1.startswith(b"-----BEGIN EC PRIVATE KEY-----")
    certs.validate(client.cert_pem, key_pem=sec1, now=NOW)
    # `openssl ecparam -genkey` puts the curve's parameters before the key.
    params = b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"
    certs.validate(client.cert_pem, key_pem=params + sec1, now=NOW)


def test_key_of_another_certificate_is_a_key_mismatch(client: Issued, server: Issued) -> None:
    with pytest.raises(certs.KeyMismatch) as caught:
        certs.validate(client.cert_pem, key_pem=server.key_pem, now=NOW)
    message = str(caught.value)
    assert "does not match certificate CN=node-1" in message
    assert "re-issue" in message
    assert _secret_line(server.key_pem) not in message


def test_certificate_of_another_ca_is_a_chain_error(ca: Issued, other_ca: Issued) -> None:
    foreign = certs.new_client_cert(other_ca, common_name="node-1", now=NOW, lifetime=YEAR)
    with pytest.raises(
        certs.ChainError, match="issued by CN=tenant-b-ca, not by CA CN=tenant-a-ca"
    ):
        certs.validate(foreign.cert_pem, ca_pem=ca.cert_pem, now=NOW)


def test_certificate_of_a_same_named_ca_is_a_chain_error(ca: Issued, twin_ca: Issued) -> None:
    foreign = certs.new_client_cert(twin_ca, common_name="node-1", now=NOW, lifetime=YEAR)
    with pytest.raises(certs.ChainError, match="signature does not verify"):
        certs.validate(foreign.cert_pem, ca_pem=ca.cert_pem, now=NOW)


def test_leaf_given_as_ca_is_a_chain_error(client: Issued, server: Issued) -> None:
    with pytest.raises(certs.ChainError, match="is not a CA"):
        certs.validate(client.cert_pem, ca_pem=server.cert_pem, now=NOW)


def test_expired_certificate(client: Issued) -> None:
    later = NOW + YEAR + timedelta(seconds=1)
    with pytest.raises(certs.Expired) as caught:
        certs.validate(client.cert_pem, now=later)
    serial = certs.cert_info(client.cert_pem).serial
    assert str(caught.value) == (
        f"certificate CN=node-1 (serial {serial:#x}) expired at 2027-01-01T00:00:00Z "
        "(now 2027-01-01T00:00:01Z): renew it"
    )


def test_expired_ca_is_reported_as_the_ca(ca: Issued) -> None:
    with pytest.raises(
        certs.Expired, match=r"^CA certificate CN=tenant-a-ca .* expired at 2035-12-30T00:00:00Z"
    ):
        certs.validate(ca.cert_pem, ca_pem=ca.cert_pem, now=NOW + 11 * YEAR)


def test_not_yet_valid_certificate(client: Issued) -> None:
    with pytest.raises(certs.NotYetValid, match=r"not valid before 2025-12-31T23:55:00Z"):
        certs.validate(client.cert_pem, now=NOW - timedelta(minutes=6))
    # The 5-minute backdating absorbs a peer clock that is a little behind.
    certs.validate(client.cert_pem, now=NOW - timedelta(minutes=4))


@pytest.mark.parametrize(
    ("which", "usage", "message"),
    [
        ("client", "server", "client certificate without extended key usage serverAuth"),
        ("server", "client", "server certificate without extended key usage clientAuth"),
        ("ca", "server", "is a CA certificate, not a server certificate"),
        ("client", "ca", "is a client certificate, not a CA"),
    ],
)
def test_wrong_usage(
    ca: Issued, client: Issued, server: Issued, which: str, usage: str, message: str
) -> None:
    pem = {"ca": ca, "client": client, "server": server}[which].cert_pem
    with pytest.raises(certs.WrongUsage, match=message):
        certs.validate(pem, now=NOW, usage=usage)  # type: ignore[arg-type]


def test_server_without_key_usage_is_wrong_usage(ca: Issued) -> None:
    """openvpn's `remote-cert-tls server` requires the keyUsage extension."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "legacy")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(NOW)
        .not_valid_after(NOW + DAY)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    certs.validate(pem, ca_pem=ca.cert_pem, now=NOW)
    with pytest.raises(certs.WrongUsage, match="no keyUsage digitalSignature"):
        certs.validate(pem, now=NOW, usage="server")


def test_foreign_certificate_info() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "no-cn")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(42)
        .not_valid_before(NOW)
        .not_valid_after(NOW + DAY)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    info = certs.cert_info(cert.public_bytes(serialization.Encoding.PEM))
    assert info == certs.CertInfo(
        common_name="",
        serial=42,
        not_before=NOW,
        not_after=NOW + DAY,
        issuer_cn="",
        is_ca=False,
        usage="other",
    )


def test_validate_refuses_naive_now_and_unknown_usage(client: Issued) -> None:
    with pytest.raises(certs.PKIError, match="no time zone"):
        certs.validate(client.cert_pem, now=datetime(2026, 1, 1))
    with pytest.raises(certs.PKIError, match="'peer' is not one of"):
        certs.validate(client.cert_pem, now=NOW, usage="peer")  # type: ignore[arg-type]


def test_every_error_is_a_value_error_and_a_pki_error() -> None:
    for cls in (
        certs.MalformedMaterial,
        certs.KeyMismatch,
        certs.ChainError,
        certs.Expired,
        certs.NotYetValid,
        certs.WrongUsage,
        certs.InvalidName,
    ):
        assert issubclass(cls, certs.PKIError)
        assert issubclass(cls, ValueError)


# --- CRL ------------------------------------------------------------------------------------


def test_crl_round_trip(ca: Issued, client: Issued) -> None:
    serial = certs.cert_info(client.cert_pem).serial
    revoked = [
        certs.Revoked(serial=serial, revoked_at=NOW - DAY),
        certs.Revoked(serial=12345, revoked_at=NOW - 2 * DAY),
        certs.Revoked(serial=serial, revoked_at=NOW - 3 * DAY),  # listed twice
    ]
    pem = certs.build_crl(ca, revoked=revoked, now=NOW, next_update=7 * DAY, crl_number=3)
    assert pem.startswith(b"-----BEGIN X509 CRL-----")
    assert certs.crl_serials(pem, ca_pem=ca.cert_pem) == frozenset({serial, 12345})
    crl = x509.load_pem_x509_crl(pem)
    assert crl.last_update_utc == NOW - certs.CLOCK_SKEW
    assert crl.next_update_utc == NOW + 7 * DAY
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 3
    entry = crl.get_revoked_certificate_by_serial_number(serial)
    assert entry is not None
    assert entry.revocation_date_utc == NOW - 3 * DAY
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = x509.load_pem_x509_certificate(ca.cert_pem).extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier
    )
    assert aki.key_identifier == ski.value.digest
    assert isinstance(crl.signature_hash_algorithm, hashes.SHA256)


def test_empty_crl(ca: Issued) -> None:
    pem = certs.build_crl(ca, revoked=[], now=NOW, next_update=DAY, crl_number=0)
    assert certs.crl_serials(pem, ca_pem=ca.cert_pem) == frozenset()


def test_rsa_ca_crl_round_trip() -> None:
    rsa_ca = certs.new_ca(common_name="tenant-r-ca", now=NOW, lifetime=YEAR, algorithm="rsa-2048")
    revoked = [certs.Revoked(serial=99, revoked_at=NOW)]
    pem = certs.build_crl(rsa_ca, revoked=revoked, now=NOW, next_update=DAY, crl_number=1)
    assert certs.crl_serials(pem, ca_pem=rsa_ca.cert_pem) == frozenset({99})


def test_crl_of_another_ca_is_a_chain_error(ca: Issued, other_ca: Issued, twin_ca: Issued) -> None:
    revoked = [certs.Revoked(serial=1, revoked_at=NOW)]
    foreign = certs.build_crl(other_ca, revoked=revoked, now=NOW, next_update=DAY, crl_number=1)
    with pytest.raises(
        certs.ChainError, match="issued by CN=tenant-b-ca, not by CA CN=tenant-a-ca"
    ):
        certs.crl_serials(foreign, ca_pem=ca.cert_pem)
    twin = certs.build_crl(twin_ca, revoked=revoked, now=NOW, next_update=DAY, crl_number=1)
    with pytest.raises(certs.ChainError, match="signature does not verify"):
        certs.crl_serials(twin, ca_pem=ca.cert_pem)


def test_corrupt_crl_and_wrong_inputs(ca: Issued, client: Issued) -> None:
    pem = certs.build_crl(ca, revoked=[], now=NOW, next_update=DAY, crl_number=1)
    with pytest.raises(certs.MalformedMaterial, match="not a valid certificate revocation list"):
        certs.crl_serials(pem[:60] + pem[-30:], ca_pem=ca.cert_pem)
    with pytest.raises(certs.MalformedMaterial, match="'CERTIFICATE' block where 'X509 CRL'"):
        certs.crl_serials(ca.cert_pem, ca_pem=ca.cert_pem)
    with pytest.raises(certs.WrongUsage, match="not a CA"):
        certs.crl_serials(pem, ca_pem=client.cert_pem)


def test_build_crl_refuses_bad_arguments(ca: Issued) -> None:
    with pytest.raises(certs.PKIError, match="crl_number"):
        certs.build_crl(ca, revoked=[], now=NOW, next_update=DAY, crl_number=-1)
    with pytest.raises(certs.PKIError, match="next_update must be positive"):
        certs.build_crl(ca, revoked=[], now=NOW, next_update=timedelta(0), crl_number=1)
    with pytest.raises(certs.PKIError, match=r"revoked_at of serial 0x1 .* no time zone"):
        certs.build_crl(
            ca,
            revoked=[certs.Revoked(serial=1, revoked_at=datetime(2026, 1, 1))],
            now=NOW,
            next_update=DAY,
            crl_number=1,
        )
    with pytest.raises(certs.PKIError, match="not a positive int"):
        certs.build_crl(
            ca,
            revoked=[certs.Revoked(serial=0, revoked_at=NOW)],
            now=NOW,
            next_update=DAY,
            crl_number=1,
        )
    with pytest.raises(certs.Expired):
        certs.build_crl(ca, revoked=[], now=NOW + 11 * YEAR, next_update=DAY, crl_number=1)
    leaf = certs.new_client_cert(ca, common_name="node-1", now=NOW, lifetime=DAY)
    with pytest.raises(certs.WrongUsage):
        certs.build_crl(leaf, revoked=[], now=NOW, next_update=DAY, crl_number=1)
    with pytest.raises(certs.KeyMismatch):
        certs.build_crl(
            replace(ca, key_pem=leaf.key_pem), revoked=[], now=NOW, next_update=DAY, crl_number=1
        )


# --- renewal ----------------------------------------------------------------------------------


def test_renewal_at_two_thirds_of_the_actual_lifetime(ca: Issued) -> None:
    client = certs.new_client_cert(ca, common_name="node-1", now=NOW, lifetime=timedelta(days=90))
    not_before = NOW - certs.CLOCK_SKEW
    lifetime = timedelta(days=90) + certs.CLOCK_SKEW
    due = not_before + lifetime * 2 / 3
    assert certs.renew_at(client.cert_pem) == due
    assert due == datetime(2026, 3, 1, 23, 58, 20, tzinfo=UTC)
    assert not certs.renewal_due(client.cert_pem, now=due - timedelta(seconds=1))
    assert certs.renewal_due(client.cert_pem, now=due)
    assert certs.renewal_due(client.cert_pem, now=NOW + YEAR)  # long expired


@pytest.mark.parametrize(
    ("fraction", "expected"),
    [
        (0.5, datetime(2026, 1, 1, 11, 57, 30, tzinfo=UTC)),
        (1.0, datetime(2026, 1, 2, tzinfo=UTC)),
        (0.1, datetime(2026, 1, 1, 2, 19, 30, tzinfo=UTC)),
    ],
)
def test_renewal_fraction(ca: Issued, fraction: float, expected: datetime) -> None:
    client = certs.new_client_cert(ca, common_name="node-1", now=NOW, lifetime=DAY)
    assert certs.renew_at(client.cert_pem, renew_fraction=fraction) == expected
    assert certs.renewal_due(client.cert_pem, now=expected, renew_fraction=fraction)
    assert not certs.renewal_due(
        client.cert_pem, now=expected - timedelta(seconds=1), renew_fraction=fraction
    )


@pytest.mark.parametrize("fraction", [0, -0.5, 1.5, float("nan"), float("inf"), True])
def test_bad_renew_fraction_is_refused(client: Issued, fraction: float) -> None:
    with pytest.raises(certs.PKIError, match=r"must be a number in \(0, 1\]"):
        certs.renew_at(client.cert_pem, renew_fraction=fraction)
    with pytest.raises(certs.PKIError):
        certs.renewal_due(client.cert_pem, now=NOW, renew_fraction=fraction)


def test_renewal_of_corrupt_certificate_or_naive_now(client: Issued) -> None:
    with pytest.raises(certs.MalformedMaterial):
        certs.renewal_due(b"junk", now=NOW)
    with pytest.raises(certs.PKIError, match="no time zone"):
        certs.renewal_due(client.cert_pem, now=datetime(2026, 6, 1))
