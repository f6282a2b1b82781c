"""The node certificates the CSR signer handed out, as the tenant side reports them.

Pure: an issued CSR's certificate is read back (``issued_certificate``, for CSRs signed
before a restart), and the ones not yet expired are reported oldest first
(``signed_report``) to the controller, which revokes them with their Machine.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import certs
from vpnctl.reconcile.revocation_book import IssuedCert


@dataclass(frozen=True)
class SignedCert:
    """A node certificate of the tenant CA, as ``TenantSideResult.signed`` reports it."""

    node: str
    serial: str  # lower-case hex, as status.allocations keeps it
    not_before: datetime
    not_after: datetime
    machine: str | None = None  # the Machine that vouched, when this process signed it

    @classmethod
    def of(cls, cert: IssuedCert, *, not_before: datetime) -> SignedCert:
        """The report of a certificate the signer just issued (at ``not_before``)."""
        serial = format(cert.serial, "x")
        return cls(cert.node, serial, not_before, cert.not_after, machine=cert.machine)

    def issued(self) -> IssuedCert:
        """As the revocation book records it."""
        return IssuedCert(
            serial=int(self.serial, 16),
            node=self.node,
            machine=self.machine,
            not_after=self.not_after,
        )


def issued_certificate(
    csr: Mapping[str, Any], *, ca_pem: bytes, now: datetime
) -> SignedCert | None:
    """The node certificate in an issued CSR's status.certificate when it is a client
    certificate of ``ca_pem`` valid at ``now``; None for anything else (not issued, not
    PEM, another CA's, expired)."""
    status = csr.get("status")
    encoded = status.get("certificate") if isinstance(status, Mapping) else None
    if not isinstance(encoded, str) or not encoded:
        return None
    try:
        chain = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
    end = b"-----END CERTIFICATE-----"
    if end not in chain:
        return None
    leaf = chain[: chain.index(end) + len(end)] + b"\n"
    try:
        info = certs.validate(leaf, ca_pem=ca_pem, now=now, usage="client")
    except (certs.PKIError, ValueError):
        return None
    return SignedCert(
        node=info.common_name,
        serial=format(info.serial, "x"),
        not_before=info.not_before,
        not_after=info.not_after,
    )


def signed_report(issued: Iterable[SignedCert], *, now: datetime) -> tuple[tuple[str, str], ...]:
    """(node, serial) of the certificates not yet expired, oldest first."""
    live = sorted((c for c in issued if c.not_after > now), key=lambda c: (c.not_before, c.serial))
    return tuple((c.node, c.serial) for c in live)


def signer_of(obj: Mapping[str, Any]) -> str:
    spec = obj.get("spec")
    return str(spec.get("signerName") or "") if isinstance(spec, Mapping) else ""
