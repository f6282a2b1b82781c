"""Parsing and checking helpers shared by the modules of `certs`.

Everything that reads bytes handed in by a caller goes through here, so that a
corrupt file always turns into a `MalformedMaterial` that names the expected
kind of PEM block and what was found instead, and never quotes the content (it
may be a private key).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from certs.errors import InvalidName, MalformedMaterial, PKIError

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
_Parsed = TypeVar("_Parsed")

# X.509's upper bound for a commonName (RFC 5280, ub-common-name).
MAX_CN_LEN = 64
# Kubernetes' limit for a DNS-1123 subdomain (a node name).
MAX_DNS_NAME_LEN = 253
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_PEM_BEGIN = re.compile(rb"-----BEGIN ([A-Za-z0-9 ._-]{1,64})-----")


def _shown(value: str, limit: int = 80) -> str:
    """A name quoted for an error message: repr() makes newlines and controls visible."""
    if len(value) > limit:
        return repr(value[:limit]) + "..."
    return repr(value)


def check_common_name(common_name: object, *, what: str = "common name") -> str:
    """Return `common_name` if it is a DNS-1123 subdomain of at most 64 characters.

    Node names are DNS-1123 subdomains, and every CN we issue is used by openvpn
    as a file name in the client-config-dir, so the same rule keeps CCD paths and
    log lines safe (no spaces, slashes, newlines).
    """
    if not isinstance(common_name, str):
        raise InvalidName(f"{what} must be a str, got {type(common_name).__name__}")
    if not common_name:
        raise InvalidName(f"{what} is empty: use the Kubernetes node name (or the server/CA name)")
    if len(common_name) > MAX_CN_LEN:
        raise InvalidName(
            f"{what} {_shown(common_name)} is {len(common_name)} characters, more than the "
            f"{MAX_CN_LEN} an X.509 common name allows: use a shorter name"
        )
    if not _DNS1123_SUBDOMAIN.fullmatch(common_name):
        raise InvalidName(
            f"{what} {_shown(common_name)} is not a DNS-1123 subdomain (lowercase letters, "
            "digits, '-' and '.', starting and ending with a letter or digit): "
            "use the Kubernetes node name"
        )
    return common_name


def check_dns_name(dns_name: object) -> str:
    """Return `dns_name` if it is a DNS-1123 subdomain (no wildcards)."""
    if not isinstance(dns_name, str):
        raise InvalidName(f"DNS name must be a str, got {type(dns_name).__name__}")
    if len(dns_name) > MAX_DNS_NAME_LEN or not _DNS1123_SUBDOMAIN.fullmatch(dns_name):
        raise InvalidName(
            f"DNS name {_shown(dns_name)} is not a DNS-1123 subdomain of at most "
            f"{MAX_DNS_NAME_LEN} characters: fix the server's dns_names"
        )
    return dns_name


def check_organization(organization: object) -> str:
    """Return `organization` if it is 1-64 printable characters (e.g. 'system:nodes')."""
    if not isinstance(organization, str):
        raise InvalidName(f"organization must be a str, got {type(organization).__name__}")
    if not 0 < len(organization) <= MAX_CN_LEN or not organization.isprintable():
        raise InvalidName(
            f"organization {_shown(organization)} must be 1 to {MAX_CN_LEN} printable "
            "characters without newlines: fix the organization"
        )
    return organization


def utc(moment: datetime, *, what: str = "now") -> datetime:
    """`moment` in UTC; a naive datetime is refused because its zone is a guess."""
    if not isinstance(moment, datetime):
        raise PKIError(f"{what} must be a datetime, got {type(moment).__name__}")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise PKIError(
            f"{what} {moment.isoformat()} has no time zone: pass a tz-aware datetime "
            "such as datetime.now(UTC)"
        )
    return moment.astimezone(UTC)


def positive(delta: timedelta, *, what: str) -> timedelta:
    if not isinstance(delta, timedelta):
        raise PKIError(f"{what} must be a timedelta, got {type(delta).__name__}")
    if delta <= timedelta(0):
        raise PKIError(f"{what} must be positive, got {delta}: pass e.g. timedelta(days=365)")
    return delta


def fmt(moment: datetime) -> str:
    """RFC 3339 in UTC with a Z, to the second, as people read it in logs."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cn_of(name: x509.Name) -> str:
    """The first commonName of `name`, or '' if it has none."""
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        return ""
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def describe(cert: x509.Certificate, *, role: str = "certificate") -> str:
    """'certificate CN=node-1 (serial 0x...)', the way every message names a cert."""
    return f"{role} CN={cn_of(cert.subject) or '<none>'} (serial {cert.serial_number:#x})"


def _pem_label(data: bytes, *, prefer: tuple[str, ...] = ()) -> str | None:
    """The first PEM label in `data` that is in `prefer`, else the first label at all.

    Files often carry an extra block first (openssl's EC PARAMETERS before the key).
    """
    labels = [match.group(1).decode("ascii") for match in _PEM_BEGIN.finditer(data)]
    for label in labels:
        if label in prefer:
            return label
    return labels[0] if labels else None


def _expect_pem(data: object, *, labels: tuple[str, ...], what: str) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedMaterial(
            f"{what} must be PEM bytes, got {type(data).__name__}: read the file in binary mode"
        )
    raw = bytes(data)
    label = _pem_label(raw, prefer=labels)
    if label is None:
        raise MalformedMaterial(
            f"{what} is not PEM: no '-----BEGIN {labels[0]}-----' line found; "
            "pass the PEM file's content (not DER, not a path)"
        )
    if label not in labels:
        raise MalformedMaterial(
            f"{what} is a PEM '{label}' block where '{labels[0]}' was expected: "
            "check that the files were not swapped"
        )
    return raw


def _decode(load: Callable[[bytes], _Parsed], raw: bytes, *, failure: str) -> _Parsed:
    """`load(raw)`, with a ValueError (a body that does not decode) turned into
    `MalformedMaterial(failure)`; the parser's own text may quote the content."""
    try:
        return load(raw)
    except ValueError:
        raise MalformedMaterial(failure) from None


def load_cert(data: object, *, what: str = "certificate") -> x509.Certificate:
    return _decode(
        x509.load_pem_x509_certificate,
        _expect_pem(data, labels=("CERTIFICATE",), what=what),
        failure=f"{what} is not a valid certificate: its PEM body does not decode as X.509; "
        "the file is truncated or corrupt, re-issue or re-copy it",
    )


def load_private_key(data: object, *, what: str = "private key") -> PrivateKey:
    if isinstance(data, bytes) and _pem_label(data) == "ENCRYPTED PRIVATE KEY":
        raise MalformedMaterial(f"{what} is encrypted with a passphrase: pass an unencrypted key")
    raw = _expect_pem(data, labels=("PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY"), what=what)
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except TypeError:
        raise MalformedMaterial(
            f"{what} is encrypted with a passphrase: pass an unencrypted key"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        # The exception text can quote parts of the key: never pass it on.
        raise MalformedMaterial(
            f"{what} is not a valid private key: its PEM body does not decode; "
            "the file is truncated or corrupt, generate a new key"
        ) from None
    if not isinstance(key, PrivateKey):
        raise MalformedMaterial(
            f"{what} is a {type(key).__name__}: only ECDSA and RSA keys are supported"
        )
    return key


def load_csr(data: object, *, what: str = "CSR") -> x509.CertificateSigningRequest:
    csr = _decode(
        x509.load_pem_x509_csr,
        _expect_pem(data, labels=("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"), what=what),
        failure=f"{what} is not a valid certificate signing request: its PEM body does not "
        "decode; ask the node agent for a new one",
    )
    try:
        signature_ok = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm):
        signature_ok = False
    if not signature_ok:
        raise MalformedMaterial(
            f"{what} has a bad self-signature (it was altered, or signed by another key): "
            "ask the node agent for a new one"
        )
    return csr


def load_crl(data: object, *, what: str = "CRL") -> x509.CertificateRevocationList:
    return _decode(
        x509.load_pem_x509_crl,
        _expect_pem(data, labels=("X509 CRL",), what=what),
        failure=f"{what} is not a valid certificate revocation list: its PEM body does not "
        "decode; rebuild it from the CA",
    )


def spki(key: PublicKey | PrivateKey) -> bytes:
    """The DER SubjectPublicKeyInfo of a key, to compare keys by value."""
    public = key.public_key() if isinstance(key, PrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_key_of(cert: x509.Certificate, *, what: str) -> PublicKey:
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise MalformedMaterial(f"{what}: its public key cannot be read") from None
    if not isinstance(key, PublicKey):
        raise MalformedMaterial(
            f"{what} has a {type(key).__name__}: only ECDSA and RSA keys are supported"
        )
    return key
