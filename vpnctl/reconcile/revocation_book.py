"""The revocation book: every node certificate vpnctl signed for a tenant, and which of
them are revoked, each with its own expiry.

Why a book of its own, and not the published CRL: the CRL lives in the server ConfigMap,
which anyone who deletes or edits that ConfigMap resets, and a CRL alone does not know
when each listed certificate expires. So vpnctl keeps, in a ConfigMap only it writes
(``<cluster>-vpn-revocations``, owned by the Tunnel, key ``revocations.json``):

- ``issued``: every node certificate it signed, recorded *before* the certificate is
  handed out (``with_issued``), with the node, the Machine that vouched and its
  ``not_after``; kept until it expires, never cut by count;
- ``revoked``: what it revoked, each with its revocation time and ``not_after``; a
  serial leaves only once its certificate has expired (``prune``), never because a
  Tunnel's ``clientLifetime`` passed or a list grew long;
- ``crl_number``: the last CRL number published, so numbers keep growing even when the
  published CRL is lost;
- ``ca``: the SHA-256 fingerprint of the CA the book belongs to, so a CA Secret that
  disappears is recognised as lost, not as "no CA yet".

Revocation is by Machine: an issued certificate is revoked once no live Machine of the
Cluster is the one that vouched for it with that node (``revoke_gone``). A Machine being
deleted stays live until its node is drained (``machine_deletion``). This holds
whatever else is wrong with the Tunnel's spec, so it runs even when planning fails.

Pure: plain data in and out; the I/O is ``vpnctl.controller.revocation_store``.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

import certs
from vpnctl.api import KubeObject
from vpnctl.reconcile.agentdocs import canonical_json
from vpnctl.reconcile.diff import stamp
from vpnctl.reconcile.errors import PermanentError
from vpnctl.reconcile.names import DESIRED_HASH_ANNOTATION
from vpnctl.reconcile.service_objects import CRL_PEM, DESIRED_JSON

BOOK_KEY = "revocations.json"
FORMAT = 1


@dataclass(frozen=True, kw_only=True)
class IssuedCert:
    """A node certificate vpnctl signed. ``machine`` is the Machine that vouched (None
    when only the node is known, e.g. a certificate found in an issued CSR)."""

    serial: int
    node: str
    not_after: datetime
    machine: str | None = None


@dataclass(frozen=True, kw_only=True)
class RevokedCert:
    serial: int
    node: str
    not_after: datetime
    revoked_at: datetime


@dataclass(frozen=True, kw_only=True)
class RevocationBook:
    ca: str = ""  # SHA-256 of the CA certificate (DER), hex
    crl_number: int = 0
    issued: Mapping[int, IssuedCert] = field(default_factory=dict)
    revoked: Mapping[int, RevokedCert] = field(default_factory=dict)

    def revoked_at(self) -> dict[int, datetime]:
        """serial -> revocation time: what the CRL must list."""
        return {s: r.revoked_at for s, r in self.revoked.items()}


@dataclass(frozen=True, kw_only=True)
class LiveMachine:
    """A Machine of the Cluster that is not being deleted, and its nodeRef (if any)."""

    name: str
    node: str | None


def ca_fingerprint(ca_pem: bytes) -> str:
    """SHA-256 of the CA certificate's DER, lower-case hex."""
    cert = x509.load_pem_x509_certificate(ca_pem)
    return cert.fingerprint(hashes.SHA256()).hex()


# --- the stored form ------------------------------------------------------------------------


def _time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: object, where: str) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"{where} is not an RFC 3339 time")
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"{where} has no time zone")
    return parsed.astimezone(UTC)


def _parse_serial(value: object, where: str) -> int:
    if not isinstance(value, str):
        raise ValueError(f"{where} is not a hex serial")
    serial = int(value, 16)
    if serial <= 0:
        raise ValueError(f"{where} is not a positive serial")
    return serial


def render_book(book: RevocationBook) -> str:
    doc = {
        "format": FORMAT,
        "ca": book.ca,
        "crlNumber": book.crl_number,
        "issued": [
            {
                "serial": format(c.serial, "x"),
                "node": c.node,
                "machine": c.machine,
                "notAfter": _time(c.not_after),
            }
            for c in sorted(book.issued.values(), key=lambda c: c.serial)
        ],
        "revoked": [
            {
                "serial": format(r.serial, "x"),
                "node": r.node,
                "notAfter": _time(r.not_after),
                "revokedAt": _time(r.revoked_at),
            }
            for r in sorted(book.revoked.values(), key=lambda r: r.serial)
        ],
    }
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def parse_book(text: str, *, where: str) -> RevocationBook:
    """The book from its stored JSON. PermanentError(CorruptRevocations) when it cannot be
    read: nothing is ever guessed over a book that may hold revocations."""
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"not a revocation book of format {FORMAT}")
        issued: dict[int, IssuedCert] = {}
        for i, item in enumerate(doc.get("issued") or []):
            at = f"issued[{i}]"
            serial = _parse_serial(item.get("serial"), f"{at}.serial")
            machine = item.get("machine")
            issued[serial] = IssuedCert(
                serial=serial,
                node=str(item["node"]),
                machine=str(machine) if machine is not None else None,
                not_after=_parse_time(item.get("notAfter"), f"{at}.notAfter"),
            )
        revoked: dict[int, RevokedCert] = {}
        for i, item in enumerate(doc.get("revoked") or []):
            at = f"revoked[{i}]"
            serial = _parse_serial(item.get("serial"), f"{at}.serial")
            revoked[serial] = RevokedCert(
                serial=serial,
                node=str(item["node"]),
                not_after=_parse_time(item.get("notAfter"), f"{at}.notAfter"),
                revoked_at=_parse_time(item.get("revokedAt"), f"{at}.revokedAt"),
            )
        number = doc.get("crlNumber", 0)
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise ValueError("crlNumber is not a non-negative integer")
        return RevocationBook(
            ca=str(doc.get("ca") or ""), crl_number=number, issued=issued, revoked=revoked
        )
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise PermanentError(
            reason="CorruptRevocations",
            message=(
                f"{where} key {BOOK_KEY} is unreadable ({type(exc).__name__}: {exc}); it is "
                "vpnctl's record of issued and revoked node certificates, so nothing is "
                "signed or revoked until it is restored from a backup (or fixed by hand)"
            ),
        ) from None


# --- changes ----------------------------------------------------------------------------------


def with_issued(book: RevocationBook, issued: Iterable[IssuedCert]) -> RevocationBook:
    """BOOK with ISSUED recorded (a serial already known keeps its entry, except that a
    Machine learnt later is filled in)."""
    out = dict(book.issued)
    for cert in issued:
        known = out.get(cert.serial)
        if cert.serial in book.revoked or (known is not None and known.machine is not None):
            continue
        if known is not None and cert.machine is None:
            continue
        out[cert.serial] = cert
    return book if out == book.issued else replace(book, issued=out)


def with_revoked(
    book: RevocationBook, revoked: Iterable[RevokedCert]
) -> tuple[RevocationBook, frozenset[int]]:
    """BOOK with REVOKED listed (and no longer among the issued ones); the serials that
    were not listed before."""
    listed = dict(book.revoked)
    issued = dict(book.issued)
    newly: set[int] = set()
    for entry in revoked:
        issued.pop(entry.serial, None)
        if entry.serial not in listed:
            listed[entry.serial] = entry
            newly.add(entry.serial)
    if not newly and issued == book.issued:
        return book, frozenset()
    return replace(book, issued=issued, revoked=listed), frozenset(newly)


def revoke_gone(
    book: RevocationBook, *, machines: Sequence[LiveMachine], now: datetime
) -> tuple[RevocationBook, frozenset[int]]:
    """Revoke every issued certificate whose Machine is gone (or no longer has that
    node): the Machine named in the entry, or, for an entry without one, any live Machine
    with that nodeRef. Returns the new book and the serials newly revoked."""
    vouching = {(m.name, m.node) for m in machines if m.node}
    nodes = {m.node for m in machines if m.node}
    gone = [
        RevokedCert(serial=c.serial, node=c.node, not_after=c.not_after, revoked_at=now)
        for c in book.issued.values()
        if ((c.machine, c.node) not in vouching if c.machine is not None else c.node not in nodes)
    ]
    return with_revoked(book, gone)


def prune(book: RevocationBook, *, now: datetime) -> RevocationBook:
    """Drop what has expired: a revoked serial once its own certificate's ``not_after``
    (plus clock skew) has passed, an issued one once it has expired. Nothing else ever
    leaves the book."""
    issued = {s: c for s, c in book.issued.items() if c.not_after > now}
    revoked = {s: r for s, r in book.revoked.items() if r.not_after + certs.CLOCK_SKEW > now}
    if issued == book.issued and revoked == book.revoked:
        return book
    return replace(book, issued=issued, revoked=revoked)


def live_machines(
    machines: Sequence[Mapping[str, Any]], *, kept: Collection[str] = ()
) -> tuple[LiveMachine, ...]:
    """The Machines (already those of the Cluster) that are not being deleted, and those
    being deleted that ``kept`` names (their nodes keep the tunnel until drained:
    ``machine_deletion.kept_while_deleting``)."""
    out = []
    for machine in machines:
        meta = machine.get("metadata") or {}
        if meta.get("deletionTimestamp") and meta.get("name") not in kept:
            continue
        status = machine.get("status") or {}
        ref = status.get("nodeRef") if isinstance(status, Mapping) else None
        node = ref.get("name") if isinstance(ref, Mapping) else None
        out.append(LiveMachine(name=str(meta.get("name") or ""), node=node or None))
    return tuple(out)


def server_config_after_revocation(
    live: Mapping[str, Any],
    *,
    crl_pem: bytes,
    machines: Sequence[Mapping[str, Any]],
    kept: Collection[str] = (),
) -> KubeObject | None:
    """The live server ConfigMap with ``crl_pem`` installed and the clients of nodes
    without a live Machine dropped from desired.json (so ``ccd-exclusive`` refuses them),
    for passes that cannot plan the whole tenant; None when nothing changes.

    Everything else is kept as it is live: with an invalid spec there is nothing better
    to put there, and the next valid pass rewrites the whole ConfigMap anyway.
    """
    meta = live.get("metadata") or {}
    data = dict(live.get("data") or {})
    nodes = {m.node for m in live_machines(machines, kept=kept) if m.node}
    changed = False
    if data.get(CRL_PEM) != crl_pem.decode("ascii"):
        data[CRL_PEM] = crl_pem.decode("ascii")
        changed = True
    try:
        desired = json.loads(str(data.get(DESIRED_JSON) or ""))
    except ValueError:
        desired = None
    if isinstance(desired, dict) and isinstance(desired.get("clients"), list):
        clients = [
            c
            for c in desired["clients"]
            if isinstance(c, Mapping) and c.get("common_name") in nodes
        ]
        if clients != desired["clients"]:
            data[DESIRED_JSON] = canonical_json({**desired, "clients": clients})
            changed = True
    if not changed:
        return None
    annotations = {
        k: v for k, v in (meta.get("annotations") or {}).items() if k != DESIRED_HASH_ANNOTATION
    }
    return stamp(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "labels": dict(meta.get("labels") or {}),
                "annotations": annotations,
                "ownerReferences": list(meta.get("ownerReferences") or []),
            },
            "data": data,
        }
    )
