"""Issuing: keys, the tenant CA, server and client certificates, CSRs, and names.

The certificate profiles are asserted field by field, because openvpn's
`remote-cert-tls` and OpenSSL decide on exactly these fields; the netns test
shows a real openvpn accepting them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import certs
from certs import Issued

from . import certsfix
from .certsfix import DAY, NOW, YEAR

ca = certsfix.ca  # the shared module-scoped fixture: one tenant CA per module


@pytest.fixture(scope="module")
def rsa_ca() -> Issued:
    return certs.new_ca(
        common_name="tenant-r-ca", now=NOW, lifetime=10 * YEAR, algorithm="rsa-2048"
    )


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def _ext(
    cert: x509.Certificate, kind: type[x509.ExtensionType]
) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(kind)


def _key_usage(cert: x509.Certificate) -> set[str]:
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    names = [
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
    ]
    return {name for name in names if getattr(ku, name)}


def _ski(cert: x509.Certificate) -> bytes:
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


# --- keys ---------------------------------------------------------------------------------


def test_default_private_key_is_p256_pkcs8() -> None:
    pem = certs.new_private_key()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)


@pytest.mark.parametrize(("algorithm", "bits"), [("rsa-2048", 2048), ("rsa-3072", 3072)])
def test_rsa_private_keys_have_the_asked_size(algorithm: certs.KeyAlgorithm, bits: int) -> None:
    key = serialization.load_pem_private_key(
        certs.new_private_key(algorithm=algorithm), password=None
    )
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == bits


def test_unknown_key_algorithm_is_refused() -> None:
    with pytest.raises(certs.PKIError, match=r"ed25519.*use one of ecdsa-p256"):
        certs.new_private_key(algorithm="ed25519")  # type: ignore[arg-type]


# --- the CA -------------------------------------------------------------------------------


def test_ca_profile(ca: Issued) -> None:
    cert = _cert(ca.cert_pem)
    constraints = _ext(cert, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value == x509.BasicConstraints(ca=True, path_length=0)
    assert _ext(cert, x509.KeyUsage).critical
    assert _key_usage(cert) == {"key_cert_sign", "crl_sign"}
    assert _ski(cert) == x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
    assert cert.subject == cert.issuer
    cert.verify_directly_issued_by(cert)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert cert.not_valid_before_utc == NOW - timedelta(minutes=5) == NOW - certs.CLOCK_SKEW
    assert cert.not_valid_after_utc == NOW + 10 * YEAR
    info = certs.cert_info(ca.cert_pem)
    assert (info.common_name, info.issuer_cn, info.is_ca, info.usage) == (
        "tenant-a-ca",
        "tenant-a-ca",
        True,
        "ca",
    )


def test_ca_in_another_time_zone_is_converted_to_utc() -> None:
    tokyo = datetime(2026, 1, 1, 18, tzinfo=timezone(timedelta(hours=9)))
    cert = _cert(certs.new_ca(common_name="tz-ca", now=tokyo, lifetime=DAY).cert_pem)
    assert cert.not_valid_after_utc == datetime(2026, 1, 2, 9, tzinfo=UTC)


def test_rsa_ca_signs_with_sha256(rsa_ca: Issued) -> None:
    cert = _cert(rsa_ca.cert_pem)
    assert isinstance(cert.public_key(), rsa.RSAPublicKey)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)


def test_serials_are_random_positive_and_fit_159_bits(ca: Issued) -> None:
    serials = [
        certs.cert_info(
            certs.new_client_cert(ca, common_name=f"node-{i}", now=NOW, lifetime=DAY).cert_pem
        ).serial
        for i in range(8)
    ]
    assert len(set(serials)) == len(serials)
    assert all(0 < serial < 2**159 for serial in serials)
    assert max(serial.bit_length() for serial in serials) > 140  # random, not a counter


# --- leaves -------------------------------------------------------------------------------


def test_ecdsa_server_profile(ca: Issued) -> None:
    server = certs.new_server_cert(
        ca,
        common_name="vpn.tenant-a",
        now=NOW,
        lifetime=YEAR,
        dns_names=["vpn.example.test", "vpn.tenant-a"],
        ip_addresses=[IPv4Address("198.18.0.1"), IPv6Address("2001:db8::1")],
    )
    cert = _cert(server.cert_pem)
    ca_cert = _cert(ca.cert_pem)
    cert.verify_directly_issued_by(ca_cert)
    assert _ext(cert, x509.BasicConstraints).value == x509.BasicConstraints(
        ca=False, path_length=None
    )
    assert _ext(cert, x509.KeyUsage).critical
    assert _key_usage(cert) == {"digital_signature", "key_agreement"}
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]  # type: ignore[call-overload]
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == _ski(ca_cert)
    assert _ski(cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["vpn.tenant-a", "vpn.example.test"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ip_address("198.18.0.1"),
        ip_address("2001:db8::1"),
    ]
    assert cert.not_valid_before_utc == NOW - certs.CLOCK_SKEW
    assert cert.not_valid_after_utc == NOW + YEAR
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert certs.cert_info(server.cert_pem).usage == "server"


def test_rsa_server_uses_key_encipherment(rsa_ca: Issued) -> None:
    server = certs.new_server_cert(
        rsa_ca, common_name="server", now=NOW, lifetime=YEAR, algorithm="rsa-2048"
    )
    cert = _cert(server.cert_pem)
    assert _key_usage(cert) == {"digital_signature", "key_encipherment"}
    info = certs.validate(
        server.cert_pem, key_pem=server.key_pem, ca_pem=rsa_ca.cert_pem, now=NOW, usage="server"
    )
    assert info.usage == "server"


def test_client_profile(ca: Issued) -> None:
    client = certs.new_client_cert(ca, common_name="node-1", now=NOW, lifetime=YEAR)
    cert = _cert(client.cert_pem)
    assert _key_usage(cert) == {"digital_signature"}
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]  # type: ignore[call-overload]
    assert not _ext(cert, x509.BasicConstraints).value.ca  # type: ignore[attr-defined]
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    info = certs.cert_info(client.cert_pem)
    assert (info.common_name, info.issuer_cn, info.is_ca, info.usage) == (
        "node-1",
        "tenant-a-ca",
        False,
        "client",
    )


def test_rsa_3072_client_from_ecdsa_ca(ca: Issued) -> None:
    client = certs.new_client_cert(
        ca, common_name="node-r", now=NOW, lifetime=DAY, algorithm="rsa-3072"
    )
    key = _cert(client.cert_pem).public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    assert key.key_size == 3072
    certs.validate(client.cert_pem, key_pem=client.key_pem, ca_pem=ca.cert_pem, now=NOW)


def test_leaf_never_outlives_its_ca() -> None:
    short_ca = certs.new_ca(common_name="short-ca", now=NOW, lifetime=30 * DAY)
    client = certs.new_client_cert(short_ca, common_name="node-1", now=NOW, lifetime=YEAR)
    assert certs.cert_info(client.cert_pem).not_after == NOW + 30 * DAY


def test_issued_repr_hides_the_key(ca: Issued) -> None:
    text = repr(ca) + str(ca)
    assert "redacted" in text
    assert b"PRIVATE KEY" in ca.key_pem
    assert "PRIVATE KEY" not in text
    assert ca.key_pem.decode().splitlines()[1] not in text


# --- signing refuses a CA that cannot sign --------------------------------------------------


def test_signing_with_an_expired_ca_is_refused(ca: Issued) -> None:
    with pytest.raises(certs.Expired, match=r"CA certificate CN=tenant-a-ca .* expired at"):
        certs.new_client_cert(ca, common_name="node-1", now=NOW + 11 * YEAR, lifetime=DAY)


def test_signing_with_a_ca_not_yet_valid_is_refused(ca: Issued) -> None:
    with pytest.raises(certs.NotYetValid, match="check this machine's clock"):
        certs.new_client_cert(ca, common_name="node-1", now=NOW - DAY, lifetime=DAY)


def test_signing_with_a_leaf_as_ca_is_refused(ca: Issued) -> None:
    leaf = certs.new_client_cert(ca, common_name="node-1", now=NOW, lifetime=DAY)
    with pytest.raises(certs.WrongUsage, match="not a CA"):
        certs.new_client_cert(leaf, common_name="node-2", now=NOW, lifetime=DAY)


def test_signing_with_a_ca_whose_key_is_of_another_ca_is_refused(ca: Issued) -> None:
    other = certs.new_ca(common_name="tenant-b-ca", now=NOW, lifetime=YEAR)
    mixed = replace(ca, key_pem=other.key_pem)
    with pytest.raises(certs.KeyMismatch, match="CA private key does not match") as caught:
        certs.new_server_cert(mixed, common_name="server", now=NOW, lifetime=DAY)
    assert other.key_pem.decode().splitlines()[1] not in str(caught.value)


def test_signing_with_a_corrupt_ca_is_refused(ca: Issued) -> None:
    with pytest.raises(certs.MalformedMaterial, match="CA certificate"):
        certs.new_client_cert(
            replace(ca, cert_pem=ca.cert_pem[:100] + ca.cert_pem[-40:]),
            common_name="node-1",
            now=NOW,
            lifetime=DAY,
        )
    with pytest.raises(certs.PKIError, match="must be an Issued"):
        certs.new_client_cert(ca.cert_pem, common_name="node-1", now=NOW, lifetime=DAY)  # type: ignore[arg-type]


@pytest.mark.parametrize("lifetime", [timedelta(0), -DAY])
def test_non_positive_lifetime_is_refused(ca: Issued, lifetime: timedelta) -> None:
    with pytest.raises(certs.PKIError, match="lifetime must be positive"):
        certs.new_client_cert(ca, common_name="node-1", now=NOW, lifetime=lifetime)


def test_naive_now_is_refused(ca: Issued) -> None:
    with pytest.raises(certs.PKIError, match="has no time zone"):
        certs.new_ca(common_name="x", now=datetime(2026, 1, 1), lifetime=DAY)
    with pytest.raises(certs.PKIError, match="has no time zone"):
        certs.new_client_cert(ca, common_name="node-1", now=datetime(2026, 1, 1), lifetime=DAY)


# --- names ----------------------------------------------------------------------------------

BAD_NAMES = [
    "node 1",
    "node-1\nverb 11",
    "Node-1",
    "node_1",
    "-node",
    "node-",
    "node..1",
    "",
    "n" * 65,
    "node/../../etc",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_common_names_are_refused_everywhere(ca: Issued, name: str) -> None:
    calls: list[Callable[[], object]] = [
        lambda: certs.new_ca(common_name=name, now=NOW, lifetime=DAY),
        lambda: certs.new_server_cert(ca, common_name=name, now=NOW, lifetime=DAY),
        lambda: certs.new_client_cert(ca, common_name=name, now=NOW, lifetime=DAY),
        lambda: certs.new_csr(certs.new_private_key(), common_name=name),
    ]
    for call in calls:
        with pytest.raises(certs.InvalidName) as caught:
            call()
        message = str(caught.value)
        assert "\n" not in message
        assert isinstance(caught.value, certs.PKIError)
        assert "use" in message


def test_bad_name_message_says_what_and_what_to_do(ca: Issued) -> None:
    with pytest.raises(certs.InvalidName) as caught:
        certs.new_client_cert(ca, common_name="node 1", now=NOW, lifetime=DAY)
    assert str(caught.value) == (
        "client common name 'node 1' is not a DNS-1123 subdomain (lowercase letters, digits, "
        "'-' and '.', starting and ending with a letter or digit): use the Kubernetes node name"
    )
    with pytest.raises(certs.InvalidName, match="65 characters, more than the 64"):
        certs.new_client_cert(ca, common_name="a" * 65, now=NOW, lifetime=DAY)


def test_longest_valid_common_name_is_accepted(ca: Issued) -> None:
    name = "a" * 30 + "." + "b" * 33
    client = certs.new_client_cert(ca, common_name=name, now=NOW, lifetime=DAY)
    assert certs.cert_info(client.cert_pem).common_name == name


def test_bad_server_alt_names_are_refused(ca: Issued) -> None:
    with pytest.raises(certs.InvalidName, match=r"DNS name '\*\.example\.test'"):
        certs.new_server_cert(
            ca, common_name="server", now=NOW, lifetime=DAY, dns_names=["*.example.test"]
        )
    with pytest.raises(certs.InvalidName, match="not one str"):
        certs.new_server_cert(
            ca,
            common_name="server",
            now=NOW,
            lifetime=DAY,
            dns_names="vpn.example.test",
        )
    with pytest.raises(certs.InvalidName, match=r"ipaddress\.ip_address"):
        certs.new_server_cert(
            ca,
            common_name="server",
            now=NOW,
            lifetime=DAY,
            ip_addresses=["198.18.0.1"],  # type: ignore[list-item]
        )


# --- CSRs -------------------------------------------------------------------------------------


def test_csr_round_trip() -> None:
    key = certs.new_private_key()
    csr = certs.new_csr(key, common_name="node-1", organization="system:nodes")
    assert csr.startswith(b"-----BEGIN CERTIFICATE REQUEST-----")
    assert certs.csr_info(csr) == ("node-1", "system:nodes")
    assert certs.csr_info(certs.new_csr(key, common_name="node-1")) == ("node-1", None)


def test_rsa_csr_round_trip() -> None:
    key = certs.new_private_key(algorithm="rsa-2048")
    assert certs.csr_info(certs.new_csr(key, common_name="node-r")) == ("node-r", None)


def test_bad_organization_is_refused() -> None:
    with pytest.raises(certs.InvalidName, match="organization 'a\\\\nb'"):
        certs.new_csr(certs.new_private_key(), common_name="node-1", organization="a\nb")


def test_csr_needs_a_usable_key() -> None:
    with pytest.raises(certs.MalformedMaterial, match="not PEM"):
        certs.new_csr(b"nope", common_name="node-1")


def _raw_csr(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, name: x509.Name) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(name)
    builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    builder = builder.add_extension(
        x509.SubjectAlternativeName([x509.DNSName("evil.example.test")]), critical=False
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def test_csr_with_a_bad_signature_is_malformed() -> None:
    pem = certs.new_csr(certs.new_private_key(), common_name="node-1")
    der = x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER)
    forged_der = der.replace(b"node-1", b"node-2")
    assert forged_der != der
    forged = x509.load_der_x509_csr(forged_der).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(certs.MalformedMaterial, match="bad self-signature"):
        certs.csr_info(forged)


def test_csr_info_refuses_what_is_not_a_csr(ca: Issued) -> None:
    with pytest.raises(
        certs.MalformedMaterial, match="'CERTIFICATE' block where 'CERTIFICATE REQUEST'"
    ):
        certs.csr_info(ca.cert_pem)
    pem = certs.new_csr(certs.new_private_key(), common_name="node-1")
    with pytest.raises(certs.MalformedMaterial, match="does not decode"):
        certs.csr_info(pem[:80] + pem[-40:])


def test_csr_with_a_bad_or_missing_cn_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(certs.InvalidName, match="'node 1'"):
        certs.csr_info(_raw_csr(key, _name("node 1")))
    no_cn = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes")])
    with pytest.raises(certs.MalformedMaterial, match="0 common names"):
        certs.csr_info(_raw_csr(key, no_cn))


def test_sign_csr_copies_only_the_cn_and_the_key(ca: Issued) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "node-1"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
        ]
    )
    pem = certs.sign_csr(ca, _raw_csr(key, name), now=NOW, lifetime=DAY, usage="client")
    cert = _cert(pem)
    assert cert.subject == _name("node-1")
    assert not _ext(cert, x509.BasicConstraints).value.ca  # type: ignore[attr-defined]
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert cert.public_key() == key.public_key()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    info = certs.validate(pem, key_pem=key_pem, ca_pem=ca.cert_pem, now=NOW, usage="client")
    assert (info.common_name, info.not_after) == ("node-1", NOW + DAY)


def test_sign_csr_as_server(ca: Issued) -> None:
    csr = certs.new_csr(certs.new_private_key(), common_name="server-0")
    pem = certs.sign_csr(ca, csr, now=NOW, lifetime=DAY, usage="server")
    assert certs.cert_info(pem).usage == "server"
    assert _key_usage(_cert(pem)) == {"digital_signature", "key_agreement"}


def test_sign_csr_refuses_weak_keys_and_bad_usage(ca: Issued) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(certs.PKIError, match="1024-bit RSA key: use at least 2048"):
        certs.sign_csr(ca, _raw_csr(weak, _name("node-1")), now=NOW, lifetime=DAY, usage="client")
    p521 = ec.generate_private_key(ec.SECP521R1())
    with pytest.raises(certs.PKIError, match="secp521r1"):
        certs.sign_csr(ca, _raw_csr(p521, _name("node-1")), now=NOW, lifetime=DAY, usage="client")
    csr = certs.new_csr(certs.new_private_key(), common_name="node-1")
    with pytest.raises(certs.PKIError, match="'ca' is not 'client' or 'server'"):
        certs.sign_csr(ca, csr, now=NOW, lifetime=DAY, usage="ca")  # type: ignore[arg-type]
    with pytest.raises(certs.InvalidName):
        certs.sign_csr(
            ca,
            _raw_csr(ec.generate_private_key(ec.SECP256R1()), _name("Node 1")),
            now=NOW,
            lifetime=DAY,
            usage="client",
        )
