"""The controller's CSR signer (KubeTenantSide) against a real tenant apiserver, with
real node identities: reserved names (issue 9, item 2), Machines that are gone (item 4),
and certificates recorded before they are handed out (item 4)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

import certs
from agent.bootstrap import CSRRefused
from vpnctl.controller.csr_signer import IssuedRecorder
from vpnctl.controller.interfaces import TenantRef
from vpnctl.controller.revocation_store import RevocationsMissing
from vpnctl.controller.tenant_side import KubeTenantSide
from vpnctl.kube import CERTIFICATE_SIGNING_REQUEST, Kube, KubeObject
from vpnctl.reconcile.revocation_book import IssuedCert

from .conftest import TenantFactory
from .tenantsidefix import real_tenant_side
from .test_tenant_side import (
    TENANT,
    admin_of,
    ensure,
    eventually,
    inline_kubeconfig,
    machine_for,
    obtain,
    tunnel_ca,
    wait_synced,
)

pytestmark = pytest.mark.kube


class RecordingBook:
    """``IssuedRecorder``: notes each certificate and the state of every CSR of its
    node at that moment (none may carry a certificate yet)."""

    def __init__(self, admin: Kube) -> None:
        self.admin = admin
        self.recorded: list[IssuedCert] = []
        self.issued_then: list[bool] = []

    async def record_issued(self, tenant: TenantRef, cert: IssuedCert) -> None:
        csrs, _ = await self.admin.list(CERTIFICATE_SIGNING_REQUEST)
        mine = [c for c in csrs if c["spec"].get("username") == f"system:node:{cert.node}"]
        self.issued_then.append(any((c.get("status") or {}).get("certificate") for c in mine))
        self.recorded.append(cert)


def signer(recorder: IssuedRecorder | None = None) -> AbstractAsyncContextManager[KubeTenantSide]:
    return real_tenant_side(node_cert_lifetime=dt.timedelta(days=30), recorder=recorder)


async def install(
    ts: KubeTenantSide, text: str, ca: certs.Issued, machines: list[KubeObject]
) -> None:
    result = await ensure(ts, text, ca, machines=machines)
    assert result.installed, result.message
    await wait_synced(ts, TENANT)


async def test_a_node_named_like_the_apiserver_sidecar_is_denied_reserved_name(
    tenant_cluster_factory: TenantFactory, tmp_path: Path
) -> None:
    """A tenant admin names a Node vpnctl-apiserver and points a Machine's nodeRef at it:
    the CSR is denied, ReservedName, and nothing is signed."""
    cluster = await tenant_cluster_factory(name="ts-reserved")
    ca = tunnel_ca()
    async with signer() as ts:
        await install(
            ts,
            inline_kubeconfig(cluster.kubeconfig_path),
            ca,
            [machine_for("node-1"), machine_for("vpnctl-apiserver")],
        )
        with pytest.raises(CSRRefused) as refused:
            await obtain(cluster, tmp_path, ca, "vpnctl-apiserver")
        assert refused.value.reason == "ReservedName"
        assert "vpnctl-apiserver" in refused.value.message
        # A real node of the same tenant still gets its certificate.
        assert (await obtain(cluster, tmp_path, ca, "node-1")).common_name == "node-1"


async def test_no_certificate_for_a_machine_that_is_gone_and_each_is_recorded_first(
    tenant_cluster_factory: TenantFactory, tmp_path: Path
) -> None:
    cluster = await tenant_cluster_factory(name="ts-gone")
    ca = tunnel_ca()
    async with admin_of(cluster) as admin:
        book = RecordingBook(admin)
        async with signer(book) as ts:
            await install(
                ts,
                inline_kubeconfig(cluster.kubeconfig_path),
                ca,
                [machine_for("node-1"), machine_for("node-2")],
            )
            info = await obtain(cluster, tmp_path, ca, "node-1")
            assert [(c.serial, c.node, c.machine) for c in book.recorded] == [
                (info.serial, "node-1", f"{TENANT.cluster}-md-node-1")
            ]
            assert book.recorded[0].not_after == info.not_after
            assert book.issued_then == [False]  # recorded before it was handed out

            # node-2's Machine is deleted; the reconcile tells the signer at once, even
            # when the Tunnel's spec is invalid (no ensure() call).
            ts.machines_changed(TENANT, [machine_for("node-1")])
            with pytest.raises(CSRRefused) as refused:
                await obtain(cluster, tmp_path, ca, "node-2")
            assert refused.value.reason == "NoMachineForNode"
            assert len(book.recorded) == 1


class MissingBook:
    """``IssuedRecorder`` whose book does not exist until ``ready`` is set."""

    def __init__(self) -> None:
        self.ready = False
        self.refused = 0

    async def record_issued(self, tenant: TenantRef, cert: IssuedCert) -> None:
        if not self.ready:
            self.refused += 1
            raise RevocationsMissing(reason="RevocationsMissing", message="no book (test)")


async def test_a_certificate_that_cannot_be_recorded_is_not_handed_out(
    tenant_cluster_factory: TenantFactory, tmp_path: Path
) -> None:
    """No record, no certificate: the CSR stays unapproved, the signer loop keeps
    running (healthy, no crash loop) and signs once the book takes the record."""
    cluster = await tenant_cluster_factory(name="ts-nobook")
    ca = tunnel_ca()
    book = MissingBook()
    async with admin_of(cluster) as admin, signer(book) as ts:
        await install(ts, inline_kubeconfig(cluster.kubeconfig_path), ca, [machine_for("node-1")])
        asking = asyncio.create_task(obtain(cluster, tmp_path, ca, "node-1"))
        try:

            async def refused_twice() -> bool:
                return book.refused >= 2  # the first attempt and a retry

            await eventually(refused_twice, timeout=15, what="record refused and retried")
            csrs, _ = await admin.list(CERTIFICATE_SIGNING_REQUEST)
            assert csrs
            assert all(not (c.get("status") or {}).get("conditions") for c in csrs)
            assert ts.healthy()
            book.ready = True
            info = await asyncio.wait_for(asyncio.shield(asking), 20)
            assert info.common_name == "node-1"
        finally:
            asking.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asking
