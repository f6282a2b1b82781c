"""Decisions about a tenant's PKI material that need no I/O: what to issue, renew, revoke.

`tenant.py` reads the Secrets and the server ConfigMap, calls these, and writes what they
return. Kept apart so the rules (never a new CA over a corrupt one, renew leaf
certificates with the same CA, CRL numbers only grow, CRL re-issued long before
nextUpdate) are readable in one place and testable without an apiserver.

The CRL in the server ConfigMap is *derived*: the durable record of revocations is the
revocation book (`vpnctl.reconcile.revocation_book`), which keeps each revoked serial until
its own certificate has expired. A lost or edited server ConfigMap is re-published from
the book, so a published CRL shrinks only when a certificate expires.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509

import certs

# Certificate roles, as used in metrics labels and messages.
CA = "ca"
SERVER = "server"
APISERVER = "apiserver"
CRL = "crl"

DEFAULT_CRL_LIFETIME = timedelta(days=7)


@dataclass(frozen=True, kw_only=True)
class CRLState:
    """A CRL as read back from the server ConfigMap."""

    number: int
    next_update: datetime
    revoked: Mapping[int, datetime]  # serial -> revocation time


@dataclass(frozen=True, kw_only=True)
class CRLPlan:
    pem: bytes = field(repr=False)
    state: CRLState
    changed: bool
    # Serials newly listed in this round (the Machines just deleted).
    newly_revoked: frozenset[int]
    # Why the CRL read back could not be used, if it could not (a person should know:
    # earlier revocations may be lost).
    problem: str | None = None

    lifetime: timedelta = DEFAULT_CRL_LIFETIME

    @property
    def refresh_at(self) -> datetime:
        """When to re-issue it even if nothing new is revoked: once half its validity is
        left, so a controller that is down for days still leaves the servers a valid CRL
        (openvpn refuses every client once nextUpdate has passed)."""
        return self.state.next_update - self.lifetime / 2


def read_crl(crl_pem: bytes, *, ca_pem: bytes) -> CRLState:
    """Parse a CRL issued by ``ca_pem``; raises certs.PKIError if it is not one."""
    certs.crl_serials(crl_pem, ca_pem=ca_pem)  # checks issuer and signature
    try:
        crl = x509.load_pem_x509_crl(crl_pem)
        number_ext = crl.extensions.get_extension_for_class(x509.CRLNumber)
    except (ValueError, x509.ExtensionNotFound) as exc:
        raise certs.MalformedMaterial(f"CRL without a readable CRL number: {exc}") from None
    next_update = crl.next_update_utc
    if next_update is None:
        raise certs.MalformedMaterial("CRL has no nextUpdate")
    return CRLState(
        number=int(number_ext.value.crl_number),
        next_update=next_update,
        revoked={entry.serial_number: entry.revocation_date_utc for entry in crl},
    )


def plan_crl(
    *,
    ca: certs.Issued,
    current_pem: bytes | None,
    revoked: Mapping[int, datetime],
    now: datetime,
    lifetime: timedelta = DEFAULT_CRL_LIFETIME,
    number_floor: int = 0,
) -> CRLPlan:
    """The CRL to install: one that lists exactly ``revoked`` (serial -> revocation time,
    the revocation book's entries). The current one is kept when it lists exactly those
    serials and is fresh enough; else a new one is numbered above both the current CRL
    and ``number_floor`` (the last number the book recorded), so numbers only grow even
    when the published CRL was lost.
    """
    problem: str | None = None
    state: CRLState | None = None
    if current_pem:
        try:
            state = read_crl(current_pem, ca_pem=ca.cert_pem)
        except certs.PKIError as exc:
            problem = (
                f"the CRL in the server ConfigMap is unusable ({exc}); it was re-issued "
                "from vpnctl's revocation record"
            )
    old = dict(state.revoked) if state is not None else {}
    wanted = {int(s): at for s, at in revoked.items()}
    newly = frozenset(set(wanted) - set(old))
    fresh_enough = (
        state is not None and state.next_update - now > lifetime / 2 and set(wanted) == set(old)
    )
    if state is not None and fresh_enough:
        return CRLPlan(
            pem=current_pem or b"",
            state=state,
            changed=False,
            newly_revoked=newly,
            lifetime=lifetime,
        )
    number = max(state.number if state is not None else 0, number_floor) + 1
    pem = certs.build_crl(
        ca,
        revoked=[certs.Revoked(serial=s, revoked_at=at) for s, at in sorted(wanted.items())],
        now=now,
        next_update=lifetime,
        crl_number=number,
    )
    return CRLPlan(
        pem=pem,
        state=CRLState(number=number, next_update=now + lifetime, revoked=wanted),
        changed=True,
        newly_revoked=newly,
        problem=problem,
        lifetime=lifetime,
    )


def serial_hex(cert_pem: bytes) -> str:
    """The certificate's serial as lower-case hex, the form desired.json and status use."""
    return format(certs.cert_info(cert_pem).serial, "x")


def parse_serial(text: str) -> int | None:
    try:
        value = int(text.replace(":", ""), 16)
    except ValueError:
        return None
    return value if value > 0 else None


def tls_crypt_client_key_fits(server_key: bytes, client_key: bytes | None) -> bool:
    """Whether ``client_key`` was wrapped by ``server_key`` (so the server accepts it)."""
    if not client_key:
        return False
    try:
        certs.tls_crypt_v2_client_metadata(server_key, client_key)
    except certs.PKIError:
        return False
    return True
