"""One fake of the controller's tenant side (``vpnctl.controller.interfaces.TenantSide``),
for the tests and for ``bench/`` (``bench/scale.py`` imports it from here: the repository
root is on the path of both, and nothing in the product imports it).

It records what the controller asks and answers at once; the real one is
``vpnctl.controller.tenant_side.KubeTenantSide``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import certs
from vpnctl.controller.interfaces import TenantRef, TenantSideResult


@dataclass
class EnsureCall:
    tenant: TenantRef
    kinds: tuple[str, ...]
    machines: tuple[str, ...]
    ca_cert_pem: bytes
    tls_crypt_server_key: bytes = field(repr=False)
    objects: tuple[dict[str, Any], ...] = field(default=(), repr=False)


@dataclass
class FakeTenantSide:
    """Records what the controller asks of the tenant side; tenants in ``unreachable``
    get installed=False. ``signed`` serials are reported on every ensure()."""

    unreachable: set[TenantRef] = field(default_factory=set)
    cleanup_answers: bool = True
    signed: dict[TenantRef, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    calls: list[EnsureCall] = field(default_factory=list)
    cleaned: list[tuple[TenantRef, bool]] = field(default_factory=list)
    forgotten: list[TenantRef] = field(default_factory=list)
    repair_counts: dict[TenantRef, int] = field(default_factory=dict)
    vouched: dict[TenantRef, set[str]] = field(default_factory=dict)
    machine_lists: list[tuple[TenantRef, tuple[str, ...]]] = field(default_factory=list)
    # The tenants' Node objects, as ``nodes()`` answers (absent: never listed); tests
    # change them with ``set_nodes``, which tells the listener as the real one does.
    tenant_nodes: dict[TenantRef, list[dict[str, Any]]] = field(default_factory=dict)
    listener: Callable[[TenantRef], None] | None = None

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
        assert "clusters:" in kubeconfig_text  # the Secret's text, decoded
        self.calls.append(
            EnsureCall(
                tenant=tenant,
                kinds=tuple(str(o["kind"]) for o in desired_objects),
                machines=tuple(str(m["metadata"]["name"]) for m in machines),
                ca_cert_pem=ca.cert_pem,
                tls_crypt_server_key=tls_crypt_server_key,
                objects=tuple(desired_objects),
            )
        )
        # Like the real signer: a node's certificate exists only once a Machine of it
        # was seen; it is then reported until it expires, Machine or not.
        self.vouched.setdefault(tenant, set()).update(
            str(m["status"]["nodeRef"]["name"])
            for m in machines
            if ((m.get("status") or {}).get("nodeRef") or {}).get("name")
        )
        signed = tuple(
            (node, serial)
            for node, serial in self.signed.get(tenant, ())
            if node in self.vouched[tenant]
        )
        if tenant in self.unreachable:
            return TenantSideResult(
                installed=False,
                reason="TenantUnreachable",
                message="the tenant apiserver did not answer (fake)",
            )
        return TenantSideResult(
            installed=True,
            reason="Installed",
            message="agent installed (fake)",
            signed=signed,
        )

    def machines_changed(self, tenant: TenantRef, machines: Sequence[dict[str, Any]]) -> None:
        self.machine_lists.append((tenant, tuple(str(m["metadata"]["name"]) for m in machines)))

    def nodes(self, tenant: TenantRef) -> Sequence[dict[str, Any]] | None:
        nodes = self.tenant_nodes.get(tenant)
        return None if nodes is None else list(nodes)

    def follow_nodes(self, listener: Callable[[TenantRef], None] | None) -> None:
        self.listener = listener

    def set_nodes(self, tenant: TenantRef, nodes: Sequence[dict[str, Any]]) -> None:
        self.tenant_nodes[tenant] = list(nodes)
        if self.listener is not None:
            self.listener(tenant)

    async def forget(self, tenant: TenantRef) -> None:
        self.forgotten.append(tenant)

    async def cleanup(self, *, tenant: TenantRef, kubeconfig_text: str | None) -> bool:
        self.cleaned.append((tenant, kubeconfig_text is not None))
        return self.cleanup_answers

    def repairs(self, tenant: TenantRef) -> int:
        return self.repair_counts.get(tenant, 0)

    def ensures(self, tenant: TenantRef) -> int:
        return sum(1 for c in self.calls if c.tenant == tenant)
