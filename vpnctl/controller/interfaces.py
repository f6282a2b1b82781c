"""The two seams of the controller, as small Protocols, so each side is testable alone.

- ``TenantSide``: everything the controller does *inside a tenant's own cluster*
  (through CAPI's ``<cluster>-kubeconfig`` Secret): install the node agent, keep it
  installed (drift repair), run the CSR approve/sign loop, and clean up. The real one is
  ``vpnctl.controller.tenant_side``; ``tenant.reconcile_tenant`` only sees this Protocol,
  so the service-cluster side is tested against a fake.
- ``ObservationSource``: where "connected / since / RTT / kubelet reachable" per node
  comes from (the server pods' /metrics in production, ``controller.observe``; a fake
  in tests).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import certs
from vpnctl.reconcile.revocation_book import IssuedCert
from vpnctl.reconcile.status import NodeObservation


@dataclass(frozen=True)
class TenantRef:
    """One tenant: the namespace of its CAPI Cluster and the Cluster's name."""

    namespace: str
    cluster: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.cluster}"


@dataclass(frozen=True)
class TenantSideResult:
    """What ``TenantSide.ensure`` achieved in the tenant cluster.

    ``reason``/``message`` become the AgentInstalled condition (CamelCase reason, a
    sentence a person can act on when ``installed`` is False).

    ``signed`` (added after the first version, defaulted so nothing breaks): (node name,
    serial in hex) of node certificates the CSR loop signed for this tenant. The
    controller records them in status.allocations[].serials (and desired.json), which is
    what it revokes when the node's Machine goes. Reporting a serial again is harmless.

    ``degraded`` (also added later): (reason, message) while the tenant is over one of
    its budgets (``vpnctl.controller.budgets``) and its tenant-side work is paused;
    the controller shows it as the Tunnel's ``Degraded`` condition.

    ``certificates``: the same certificates with their expiry and the Machine that
    vouched, for the revocation book (a serial only in ``signed`` is kept until the
    CA's own expiry, the bound of every certificate it signed).
    """

    installed: bool
    reason: str
    message: str
    csr_signed: int = 0
    csr_denied: int = 0
    signed: tuple[tuple[str, str], ...] = ()
    degraded: tuple[str, str] | None = None
    certificates: tuple[IssuedCert, ...] = ()


class TenantSide(Protocol):
    async def ensure(
        self,
        *,
        tenant: TenantRef,
        kubeconfig_text: str,
        desired_objects: Sequence[dict[str, Any]],
        ca: certs.Issued,
        machines: Sequence[dict[str, Any]],
        tls_crypt_server_key: bytes,
    ) -> TenantSideResult:
        """Apply the agent objects in the tenant cluster, start (once) a drift watch and
        the CSR loop for this tenant, and return the install state. The CSR loop seals
        each node's tls-crypt-v2 client key, made from ``tls_crypt_server_key``, onto
        its CSR."""
        ...

    def machines_changed(self, tenant: TenantRef, machines: Sequence[dict[str, Any]]) -> None:
        """The Cluster's Machines as they are now, on every reconcile (also when the
        spec is invalid and ``ensure`` is not called): the CSR signer never approves for
        a Machine that is gone."""
        ...

    def nodes(self, tenant: TenantRef) -> Sequence[dict[str, Any]] | None:
        """The tenant cluster's Node objects as last seen (at least what the plan reads:
        name, podCIDRs, addresses, kubelet port), or None while they were never listed
        (agent not installed yet, tenant unreachable). Untrusted: the plan parses them."""
        ...

    def follow_nodes(self, listener: Callable[[TenantRef], None] | None) -> None:
        """Call ``listener(tenant)`` whenever what the plan reads of a tenant's Nodes
        that Machines name changed (a podCIDR given or changed, a node gone), and once
        when the Nodes are first listed; None stops it."""
        ...

    async def forget(self, tenant: TenantRef) -> None:
        """Stop the watches for a tenant (Tunnel deleted, or leadership lost)."""
        ...

    async def cleanup(self, *, tenant: TenantRef, kubeconfig_text: str | None) -> bool:
        """Delete our objects in the tenant cluster; True when nothing of ours is left
        (or the tenant cluster is gone for good)."""
        ...

    def repairs(self, tenant: TenantRef) -> int:
        """How many drifted or deleted objects were put back for this tenant so far."""
        ...


class ObservationSource(Protocol):
    async def observe(self, tenant: TenantRef) -> Mapping[str, NodeObservation]:
        """Node name -> what the tenant's server reports about that node's client."""
        ...
