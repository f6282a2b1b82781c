"""Each node's own tls-crypt-v2 client key, delivered on its CSR by the controller's real
signer (KubeTenantSide) through a real tenant apiserver, to the real agent code
(agent.bootstrap.obtain_certificate) authenticated as the node (issue 10, part 3)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

import certs
from agent.bootstrap import Obtained, obtain_certificate
from agent.csr_api import CsrApi, sealed_key, ssl_context
from certs.key_delivery import KEY_ANNOTATION
from tests.support.polling import aeventually
from vpnctl.controller.tenant_side import KubeTenantSide
from vpnctl.kube import CERTIFICATE_SIGNING_REQUEST, Conflict, Kube, KubeObject
from vpnctl.reconcile.csr import NODE_SIGNER, csr_state, sign_node_csr
from vpnctl.testenv import TenantCluster

from .conftest import TenantFactory
from .tenantsidefix import real_tenant_side
from .test_tenant_side import (
    SERVER_KEY,
    TENANT,
    admin_of,
    ensure,
    eventually,
    inline_kubeconfig,
    machine_for,
    tunnel_ca,
    wait_synced,
    write_node_credentials,
)

pytestmark = pytest.mark.kube


@contextlib.asynccontextmanager
async def signer(cluster: TenantCluster, ca: certs.Issued) -> AsyncIterator[KubeTenantSide]:
    """The real signer for CLUSTER's nodes node-1 and node-2; keys from ``SERVER_KEY``."""
    async with real_tenant_side(node_cert_lifetime=dt.timedelta(days=30)) as ts:
        machines = [machine_for("node-1"), machine_for("node-2")]
        result = await ensure(ts, inline_kubeconfig(cluster.kubeconfig_path), ca, machines=machines)
        assert result.installed, result.message
        await wait_synced(ts, TENANT)
        yield ts


class Node:
    def __init__(self, cluster: TenantCluster, tmp: Path, ca: certs.Issued, name: str) -> None:
        self.cluster = cluster
        self.name = name
        self.dir = tmp / name
        self.dir.mkdir()
        self.tunnel_ca = self.dir / "tunnel-ca.crt"
        self.tunnel_ca.write_bytes(ca.cert_pem)
        self.kubelet_cert, self.kubelet_key = write_node_credentials(cluster, name, self.dir)
        self.key = self.dir / "node.key"
        self.tc = self.dir / "tls-crypt-v2-client.key"

    async def obtain(self, *, with_key: bool = True) -> Obtained:
        return await obtain_certificate(
            server=self.cluster.server_url,
            ca_file=str(self.cluster.pki.ca.cert),
            client_cert_file=str(self.kubelet_cert),
            client_key_file=str(self.kubelet_key),
            node_name=self.name,
            key_path=str(self.key),
            cert_path=str(self.dir / "node.crt"),
            tunnel_ca_file=str(self.tunnel_ca),
            clock=lambda: dt.datetime.now(dt.UTC),
            timeout=30,
            poll_interval=0.2,
            tls_crypt_key_path=str(self.tc) if with_key else None,
        )

    async def read_csr(self, name: str) -> dict[str, object] | None:
        """CSR NAME as this node reads it: nodes may get every CSR."""
        context = ssl_context(
            ca_file=str(self.cluster.pki.ca.cert),
            client_cert_file=str(self.kubelet_cert),
            client_key_file=str(self.kubelet_key),
        )
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context), trust_env=False
        ) as session:
            api = CsrApi(
                session=session,
                server=self.cluster.server_url,
                node_name=self.name,
                client_cert_file=str(self.kubelet_cert),
            )
            return await api.get(name)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def sign_without_a_key(admin: Kube, ca: certs.Issued, node: str) -> None:
    """What a controller from before key delivery did with NODE's pending CSR: approve
    it and sign it, with no key on it."""

    async def pending() -> KubeObject | None:
        csrs, _ = await admin.list(CERTIFICATE_SIGNING_REQUEST)
        mine = (c for c in csrs if c["spec"].get("username") == f"system:node:{node}")
        return next((c for c in mine if csr_state(c) == "pending"), None)

    csr = await aeventually(pending, what=f"{node}'s CSR", timeout=20)
    approved = await admin.approve_csr(
        csr, signer=NODE_SIGNER, reason="NodeHasMachine", message="signed before key delivery"
    )
    certificate = sign_node_csr(ca, approved, now=now(), lifetime=dt.timedelta(days=30))
    await admin.sign_csr(approved, signer=NODE_SIGNER, certificate_pem=certificate)


async def test_a_node_gets_its_certificate_and_its_own_sealed_tls_crypt_key(
    tenant_cluster_factory: TenantFactory, tmp_path: Path
) -> None:
    cluster = await tenant_cluster_factory(name="kd-deliver")
    ca = tunnel_ca()
    one, two = Node(cluster, tmp_path, ca, "node-1"), Node(cluster, tmp_path, ca, "node-2")
    async with signer(cluster, ca):
        got = await one.obtain()
        other = await two.obtain()
    assert got.source == "issued"
    assert got.csr_name is not None
    # The installed key is wrapped by the tenant's server key and names this node and
    # the certificate's expiry: openvpn's server will answer it.
    metadata = certs.tls_crypt_v2_client_metadata(SERVER_KEY, one.tc.read_bytes())
    assert certs.parse_node_key_metadata(metadata) == ("node-1", got.info.not_after)
    assert one.tc.read_bytes() != two.tc.read_bytes()  # per node, never shared

    # node-2 can read node-1's CSR, annotation and all, but cannot open the key.
    seen = await two.read_csr(got.csr_name)
    assert seen is not None
    sealed = sealed_key(seen)
    assert sealed is not None
    status = seen.get("status")
    assert isinstance(status, dict)
    assert status.get("certificate")
    with pytest.raises(certs.KeyMismatch):
        certs.unseal_node_key(sealed, two.key.read_bytes(), node="node-1", now=now())
    with pytest.raises(certs.KeyMismatch):
        certs.unseal_node_key(sealed, two.key.read_bytes(), node="node-2", now=now())
    delivered = certs.unseal_node_key(sealed, one.key.read_bytes(), node="node-1", now=now())
    assert delivered.client_key == one.tc.read_bytes()
    assert other.info.common_name == "node-2"


async def test_a_csr_issued_before_keys_were_delivered_gets_its_key(
    tenant_cluster_factory: TenantFactory, tmp_path: Path
) -> None:
    """A controller that delivered no keys signed it; the next one (an upgrade) adds the
    sealed key to the issued CSR, bound to that object."""
    cluster = await tenant_cluster_factory(name="kd-upgrade")
    ca = tunnel_ca()
    node = Node(cluster, tmp_path, ca, "node-1")
    async with admin_of(cluster) as admin:
        obtaining = asyncio.create_task(node.obtain(with_key=False))
        await sign_without_a_key(admin, ca, "node-1")
        got = await obtaining
    assert got.csr_name is not None
    name = got.csr_name
    async with admin_of(cluster) as admin:
        csr = await admin.get(CERTIFICATE_SIGNING_REQUEST, name)
        assert csr is not None
        assert KEY_ANNOTATION not in (csr["metadata"].get("annotations") or {})

        async with signer(cluster, ca):

            async def annotated() -> bool:
                live = await admin.get(CERTIFICATE_SIGNING_REQUEST, name)
                return live is not None and sealed_key(live) is not None

            await eventually(annotated, timeout=20, what="sealed key added to the issued CSR")
        live = await admin.get(CERTIFICATE_SIGNING_REQUEST, name)
        # Bound to the object read: the CSR as it was before is refused, not overwritten.
        with pytest.raises(Conflict):
            await admin.annotate_csr(
                csr, signer=NODE_SIGNER, annotations={KEY_ANNOTATION: "kd1.forged"}
            )
        assert live == await admin.get(CERTIFICATE_SIGNING_REQUEST, name)
    assert live is not None
    sealed = sealed_key(live)
    assert sealed is not None
    delivered = certs.unseal_node_key(sealed, node.key.read_bytes(), node="node-1", now=now())
    metadata = certs.tls_crypt_v2_client_metadata(SERVER_KEY, delivered.client_key)
    assert certs.parse_node_key_metadata(metadata) == ("node-1", got.info.not_after)
