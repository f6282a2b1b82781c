"""Each node's own tls-crypt-v2 client key, delivered on its CSR by the controller's real
signer (KubeTenantSide) through a real tenant apiserver, to the real agent code
(agent.bootstrap.obtain_certificate) authenticated as the node (issue 10, part 3)."""

from __future__ import annotations

import contextlib
import datetime as dt
import random
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

import certs
from agent.bootstrap import Obtained, obtain_certificate
from agent.csr_api import CsrApi, sealed_key, ssl_context
from certs.key_delivery import KEY_ANNOTATION
from vpnctl.controller.tenant_side import KubeTenantSide
from vpnctl.kube import CERTIFICATE_SIGNING_REQUEST, Conflict, SystemClock
from vpnctl.reconcile.csr import NODE_SIGNER
from vpnctl.testenv import TenantCluster

from .conftest import TenantFactory
from .test_tenant_side import (
    TENANT,
    admin_of,
    desired_objects,
    eventually,
    inline_kubeconfig,
    machine_for,
    tunnel_ca,
    wait_synced,
    write_node_credentials,
)

pytestmark = pytest.mark.kube


@contextlib.asynccontextmanager
async def signer(
    cluster: TenantCluster, ca: certs.Issued, server_key: bytes | None
) -> AsyncIterator[KubeTenantSide]:
    async with KubeTenantSide(
        registry=CollectorRegistry(),
        clock=SystemClock(),
        rng=random.Random(7),
        node_cert_lifetime=dt.timedelta(days=30),
        request_timeout=5.0,
        backoff_cap=2.0,
    ) as ts:
        result = await ts.ensure(
            tenant=TENANT,
            kubeconfig_text=inline_kubeconfig(cluster.kubeconfig_path),
            desired_objects=desired_objects(ca),
            ca=ca,
            machines=[machine_for("node-1"), machine_for("node-2")],
            tls_crypt_server_key=server_key,
        )
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


async def test_a_node_gets_its_certificate_and_its_own_sealed_tls_crypt_key(
    tenant_cluster_factory: TenantFactory, tmp_path: Path
) -> None:
    cluster = await tenant_cluster_factory(name="kd-deliver")
    ca = tunnel_ca()
    server_key = certs.new_tls_crypt_v2_server_key()
    one, two = Node(cluster, tmp_path, ca, "node-1"), Node(cluster, tmp_path, ca, "node-2")
    async with signer(cluster, ca, server_key):
        got = await one.obtain()
        other = await two.obtain()
    assert got.source == "issued"
    assert got.csr_name is not None
    # The installed key is wrapped by the tenant's server key and names this node and
    # the certificate's expiry: openvpn's server will answer it.
    metadata = certs.tls_crypt_v2_client_metadata(server_key, one.tc.read_bytes())
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
    server_key = certs.new_tls_crypt_v2_server_key()
    node = Node(cluster, tmp_path, ca, "node-1")
    async with signer(cluster, ca, None):
        got = await node.obtain(with_key=False)
    assert got.csr_name is not None
    name = got.csr_name
    async with admin_of(cluster) as admin:
        csr = await admin.get(CERTIFICATE_SIGNING_REQUEST, name)
        assert csr is not None
        assert KEY_ANNOTATION not in (csr["metadata"].get("annotations") or {})

        async with signer(cluster, ca, server_key):

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
    metadata = certs.tls_crypt_v2_client_metadata(server_key, delivered.client_key)
    assert certs.parse_node_key_metadata(metadata) == ("node-1", got.info.not_after)
