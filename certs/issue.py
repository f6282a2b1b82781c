"""Issuing keys and certificates for one tenant's tunnel.

Each tenant has its own CA, so a node of tenant A can never complete a handshake
with tenant B's server. The profiles are the ones openvpn checks:

- CA: BasicConstraints CA:TRUE, pathlen 0 (it signs leaves only), keyUsage
  keyCertSign + cRLSign (it also signs the CRL).
- server: EKU serverAuth and a keyUsage extension, because the clients run with
  `remote-cert-tls server`, which (openvpn's `remote-cert-ku` default) requires
  the keyUsage extension to be present and leaves its bits to OpenSSL. We set
  the bits that fit the key: digitalSignature always (ECDHE signatures, TLS 1.3),
  plus keyEncipherment for RSA or keyAgreement for ECDSA (RFC 5480 forbids
  keyEncipherment on an EC key).
- client: EKU clientAuth, keyUsage digitalSignature; CN = the node name.

Every certificate's notBefore is set 5 minutes before `now` (`CLOCK_SKEW`), so
a node whose clock is a little behind the controller's accepts a certificate the
moment it is issued. A leaf never outlives its CA: its notAfter is capped at the
CA's, because openvpn would refuse it after that anyway, and the renewal policy
then renews it in time.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from ipaddress import IPv4Address, IPv6Address
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs._material import (
    PrivateKey,
    PublicKey,
    check_common_name,
    check_dns_name,
    check_organization,
    cn_of,
    describe,
    load_cert,
    load_csr,
    load_private_key,
    positive,
    public_key_of,
    spki,
    utc,
)
from certs.check import check_time, check_usage
from certs.errors import InvalidName, KeyMismatch, MalformedMaterial, PKIError

KeyAlgorithm = Literal["ecdsa-p256", "rsa-2048", "rsa-3072"]
KEY_ALGORITHMS: tuple[KeyAlgorithm, ...] = ("ecdsa-p256", "rsa-2048", "rsa-3072")
LeafUsage = Literal["client", "server"]

# How far notBefore is set back from `now`, for peers whose clock is behind ours.
CLOCK_SKEW = timedelta(minutes=5)

_ACCEPTED_CURVES = (ec.SECP256R1, ec.SECP384R1)
_MIN_RSA_BITS = 2048


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, both PEM. The repr never shows the key."""

    cert_pem: bytes
    key_pem: bytes

    def __repr__(self) -> str:
        return f"Issued(cert_pem=<{len(self.cert_pem)} bytes>, key_pem=<redacted>)"


def _generate(algorithm: KeyAlgorithm) -> PrivateKey:
    if algorithm == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "rsa-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if algorithm == "rsa-3072":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    raise PKIError(
        f"key algorithm {algorithm!r} is not supported: use one of {', '.join(KEY_ALGORITHMS)}"
    )


def _pkcs8(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _serial() -> int:
    """A random positive serial of at most 159 bits (fits 20 DER bytes, RFC 5280)."""
    while True:
        serial = int.from_bytes(os.urandom(20), "big") >> 1
        if serial:
            return serial


def new_private_key(*, algorithm: KeyAlgorithm = "ecdsa-p256") -> bytes:
    """A fresh private key, unencrypted PKCS#8 PEM."""
    return _pkcs8(_generate(algorithm))


def key_usage(
    *,
    digital_signature: bool,
    key_encipherment: bool = False,
    key_agreement: bool = False,
    signs_certificates: bool = False,
) -> x509.KeyUsage:
    """A KeyUsage extension value; `signs_certificates` sets keyCertSign and cRLSign (a CA)."""
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=key_agreement,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def new_ca(
    *,
    common_name: str,
    now: datetime,
    lifetime: timedelta,
    algorithm: KeyAlgorithm = "ecdsa-p256",
) -> Issued:
    """A self-signed tenant CA valid from `now - CLOCK_SKEW` to `now + lifetime`."""
    check_common_name(common_name, what="CA common name")
    now = utc(now)
    positive(lifetime, what="CA lifetime")
    key = _generate(algorithm)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(digital_signature=False, signs_certificates=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert_pem=_cert_pem(cert), key_pem=_pkcs8(key))


def load_ca(ca: Issued, *, now: datetime) -> tuple[x509.Certificate, PrivateKey]:
    """The CA's certificate and key, checked to be a CA, a pair, and valid at `now`."""
    if not isinstance(ca, Issued):
        raise PKIError(f"ca must be an Issued (CA certificate and key), got {type(ca).__name__}")
    cert = load_cert(ca.cert_pem, what="CA certificate")
    key = load_private_key(ca.key_pem, what=f"private key of {describe(cert, role='CA')}")
    if spki(key) != spki(public_key_of(cert, what=describe(cert, role="CA certificate"))):
        raise KeyMismatch(
            f"CA private key does not match {describe(cert, role='CA certificate')}: "
            "the CA Secret holds a key of another CA; restore the matching pair"
        )
    check_usage(cert, "ca")
    check_time(cert, now=now, role="CA certificate")
    return cert, key


def _sign_leaf(
    ca: Issued,
    *,
    public_key: PublicKey,
    common_name: str,
    now: datetime,
    lifetime: timedelta,
    usage: LeafUsage,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[IPv4Address | IPv6Address] = (),
) -> x509.Certificate:
    """A `usage` leaf certificate for `public_key`, signed by `ca` (checked valid at `now`)."""
    ca_cert, ca_key = load_ca(ca, now=now)
    if usage == "server":
        ku = key_usage(
            digital_signature=True,
            key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
            key_agreement=isinstance(public_key, ec.EllipticCurvePublicKey),
        )
        eku = ExtendedKeyUsageOID.SERVER_AUTH
    else:
        ku = key_usage(digital_signature=True)
        eku = ExtendedKeyUsageOID.CLIENT_AUTH
    try:
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
            ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        )
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(_serial())
        .not_valid_before(max(now - CLOCK_SKEW, ca_cert.not_valid_before_utc))
        .not_valid_after(min(now + lifetime, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(ku, critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(aki, critical=False)
    )
    if usage == "server":
        names: list[x509.GeneralName] = [x509.DNSName(common_name)]
        for dns_name in dns_names:
            check_dns_name(dns_name)
            if dns_name != common_name:
                names.append(x509.DNSName(dns_name))
        for ip in ip_addresses:
            if not isinstance(ip, IPv4Address | IPv6Address):
                raise InvalidName(
                    f"ip_addresses must hold IPv4Address or IPv6Address, got {type(ip).__name__}: "
                    "wrap it in ipaddress.ip_address()"
                )
            names.append(x509.IPAddress(ip))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _new_leaf(
    ca: Issued,
    *,
    common_name: str,
    now: datetime,
    lifetime: timedelta,
    algorithm: KeyAlgorithm,
    usage: LeafUsage,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[IPv4Address | IPv6Address] = (),
) -> Issued:
    """A fresh key and its `usage` leaf certificate signed by `ca`."""
    check_common_name(common_name, what=f"{usage} common name")
    now = utc(now)
    positive(lifetime, what=f"{usage} certificate lifetime")
    if isinstance(dns_names, str):
        raise InvalidName("dns_names must be a sequence of names, not one str: wrap it in a list")
    key = _generate(algorithm)
    cert = _sign_leaf(
        ca,
        public_key=key.public_key(),
        common_name=common_name,
        now=now,
        lifetime=lifetime,
        usage=usage,
        dns_names=dns_names,
        ip_addresses=ip_addresses,
    )
    return Issued(cert_pem=_cert_pem(cert), key_pem=_pkcs8(key))


def new_server_cert(
    ca: Issued,
    *,
    common_name: str,
    now: datetime,
    lifetime: timedelta,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[IPv4Address | IPv6Address] = (),
    algorithm: KeyAlgorithm = "ecdsa-p256",
) -> Issued:
    """A server certificate and key; SAN holds the CN, `dns_names` and `ip_addresses`."""
    return _new_leaf(
        ca,
        common_name=common_name,
        now=now,
        lifetime=lifetime,
        algorithm=algorithm,
        usage="server",
        dns_names=dns_names,
        ip_addresses=ip_addresses,
    )


def new_client_cert(
    ca: Issued,
    *,
    common_name: str,
    now: datetime,
    lifetime: timedelta,
    algorithm: KeyAlgorithm = "ecdsa-p256",
) -> Issued:
    """A client certificate and key, CN = `common_name` (the node name)."""
    return _new_leaf(
        ca,
        common_name=common_name,
        now=now,
        lifetime=lifetime,
        algorithm=algorithm,
        usage="client",
    )


def new_csr(key_pem: bytes, *, common_name: str, organization: str | None = None) -> bytes:
    """A PEM CSR for `key_pem`, subject CN (and O, e.g. 'system:nodes'). The node agent
    makes its own key and CSR, so its private key never leaves the node."""
    check_common_name(common_name, what="CSR common name")
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization is not None:
        attrs.append(
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, check_organization(organization))
        )
    key = load_private_key(key_pem)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name(attrs))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def _csr_subject(csr: x509.CertificateSigningRequest) -> tuple[str, str | None]:
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1:
        raise MalformedMaterial(
            f"CSR subject has {len(cns)} common names, exactly one is needed: "
            "ask the node agent for a new CSR with CN=<node name>"
        )
    common_name = check_common_name(cn_of(csr.subject), what="CSR common name")
    orgs = csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    organization = None
    if orgs:
        value = orgs[0].value
        organization = value if isinstance(value, str) else value.decode("utf-8", "replace")
    return common_name, organization


def csr_info(csr_pem: bytes) -> tuple[str, str | None]:
    """(CN, O) of a CSR whose self-signature verifies.

    Raises `MalformedMaterial` (not PEM, not a CSR, bad signature, no single CN)
    or `InvalidName` (the CN is not a valid node name).
    """
    return _csr_subject(load_csr(csr_pem))


def _check_csr_key(key: PublicKey, *, common_name: str) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, _ACCEPTED_CURVES):
            raise PKIError(
                f"CSR for CN={common_name} uses curve {key.curve.name}: "
                "use an ECDSA P-256 or P-384 key"
            )
    elif key.key_size < _MIN_RSA_BITS:
        raise PKIError(
            f"CSR for CN={common_name} has a {key.key_size}-bit RSA key: "
            f"use at least {_MIN_RSA_BITS} bits (or ECDSA P-256)"
        )


def sign_csr(
    ca: Issued,
    csr_pem: bytes,
    *,
    now: datetime,
    lifetime: timedelta,
    usage: LeafUsage,
) -> bytes:
    """Sign a CSR as a client or server certificate; returns the certificate PEM.

    Only the CN and the public key are taken from the CSR; every other subject
    attribute and every requested extension is ignored, so a node cannot ask for
    a CA bit or another usage.
    """
    if usage not in ("client", "server"):
        raise PKIError(f"usage {usage!r} is not 'client' or 'server'")
    now = utc(now)
    positive(lifetime, what=f"{usage} certificate lifetime")
    csr = load_csr(csr_pem)
    common_name, _ = _csr_subject(csr)
    public_key = csr.public_key()
    if not isinstance(public_key, PublicKey):
        raise PKIError(
            f"CSR for CN={common_name} has a {type(public_key).__name__}: "
            "only ECDSA and RSA keys are supported"
        )
    _check_csr_key(public_key, common_name=common_name)
    cert = _sign_leaf(
        ca,
        public_key=public_key,
        common_name=common_name,
        now=now,
        lifetime=lifetime,
        usage=usage,
    )
    return _cert_pem(cert)
