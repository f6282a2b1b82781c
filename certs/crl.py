"""The tenant's certificate revocation list.

The server runs with `crl-verify`, so a node whose Machine is gone is refused at
its next handshake once its serial is in the CRL. OpenSSL (and so openvpn)
refuses every client once the CRL's nextUpdate has passed ("CRL has expired"),
so the controller must rebuild and install the CRL well before `next_update`
runs out, even when nothing new was revoked. thisUpdate is set 5 minutes before
`now` for the same clock-skew reason as certificates' notBefore.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from certs._material import cn_of, describe, load_cert, load_crl, positive, public_key_of, utc
from certs.check import check_usage
from certs.errors import ChainError, PKIError
from certs.issue import CLOCK_SKEW, Issued, load_ca


@dataclass(frozen=True)
class Revoked:
    serial: int
    revoked_at: datetime


def build_crl(
    ca: Issued,
    *,
    revoked: Sequence[Revoked],
    now: datetime,
    next_update: timedelta,
    crl_number: int,
) -> bytes:
    """A PEM CRL signed by `ca`, listing `revoked`, valid until `now + next_update`.

    `crl_number` must grow with every CRL the CA issues (RFC 5280 5.2.3); the
    caller keeps it. A serial listed twice is kept once, at its earliest time.
    """
    now = utc(now)
    positive(next_update, what="CRL next_update")
    if not isinstance(crl_number, int) or isinstance(crl_number, bool) or crl_number < 0:
        raise PKIError(f"crl_number must be a non-negative int, got {crl_number!r}")
    ca_cert, ca_key = load_ca(ca, now=now)
    earliest: dict[int, datetime] = {}
    for entry in revoked:
        if not isinstance(entry, Revoked):
            raise PKIError(f"revoked must hold Revoked entries, got {type(entry).__name__}")
        if not isinstance(entry.serial, int) or entry.serial <= 0:
            raise PKIError(f"revoked serial {entry.serial!r} is not a positive int")
        at = utc(entry.revoked_at, what=f"revoked_at of serial {entry.serial:#x}")
        earliest[entry.serial] = min(at, earliest.get(entry.serial, at))
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - CLOCK_SKEW)
        .next_update(now + next_update)
        .add_extension(x509.CRLNumber(crl_number), critical=False)
        .add_extension(aki, critical=False)
    )
    for serial, at in sorted(earliest.items()):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(at).build()
        )
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def crl_next_update(crl_pem: bytes) -> datetime | None:
    """The CRL's nextUpdate (UTC), after which OpenSSL refuses every client; None if the
    CRL has none. Raises `MalformedMaterial` for a corrupt CRL."""
    return load_crl(crl_pem).next_update_utc


def crl_serials(crl_pem: bytes, *, ca_pem: bytes) -> frozenset[int]:
    """The serials a CRL revokes, after checking that `ca_pem` signed it.

    Raises `MalformedMaterial` for a corrupt CRL or CA, `ChainError` for a CRL
    of another CA. It does not look at the CRL's dates (no clock here).
    """
    crl = load_crl(crl_pem)
    ca = load_cert(ca_pem, what="CA certificate")
    check_usage(ca, "ca")
    ca_name = describe(ca, role="CA")
    if crl.issuer != ca.subject:
        raise ChainError(
            f"CRL was issued by CN={cn_of(crl.issuer) or '<none>'}, not by {ca_name}: "
            "install the CRL built by this tenant's CA"
        )
    if not crl.is_signature_valid(public_key_of(ca, what=ca_name)):
        raise ChainError(
            f"CRL names {ca_name} as issuer but its signature does not verify with that "
            "CA's key: it was built by another CA of the same name; rebuild it from this CA"
        )
    return frozenset(entry.serial_number for entry in crl)
