"""Reading and validating certificates that were loaded from somewhere.

Material comes back from Secrets, files and CSR approvals. Before openvpn is
started with it, `validate` finds what is wrong (corrupt file, a key of another
certificate, another tenant's CA, expired, a client certificate used as a
server's) and says so in one sentence, rather than leaving a person to decode a
TLS alert in openvpn's log.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID

from certs._material import (
    cn_of,
    describe,
    fmt,
    load_cert,
    load_private_key,
    public_key_of,
    spki,
    utc,
)
from certs.errors import ChainError, Expired, KeyMismatch, NotYetValid, PKIError, WrongUsage

Usage = Literal["ca", "server", "client", "other"]
CheckedUsage = Literal["ca", "server", "client"]
_E = TypeVar("_E", bound=x509.ExtensionType)


@dataclass(frozen=True)
class CertInfo:
    common_name: str
    serial: int
    not_before: datetime
    not_after: datetime
    issuer_cn: str
    is_ca: bool
    usage: Usage


def _ext(cert: x509.Certificate, kind: type[_E]) -> _E | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _is_ca(cert: x509.Certificate) -> bool:
    constraints = _ext(cert, x509.BasicConstraints)
    return constraints is not None and constraints.ca


def _ekus(cert: x509.Certificate) -> frozenset[x509.ObjectIdentifier]:
    eku = _ext(cert, x509.ExtendedKeyUsage)
    return frozenset(eku) if eku is not None else frozenset()


def _usage(cert: x509.Certificate) -> Usage:
    if _is_ca(cert):
        return "ca"
    ekus = _ekus(cert)
    server = ExtendedKeyUsageOID.SERVER_AUTH in ekus
    client = ExtendedKeyUsageOID.CLIENT_AUTH in ekus
    if server and not client:
        return "server"
    if client and not server:
        return "client"
    return "other"


def info_of(cert: x509.Certificate) -> CertInfo:
    return CertInfo(
        common_name=cn_of(cert.subject),
        serial=cert.serial_number,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        issuer_cn=cn_of(cert.issuer),
        is_ca=_is_ca(cert),
        usage=_usage(cert),
    )


def cert_info(cert_pem: bytes) -> CertInfo:
    """What a certificate is; raises `MalformedMaterial` if it is not one."""
    return info_of(load_cert(cert_pem))


def check_time(cert: x509.Certificate, *, now: datetime, role: str = "certificate") -> None:
    now = utc(now)
    if now < cert.not_valid_before_utc:
        raise NotYetValid(
            f"{describe(cert, role=role)} is not valid before "
            f"{fmt(cert.not_valid_before_utc)} (now {fmt(now)}): check this machine's clock, "
            "or wait"
        )
    if now > cert.not_valid_after_utc:
        raise Expired(
            f"{describe(cert, role=role)} expired at {fmt(cert.not_valid_after_utc)} "
            f"(now {fmt(now)}): renew it"
        )


def check_issued_by(cert: x509.Certificate, ca: x509.Certificate) -> None:
    """Raise `ChainError` unless `ca` is a CA and signed `cert`."""
    if not _is_ca(ca):
        raise ChainError(
            f"{describe(ca, role='CA certificate')} is not a CA (no BasicConstraints CA:TRUE): "
            "pass the tenant's CA certificate, not a leaf"
        )
    if cert.issuer != ca.subject:
        raise ChainError(
            f"{describe(cert)} was issued by CN={cn_of(cert.issuer) or '<none>'}, not by "
            f"{describe(ca, role='CA')}: it belongs to another CA (another tenant?); "
            "re-issue it from this CA"
        )
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):
        raise ChainError(
            f"{describe(cert)} names {describe(ca, role='CA')} as issuer but its signature "
            "does not verify with that CA's key: it was signed by another CA of the same "
            "name; re-issue it from this CA"
        ) from None


def check_key_matches(cert: x509.Certificate, key_pem: bytes) -> None:
    key = load_private_key(key_pem, what=f"private key for {describe(cert)}")
    if spki(key) != spki(public_key_of(cert, what=describe(cert))):
        raise KeyMismatch(
            f"private key does not match {describe(cert)}: it belongs to another "
            "certificate; install the key that was generated with this certificate, "
            "or re-issue both"
        )


def check_usage(cert: x509.Certificate, usage: CheckedUsage) -> None:
    ku = _ext(cert, x509.KeyUsage)
    ekus = _ekus(cert)
    have = _usage(cert)
    if usage == "ca":
        if not _is_ca(cert) or ku is None or not ku.key_cert_sign:
            raise WrongUsage(
                f"{describe(cert)} is a {have} certificate, not a CA (needs BasicConstraints "
                "CA:TRUE and keyCertSign): pass the CA certificate"
            )
        return
    if _is_ca(cert):
        raise WrongUsage(
            f"{describe(cert)} is a CA certificate, not a {usage} certificate: "
            f"pass the {usage} certificate issued by it"
        )
    wanted = (
        ExtendedKeyUsageOID.SERVER_AUTH if usage == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
    )
    eku_name = "serverAuth" if usage == "server" else "clientAuth"
    if wanted not in ekus:
        raise WrongUsage(
            f"{describe(cert)} is a {have} certificate without extended key usage "
            f"{eku_name}, so openvpn will refuse it as a {usage} certificate: "
            f"issue a {usage} certificate"
        )
    # openvpn's `remote-cert-tls` requires the keyUsage extension to be present, and
    # OpenSSL requires digitalSignature for the (EC)DHE handshakes we use.
    if ku is None or not ku.digital_signature:
        raise WrongUsage(
            f"{describe(cert)} has no keyUsage digitalSignature, which openvpn's "
            f"remote-cert-tls {usage} requires: re-issue it"
        )


def validate(
    cert_pem: bytes,
    *,
    key_pem: bytes | None = None,
    ca_pem: bytes | None = None,
    now: datetime,
    usage: CheckedUsage | None = None,
) -> CertInfo:
    """Check loaded material and return what it is, or raise the specific `PKIError`.

    Order: the certificate parses (`MalformedMaterial`); it chains to `ca_pem`
    (`ChainError`) and the CA itself is valid now; `key_pem` is its key
    (`KeyMismatch`); it is valid at `now` (`NotYetValid`, `Expired`); it fits
    `usage` (`WrongUsage`).
    """
    now = utc(now)
    if usage is not None and usage not in ("ca", "server", "client"):
        raise PKIError(f"usage {usage!r} is not one of 'ca', 'server', 'client'")
    cert = load_cert(cert_pem)
    if ca_pem is not None:
        ca = load_cert(ca_pem, what="CA certificate")
        check_issued_by(cert, ca)
        check_time(ca, now=now, role="CA certificate")
    if key_pem is not None:
        check_key_matches(cert, key_pem)
    check_time(cert, now=now)
    if usage is not None:
        check_usage(cert, usage)
    return info_of(cert)
