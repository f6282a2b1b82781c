"""Deciding, approving and signing one node CSR, bound to the object that was decided.

Why its own module, behind two small Protocols: the order of the steps is the security
of the signer, and each step is tested against fakes that misbehave on purpose.

- ``CSRApi`` (``vpnctl.kube.Kube`` implements it): approve, deny and sign *the object
  that was decided*, never "whatever has this name now". Each call carries the decided
  object's uid and resourceVersion, so a CSR deleted and re-created under the same name
  between the decision and the approval (perhaps a ``kube-apiserver-client`` CSR for
  ``system:masters``) gets a Conflict instead of our approval; the caller then decides
  again from a fresh read. A CSR of another signer is never approved or signed.
- ``IssuedRecorder`` (the revocation book, ``controller/revocation_store.py``): the
  certificate's serial, node, Machine and expiry are recorded *before* the certificate
  is handed out. A node whose Machine is deleted a moment later is then revoked by the
  next reconcile, even if this process dies in between or the tenant deletes the CSR.

The node's own tls-crypt-v2 client key (``certs.key_delivery``) goes on the approved CSR
as the annotation ``KEY_ANNOTATION``, sealed to the CSR's public key, *before* the
certificate: an agent that sees its certificate finds its key beside it. A CSR issued
without one (signed before vpnctl delivered keys) gets it added (``deliver_key``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

import certs
from certs.key_delivery import KEY_ANNOTATION
from vpnctl.controller.interfaces import TenantRef
from vpnctl.kube import KubeObject, NotFound
from vpnctl.reconcile.csr import (
    NODE_SIGNER,
    CSRDecision,
    csr_state,
    decide_csr,
    request_pem,
    sign_node_csr,
)
from vpnctl.reconcile.revocation_book import IssuedCert

_log = logging.getLogger(__name__)

Retrying = Callable[[Callable[[], Awaitable[KubeObject]]], Awaitable[KubeObject]]


class CSRApi(Protocol):
    """The CSR calls of a tenant cluster's API (``vpnctl.kube.Kube``)."""

    async def approve_csr(
        self, decided: Mapping[str, Any], *, signer: str, reason: str, message: str
    ) -> KubeObject: ...

    async def deny_csr(
        self, decided: Mapping[str, Any], *, signer: str, reason: str, message: str
    ) -> KubeObject: ...

    async def sign_csr(
        self, approved: Mapping[str, Any], *, signer: str, certificate_pem: bytes
    ) -> KubeObject: ...

    async def annotate_csr(
        self, decided: Mapping[str, Any], *, signer: str, annotations: Mapping[str, str]
    ) -> KubeObject: ...


class IssuedRecorder(Protocol):
    async def record_issued(self, tenant: TenantRef, cert: IssuedCert) -> None:
        """Durably record CERT before it is handed out; raise to stop the signing."""
        ...


@dataclass(frozen=True, kw_only=True)
class Handled:
    """What became of one CSR: ``signed`` (``cert`` is the new certificate), ``denied``,
    or ``skipped`` (not ours, already final, gone, or approved by someone else against
    our policy)."""

    outcome: Literal["signed", "denied", "skipped"]
    decision: CSRDecision | None = None
    cert: IssuedCert | None = None


async def _unless_gone(call: Callable[[], Awaitable[KubeObject]]) -> KubeObject | None:
    try:
        return await call()
    except NotFound:
        return None


async def handle_csr(
    api: CSRApi,
    csr: KubeObject,
    *,
    tenant: TenantRef,
    ca: certs.Issued,
    machines: Sequence[Mapping[str, Any]],
    now: datetime,
    lifetime: timedelta,
    recorder: IssuedRecorder | None,
    retrying: Retrying,
    tls_crypt_server_key: bytes,
) -> Handled:
    """Decide CSR (as read) and act on exactly that object. API errors propagate (a
    Conflict means: it changed since it was read, decide again from a fresh read).
    The node's own client key, made from ``tls_crypt_server_key``, is sealed onto the
    CSR before the certificate."""
    spec = csr.get("spec") or {}
    if spec.get("signerName") != NODE_SIGNER:
        return Handled(outcome="skipped")  # never ours, whatever reached the cache
    where = csr_state(csr)
    if where not in ("pending", "approved"):
        return Handled(outcome="skipped")
    name = str((csr.get("metadata") or {}).get("name"))
    decision = decide_csr(csr, machines=machines, cluster_name=tenant.cluster)
    if not decision.approve:
        if where == "approved":
            # Approved by someone else, but our policy says no: we don't sign it.
            _log.warning(
                "event=tenant_csr_not_signed tenant=%s csr=%s node=%s reason=%s message=%r",
                tenant,
                name,
                decision.node_name,
                decision.reason,
                decision.message,
            )
            return Handled(outcome="skipped", decision=decision)
        denied = await _unless_gone(
            lambda: retrying(
                lambda: api.deny_csr(
                    csr, signer=NODE_SIGNER, reason=decision.reason, message=decision.message
                )
            )
        )
        return Handled(outcome="skipped" if denied is None else "denied", decision=decision)

    certificate = sign_node_csr(ca, csr, now=now, lifetime=lifetime)
    info = certs.cert_info(certificate)
    cert = IssuedCert(
        serial=info.serial,
        node=info.common_name,
        machine=decision.machine,
        not_after=info.not_after,
    )
    if recorder is not None:
        await recorder.record_issued(tenant, cert)
    approved: KubeObject | None = csr
    if where == "pending":
        approved = await _unless_gone(
            lambda: retrying(
                lambda: api.approve_csr(
                    csr, signer=NODE_SIGNER, reason=decision.reason, message=decision.message
                )
            )
        )
    if approved is None:
        return Handled(outcome="skipped", decision=decision)
    bound = await deliver_key(
        api,
        approved,
        server_key=tls_crypt_server_key,
        node=cert.node,
        not_after=cert.not_after,
        now=now,
        retrying=retrying,
    )
    if bound is None:
        return Handled(outcome="skipped", decision=decision)
    signed = await _unless_gone(
        lambda: retrying(
            lambda: api.sign_csr(bound, signer=NODE_SIGNER, certificate_pem=certificate)
        )
    )
    if signed is None:
        return Handled(outcome="skipped", decision=decision)
    return Handled(outcome="signed", decision=decision, cert=cert)


def has_key(csr: Mapping[str, Any]) -> bool:
    """Whether CSR carries a sealed key (``KEY_ANNOTATION``)."""
    annotations = (csr.get("metadata") or {}).get("annotations") or {}
    return isinstance(annotations, Mapping) and bool(annotations.get(KEY_ANNOTATION))


async def deliver_key(
    api: CSRApi,
    csr: KubeObject,
    *,
    server_key: bytes,
    node: str,
    not_after: datetime,
    now: datetime,
    retrying: Retrying,
) -> KubeObject | None:
    """Seal a new client key for NODE (from the tenant's SERVER_KEY, expiring with the
    certificate) to CSR's public key and annotate exactly that CSR with it; the CSR as
    annotated, or None when it is gone. Raises ``certs.PKIError`` and API errors."""
    sealed = certs.seal_new_node_key(
        server_key, csr_pem=request_pem(csr), node=node, not_after=not_after, now=now
    )
    return await _unless_gone(
        lambda: retrying(
            lambda: api.annotate_csr(csr, signer=NODE_SIGNER, annotations={KEY_ANNOTATION: sealed})
        )
    )
