"""The revocation book's I/O, and the revocation step of a tenant's reconcile.

The book (``vpnctl.reconcile.revocation_book``) lives in the ConfigMap
``<cluster>-vpn-revocations``, owned by the Tunnel and written only here: every write is
a read-modify-write with the read's resourceVersion (Conflict: read again and redo the
change), so the CSR signer recording a new certificate and the reconciler revoking one
never lose each other's entries.

``revoke_and_plan_crl`` is what the reconciler calls on every pass, including passes
where the Tunnel's spec is invalid: it records what the tenant side reported as signed,
revokes the certificates of Machines that are gone, drops what has expired, and plans
the CRL from the book, so a deleted or edited server ConfigMap is simply re-published.

A missing book is re-created: seeded from the published CRL and the serials in the
Tunnel's status (what an older vpnctl, or a lost book, left), with a Warning Event,
because certificates signed since may be unknown. A book that cannot be read stops
signing and revoking (PermanentError ``CorruptRevocations``): nothing is ever guessed
over a record of revocations.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

import certs
from vpnctl.controller import pki_decisions as pki
from vpnctl.controller.interfaces import TenantRef, TenantSideResult
from vpnctl.kube import (
    CONFIG_MAP,
    AlreadyExists,
    Clock,
    Conflict,
    KubeObject,
    ObjectApi,
    with_retries,
)
from vpnctl.reconcile.errors import TemporaryError
from vpnctl.reconcile.names import (
    COMPONENT_PKI,
    TenantNames,
    labels,
    tunnel_owner_reference,
)
from vpnctl.reconcile.revocation_book import (
    BOOK_KEY,
    IssuedCert,
    RevocationBook,
    RevokedCert,
    ca_fingerprint,
    live_machines,
    parse_book,
    prune,
    render_book,
    revoke_gone,
    with_issued,
    with_revoked,
)

_log = logging.getLogger(__name__)

T = TypeVar("T")

_MAX_CONFLICTS = 8


class RevocationsMissing(TemporaryError):
    """The book does not exist (yet): the reconciler creates it with the CA."""


@dataclass(frozen=True, kw_only=True)
class TunnelOwner:
    """What the book's metadata needs: the Tunnel it belongs to."""

    namespace: str
    cluster: str
    tunnel_uid: str


class RevocationStore:
    """Reads and writes tenants' revocation books in the service cluster."""

    def __init__(
        self,
        *,
        kube: ObjectApi,
        clock: Clock,
        rng: random.Random,
        attempts: int = 4,
        on_write: Callable[[str], None] | None = None,
    ) -> None:
        """``on_write("create"|"replace")`` is called after each write (for metrics)."""
        self._kube = kube
        self._clock = clock
        self._rng = rng
        self._attempts = attempts
        self._on_write = on_write

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        return await with_retries(fn, rng=self._rng, clock=self._clock, attempts=self._attempts)

    @staticmethod
    def name(tenant: TenantRef) -> str:
        return TenantNames.for_cluster(tenant.cluster).revocations

    def where(self, tenant: TenantRef) -> str:
        return f"ConfigMap {tenant.namespace}/{self.name(tenant)}"

    async def read(self, tenant: TenantRef) -> RevocationBook | None:
        live = await self._call(
            lambda: self._kube.get(CONFIG_MAP, self.name(tenant), tenant.namespace)
        )
        return None if live is None else self._parse(tenant, live)

    def _parse(self, tenant: TenantRef, live: Mapping[str, Any]) -> RevocationBook:
        data = live.get("data") or {}
        return parse_book(str(data.get(BOOK_KEY) or ""), where=self.where(tenant))

    async def update(
        self,
        tenant: TenantRef,
        change: Callable[[RevocationBook | None], RevocationBook],
        *,
        owner: TunnelOwner | None = None,
    ) -> tuple[RevocationBook, bool]:
        """Apply ``change`` to the stored book (None when there is none) and write the
        result if it differs; (book, created). Without ``owner`` a missing book raises
        RevocationsMissing instead of being created."""
        name = self.name(tenant)
        for _ in range(_MAX_CONFLICTS):
            live = await self._call(lambda: self._kube.get(CONFIG_MAP, name, tenant.namespace))
            current = None if live is None else self._parse(tenant, live)
            if current is None and owner is None:
                raise RevocationsMissing(
                    reason="RevocationsMissing",
                    message=(
                        f"{self.where(tenant)} (vpnctl's record of node certificates) does "
                        "not exist yet; nothing is signed until the Tunnel's reconcile "
                        "creates it"
                    ),
                )
            book = change(current)
            if current is not None and book == current:
                return current, False
            try:
                await self._call(self._writer(live, owner, book))
            except (Conflict, AlreadyExists):
                continue  # someone wrote in between: redo the change on what they wrote
            if self._on_write is not None:
                self._on_write("create" if live is None else "replace")
            return book, live is None
        raise TemporaryError(
            reason="RevocationsContended",
            message=f"{self.where(tenant)} changed under {_MAX_CONFLICTS} writes in a row",
        )

    def _writer(
        self, live: KubeObject | None, owner: TunnelOwner | None, book: RevocationBook
    ) -> Callable[[], Awaitable[KubeObject]]:
        if live is None:
            assert owner is not None
            created = book_config_map(owner, book)
            return lambda: self._kube.create(CONFIG_MAP, created)
        body = dict(live)
        body["data"] = {**(live.get("data") or {}), BOOK_KEY: render_book(book)}
        return lambda: self._kube.replace(CONFIG_MAP, body)

    async def record_issued(self, tenant: TenantRef, cert: IssuedCert) -> None:
        """Record a node certificate before it is handed out (the CSR signer's call).
        Raises RevocationsMissing when the book does not exist: then don't sign."""
        await self.update(tenant, lambda book: with_issued(_must(book), [cert]))


def _must(book: RevocationBook | None) -> RevocationBook:
    assert book is not None  # update() raises before calling change() without a book
    return book


def book_config_map(owner: TunnelOwner, book: RevocationBook) -> KubeObject:
    """The ConfigMap holding a tenant's book, owned by its Tunnel (so `clusterctl move`
    takes it along with the Cluster, and deleting the Tunnel deletes it)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": TenantNames.for_cluster(owner.cluster).revocations,
            "namespace": owner.namespace,
            "labels": labels(cluster_name=owner.cluster, component=COMPONENT_PKI),
            "ownerReferences": [
                tunnel_owner_reference(tunnel_name=owner.cluster, tunnel_uid=owner.tunnel_uid)
            ],
        },
        "data": {BOOK_KEY: render_book(book)},
    }


# --- the reconcile step -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RevocationStep:
    book: RevocationBook
    crl: pki.CRLPlan
    newly_revoked: frozenset[int]
    created: bool  # the book was (re-)created in this pass


def _crl_entries(crl_pem: bytes | None, ca: certs.Issued) -> Mapping[int, datetime]:
    if not crl_pem:
        return {}
    try:
        return pki.read_crl(crl_pem, ca_pem=ca.cert_pem).revoked
    except certs.PKIError:
        return {}


async def revoke_and_plan_crl(
    store: RevocationStore,
    *,
    tenant: TenantRef,
    owner: TunnelOwner,
    ca: certs.Issued,
    current_crl_pem: bytes | None,
    machines: Sequence[Mapping[str, Any]],
    kept: Collection[str] = (),
    reported: Iterable[IssuedCert] = (),
    known_serials: Iterable[tuple[str, str | None, int]] = (),
    revoke: Iterable[tuple[str, int]] = (),
    now: datetime,
    crl_lifetime: timedelta,
) -> RevocationStep:
    """One pass of revocation for a tenant; see the module docstring.

    ``machines``: the Cluster's Machines now; ``kept``: those being deleted whose nodes
    keep their certificates for now (``machine_deletion``). ``reported``: certificates the
    tenant side reports as signed. ``known_serials``: (node, machine, serial) the Tunnel's
    status keeps, used to seed a new book. ``revoke``: (node, serial) to revoke whatever the
    book says (Machines whose allocations leave the status). The certificates' expiry,
    when the book does not know it, is bounded by the CA's (no certificate outlives its
    CA here: ``certs.sign_csr`` caps it).
    """
    ca_not_after = certs.cert_info(ca.cert_pem).not_after
    published = _crl_entries(current_crl_pem, ca)
    live = live_machines(machines, kept=kept)
    outcome: dict[str, Any] = {}

    def change(stored: RevocationBook | None) -> RevocationBook:
        if stored is None:  # seed what is known elsewhere
            book = RevocationBook(ca="")
            book, _ = with_revoked(
                book,
                [
                    RevokedCert(serial=s, node="", not_after=ca_not_after, revoked_at=at)
                    for s, at in published.items()
                ],
            )
            book = with_issued(
                book,
                [
                    IssuedCert(serial=s, node=node, machine=machine, not_after=ca_not_after)
                    for node, machine, s in known_serials
                ],
            )
        else:
            book = stored
        fingerprint = ca_fingerprint(ca.cert_pem)
        if book.ca != fingerprint:
            if book.ca:
                _log.warning(
                    "event=revocations_ca_changed tenant=%s book_ca=%s ca=%s",
                    tenant,
                    book.ca[:16],
                    fingerprint[:16],
                )
            book = replace(book, ca=fingerprint)
        book = with_issued(book, reported)
        book, newly_listed = with_revoked(
            book,
            [
                RevokedCert(
                    serial=s,
                    node=node,
                    not_after=book.issued[s].not_after if s in book.issued else ca_not_after,
                    revoked_at=now,
                )
                for node, s in revoke
            ],
        )
        book, newly_gone = revoke_gone(book, machines=live, now=now)
        book = prune(book, now=now)
        crl = pki.plan_crl(
            ca=ca,
            current_pem=current_crl_pem,
            revoked=book.revoked_at(),
            now=now,
            lifetime=crl_lifetime,
            number_floor=book.crl_number,
        )
        outcome["crl"] = crl
        outcome["newly"] = newly_listed | newly_gone
        return replace(book, crl_number=max(book.crl_number, crl.state.number))

    book, created = await store.update(tenant, change, owner=owner)
    return RevocationStep(
        book=book, crl=outcome["crl"], newly_revoked=outcome["newly"], created=created
    )


def reported_certificates(result: TenantSideResult, *, ca: certs.Issued) -> tuple[IssuedCert, ...]:
    """What the tenant side reports as signed, as book entries: ``certificates``, plus
    serials only in ``signed`` with the CA's expiry as their bound."""
    out = list(result.certificates)
    known = {c.serial for c in out}
    ca_not_after = certs.cert_info(ca.cert_pem).not_after
    for node, text in result.signed:
        serial = pki.parse_serial(text)
        if serial is not None and serial not in known:
            known.add(serial)
            out.append(IssuedCert(serial=serial, node=node, not_after=ca_not_after))
    return tuple(out)
