"""The CSR signer's loop: answer the nodes' certificate requests of every tenant.

A watch on CertificateSigningRequests of signer ``vpnctl.io/node`` (the apiserver
filters by a field selector: the kubelets' own CSRs never reach us; its cache drops
oversize requests, and such a CSR is denied ``RequestTooLarge``), and a loop that looks
only at CSRs that changed (``csr_backlog``) and decides each pending one
(``vpnctl.reconcile.csr.decide_csr``, with the Machines the last ``ensure()`` or
``machines_changed()`` passed), then approves and signs it with the tenant CA, or denies
it with the reason (``csr_signer``: the node's sealed tls-crypt-v2 client key goes on the
CSR before its certificate, and every call is bound to the decided object's uid and
resourceVersion, and each certificate is in the revocation book before it is handed
out). The serial of every node certificate it signed, or finds in an issued CSR (signed
before a restart), is reported (``signed``/``certificates``) until it expires.

Nothing here filters CSRs by signer: the apiserver does. The one check left (in the
pass, and ``csr_signer``'s before it approves) is defence in depth: a CSR of another
signer is never denied, approved or signed, whatever reached the cache.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Literal

from prometheus_client import CollectorRegistry, Counter

import certs
from vpnctl.controller.budgets import (
    REASON_CSR_TOO_LARGE,
    GuardedListing,
    dropped_bytes,
    slim_csr,
)
from vpnctl.controller.csr_signer import IssuedRecorder, deliver_key, handle_csr, has_key
from vpnctl.controller.tenant_lane import Lane
from vpnctl.controller.tenant_state import (
    FailedPasses,
    TenantCalls,
    TenantState,
    cache_usage,
    check_cache,
)
from vpnctl.kube import CERTIFICATE_SIGNING_REQUEST, ApiError, KubeObject, NotFound
from vpnctl.reconcile.csr import NODE_SIGNER, csr_state
from vpnctl.reconcile.errors import ReconcileError
from vpnctl.reconcile.node_certs import SignedCert, issued_certificate, signed_report, signer_of
from vpnctl.reconcile.revocation_book import IssuedCert

_log = logging.getLogger(__name__)

# Node CSRs per list page: a tenant's may be big (until slim_csr drops the request), and
# a page is held in full before that.
CSR_PAGE_SIZE = 25


class CsrLoop:
    """The node CSR watch and loop of every tenant (state in ``TenantState``).

    - ``node_cert_lifetime``: lifetime of the node client certificates signed for CSRs
      (shortened to a CSR's spec.expirationSeconds when that asks for less).
    - ``recorder``: where each node certificate is recorded before it is handed out.
    """

    def __init__(
        self,
        *,
        calls: TenantCalls,
        registry: CollectorRegistry,
        node_cert_lifetime: timedelta,
        recorder: IssuedRecorder | None,
    ) -> None:
        self._calls = calls
        self._node_cert_lifetime = node_cert_lifetime
        self._recorder = recorder
        self._csrs_total = Counter(
            "vpnctl_tenant_csrs",
            "Node CertificateSigningRequests decided in tenant clusters "
            "(signed: approved and signed; denied).",
            ["namespace", "cluster", "decision"],
            registry=registry,
        )

    def forget(self, state: TenantState) -> None:
        """Drop the tenant's metrics."""
        for decision in ("signed", "denied"):
            with contextlib.suppress(KeyError):
                self._csrs_total.remove(state.ref.namespace, state.ref.cluster, decision)

    def start(self, state: TenantState, lane: Lane) -> None:
        """Start the tenant's CSR watch and loop in its lane."""
        assert state.budget is not None
        watcher = self._calls.watcher(
            # The listing stops as soon as it is over budget, not after it is complete.
            GuardedListing(state.kube, state.budget, others=lambda: cache_usage(state, csrs=False)),
            CERTIFICATE_SIGNING_REQUEST,
            None,
            on_event=self._csr_handler(state),
            # Only ours: the kubelets' own CSRs never reach this controller.
            field_selector=f"spec.signerName={NODE_SIGNER}",
            page_size=CSR_PAGE_SIZE,
            transform=functools.partial(
                slim_csr, max_request_bytes=state.budget.budgets.max_csr_request_bytes
            ),
        )
        state.csr_watcher = watcher
        lane.spawn("watch csrs", watcher.run())
        lane.spawn("csr", self._loop(state))

    def _csr_handler(self, state: TenantState) -> Callable[[str, KubeObject], None]:
        """Only the CSR that changed is looked at again, never the whole cache."""

        def on_event(event_type: str, obj: KubeObject) -> None:
            state.csr_backlog.changed(event_type, obj)
            if event_type != "DELETED":
                check_cache(state)
                state.csr_wakeup.set()

        return on_event

    async def _loop(self, state: TenantState) -> None:
        passes = FailedPasses(
            calls=self._calls, wakeup=state.csr_wakeup, tenant=state.ref, event="tenant_csr_retry"
        )
        while True:
            await state.csr_wakeup.wait()
            state.csr_wakeup.clear()
            watcher = state.csr_watcher
            if watcher is None or not watcher.synced.is_set():
                continue  # its first listing wakes us again
            failed = await self.decide_csrs(state, state.csr_backlog.take(watcher.store))
            if failed:
                state.csr_backlog.retry(failed)
                await passes.failed(csrs=len(failed))
            else:
                passes.succeeded()

    async def decide_csrs(self, state: TenantState, csrs: Sequence[KubeObject]) -> set[str]:
        """Decide each CSR given (the backlog's: not decided yet); the names of those that
        failed (to be retried). Every CSR waiting for a decision takes one from the tenant's
        budget (OverBudget ends the pass, and pauses the tenant)."""
        assert state.budget is not None
        failed: set[str] = set()
        for csr in csrs:
            meta = csr.get("metadata") or {}
            name = str(meta.get("name") or "")
            if signer_of(csr) != NODE_SIGNER:
                # Not ours (the field selector keeps these out): never written to.
                state.csr_backlog.decided(csr)
                continue
            if csr_state(csr) in ("pending", "approved"):
                state.budget.take_csr_decision()
            try:
                if dropped_bytes(csr):
                    await self._deny_oversize(state, csr)
                else:
                    await self._handle(state, csr)
                state.csr_backlog.decided(csr)
            except (ApiError, certs.PKIError, ReconcileError) as exc:
                # ReconcileError: the revocation book could not record the certificate
                # (missing, unreadable, contended), so nothing was handed out; retried.
                failed.add(name)
                _log.warning(
                    "event=tenant_csr_failed tenant=%s csr=%s error=%r",
                    state.ref,
                    name,
                    str(exc),
                )
        return failed

    async def _deny_oversize(self, state: TenantState, csr: KubeObject) -> None:
        """Deny a pending CSR whose request was too big to cache (see ``budgets``)."""
        assert state.budget is not None
        name = str((csr.get("metadata") or {}).get("name"))
        where = csr_state(csr)
        if where not in ("pending", "approved"):
            return
        limit = state.budget.budgets.max_csr_request_bytes
        message = (
            f"spec.request is {dropped_bytes(csr)} bytes, over the {limit} bytes vpnctl "
            "accepts for a node CSR (a node's is under 1 KiB); the node agent creates a "
            "new one"
        )
        if where == "approved":
            # Approved by someone else: a CSR can't be denied too; we just never sign it.
            _log.warning(
                "event=tenant_csr_not_signed tenant=%s csr=%s reason=%s message=%r",
                state.ref,
                name,
                REASON_CSR_TOO_LARGE,
                message,
            )
            return
        try:
            await self._calls.retrying(
                lambda: state.kube.deny_csr(
                    csr, signer=NODE_SIGNER, reason=REASON_CSR_TOO_LARGE, message=message
                ),
            )
        except NotFound:
            return
        self._count(state, "denied")
        _log.info(
            "event=tenant_csr_denied tenant=%s csr=%s reason=%s message=%r",
            state.ref,
            name,
            REASON_CSR_TOO_LARGE,
            message,
        )

    async def _handle(self, state: TenantState, csr: KubeObject) -> None:
        """Decide one CSR (and sign it) unless that is done; raises what should be retried
        (a Conflict: the CSR changed since it was read; the next pass reads it anew)."""
        name = str((csr.get("metadata") or {}).get("name"))
        # Both set by ensure() before any loop starts.
        assert state.ca is not None
        assert state.tls_crypt_server_key is not None
        now = self._calls.clock.now()
        if csr_state(csr) == "issued":
            # Signed before (maybe by a controller that restarted since): its serial
            # must still be known to be revoked with its Machine.
            found = issued_certificate(csr, ca_pem=state.ca.cert_pem, now=now)
            if found is not None:
                state.issued[found.serial] = found
                if not has_key(csr):
                    # Signed before keys were delivered: its node still needs one.
                    await deliver_key(
                        state.kube,
                        csr,
                        server_key=state.tls_crypt_server_key,
                        node=found.node,
                        not_after=found.not_after,
                        now=now,
                        retrying=self._calls.retrying,
                    )
                    _log.info(
                        "event=tenant_csr_key_delivered tenant=%s csr=%s node=%s",
                        state.ref,
                        name,
                        found.node,
                    )
            return
        handled = await handle_csr(
            state.kube,
            csr,
            tenant=state.ref,
            ca=state.ca,
            machines=state.machines,
            now=now,
            lifetime=self._node_cert_lifetime,
            recorder=self._recorder,
            retrying=self._calls.retrying,
            tls_crypt_server_key=state.tls_crypt_server_key,
        )
        decision = handled.decision
        if handled.outcome == "denied" and decision is not None:
            self._count(state, "denied")
            _log.info(
                "event=tenant_csr_denied tenant=%s csr=%s node=%s reason=%s message=%r",
                state.ref,
                name,
                decision.node_name,
                decision.reason,
                decision.message,
            )
        elif handled.outcome == "signed" and handled.cert is not None and decision is not None:
            cert = handled.cert
            signed = SignedCert.of(cert, not_before=self._calls.clock.now())
            state.issued[signed.serial] = signed
            self._count(state, "signed")
            _log.info(
                "event=tenant_csr_signed tenant=%s csr=%s node=%s machine=%s serial=%x",
                state.ref,
                name,
                decision.node_name,
                decision.machine,
                cert.serial,
            )

    def _count(self, state: TenantState, decision: Literal["signed", "denied"]) -> None:
        if decision == "signed":
            state.signed += 1
        else:
            state.denied += 1
        self._csrs_total.labels(
            namespace=state.ref.namespace, cluster=state.ref.cluster, decision=decision
        ).inc()

    def signed(self, state: TenantState) -> tuple[tuple[str, str], ...]:
        """(node, serial) of the tenant's node certificates not yet expired, oldest first
        (the expired ones are dropped)."""
        now = self._calls.clock.now()
        for serial in [s for s, c in state.issued.items() if c.not_after <= now]:
            del state.issued[serial]
        return signed_report(state.issued.values(), now=now)

    def certificates(self, state: TenantState) -> tuple[IssuedCert, ...]:
        """The certificates of ``signed`` with their expiry, for the revocation book."""
        self.signed(state)  # drops the expired ones
        return tuple(c.issued() for c in state.issued.values())
