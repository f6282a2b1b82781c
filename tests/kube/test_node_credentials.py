"""Node-bound credentials against a real tenant apiserver: the agent's half
(agent.bootstrap.obtain_certificate, authenticated with kubelet-style node credentials)
and the controller's decision (vpnctl.reconcile.csr) driven by a minimal signer loop.

The signer loop here stands in for the controller's (which lives in vpnctl.kube and the
reconcile loop): it lists our signer's pending CSRs, asks `decide_csr` about each with a
fixed Machine list, and approves and signs, or denies, through the real approval and
status subresources. kube-controller-manager runs too, as in a real tenant cluster, and
must leave CSRs of our signer alone.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import os
import random
import ssl
import stat
from collections.abc import AsyncIterator, Mapping, Sequence
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubernetes_asyncio import client as k8s_client
from prometheus_client import CollectorRegistry

import certs
from agent.agent_clock import SYSTEM_CLOCK
from agent.bootstrap import (
    PENDING_SUFFIX,
    ApiRequestError,
    BootstrapTimeout,
    CSRRefused,
    Obtained,
    Step,
    obtain_certificate,
)
from agent.netlink import Kernel
from agent.openvpn.config import ClientConfig
from agent.role_config import BootstrapSettings, ClientRoleConfig, Common, ProbeSettings
from agent.roles.node import NodeRole
from certs.key_delivery import KEY_ANNOTATION
from tests.support import capi
from tests.support.polling import aeventually
from vpnctl.reconcile.csr import (
    NODE_SIGNER,
    CSRDecision,
    csr_state,
    decide_csr,
    request_pem,
    sign_node_csr,
)
from vpnctl.testenv import TenantCluster

from .conftest import TenantFactory, api_client

pytestmark = pytest.mark.kube

CSR_PATH = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
CLUSTER = "tenant-a"
MACHINES = [
    capi.machine(name="m-1", cluster_name=CLUSTER, node="node-1", internal_ip="198.19.0.11"),
    capi.machine(name="m-2", cluster_name=CLUSTER, node="node-2", internal_ip="198.19.0.12"),
]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --- node credentials, as the kubelet has them -------------------------------------------------


def mint_client(cluster: TenantCluster, path: Path, *, cn: str, orgs: Sequence[str]) -> str:
    """A client certificate from the cluster's CA, certificate and key in one PEM file
    (the shape of /var/lib/kubelet/pki/kubelet-client-current.pem)."""
    ca_cert = x509.load_pem_x509_certificate(cluster.pki.ca.cert.read_bytes())
    ca_key = serialization.load_pem_private_key(cluster.pki.ca.key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    subject = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
        + [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    path.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return str(path)


def mint_node(cluster: TenantCluster, tmp: Path, node: str) -> str:
    return mint_client(
        cluster, tmp / f"kubelet-{node}.pem", cn=f"system:node:{node}", orgs=["system:nodes"]
    )


# --- the stand-in signer ------------------------------------------------------------------------


class Signer:
    """Lists pending CSRs of our signer, decides with decide_csr, approves and signs or
    denies through the approval and status subresources, as the controller will."""

    def __init__(self, api: k8s_client.ApiClient, *, ca: certs.Issued) -> None:
        self.api = api
        self.ca = ca
        self.server_key = certs.new_tls_crypt_v2_server_key()  # the tenant's tls-crypt-v2
        self.decisions: dict[str, CSRDecision] = {}
        self.foreign_seen: set[str] = set()

    async def call(
        self, method: str, path: str, *, query: Sequence[tuple[str, str]] = (),
        body: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        resp = await self.api.call_api(
            path,
            method,
            query_params=list(query),
            header_params={"Accept": "application/json", "Content-Type": "application/json"},
            body=dict(body) if body is not None else None,
            auth_settings=["BearerToken"],
            _preload_content=False,
        )
        assert isinstance(resp, aiohttp.ClientResponse)
        async with resp:
            data = await resp.read()
            assert resp.status < 300, f"{method} {path}: {resp.status} {data[:300]!r}"
            doc = json.loads(data)
            assert isinstance(doc, dict)
            return doc

    async def once(self) -> None:
        listing = await self.call(
            "GET", CSR_PATH, query=[("fieldSelector", f"spec.signerName={NODE_SIGNER}")]
        )
        for csr in listing["items"]:
            name = csr["metadata"]["name"]
            if csr["spec"]["signerName"] != NODE_SIGNER:  # the field selector is trusted,
                self.foreign_seen.add(name)  # but a wrong answer must not be denied
                continue
            if csr_state(csr) != "pending":
                continue
            decision = decide_csr(csr, machines=MACHINES, cluster_name=CLUSTER)
            self.decisions[name] = decision
            kind = "Approved" if decision.approve else "Denied"
            csr.setdefault("status", {}).setdefault("conditions", []).append(
                {
                    "type": kind,
                    "status": "True",
                    "reason": decision.reason,
                    "message": decision.message,
                }
            )
            csr = await self.call("PUT", f"{CSR_PATH}/{name}/approval", body=csr)
            if not decision.approve:
                continue
            cert_pem = sign_node_csr(self.ca, csr, now=_now(), lifetime=dt.timedelta(days=7))
            assert decision.node_name is not None  # approved: it names its node
            # The node's own tls-crypt-v2 key, sealed to its CSR, before the certificate.
            sealed = certs.seal_new_node_key(
                self.server_key,
                csr_pem=request_pem(csr),
                node=decision.node_name,
                not_after=certs.cert_info(cert_pem).not_after,
                now=_now(),
            )
            csr["metadata"].setdefault("annotations", {})[KEY_ANNOTATION] = sealed
            csr = await self.call("PUT", f"{CSR_PATH}/{name}", body=csr)
            csr["status"]["certificate"] = base64.b64encode(cert_pem).decode()
            await self.call("PUT", f"{CSR_PATH}/{name}/status", body=csr)

    async def run(self) -> None:
        while True:
            await self.once()
            await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def signer_for(cluster: TenantCluster, ca: certs.Issued) -> AsyncIterator[Signer]:
    """A Signer for CLUSTER's node CSRs with the tunnel CA; it signs once ``signing``."""
    async with api_client(cluster) as api:
        yield Signer(api, ca=ca)


@contextlib.asynccontextmanager
async def signing(signer: Signer) -> AsyncIterator[Signer]:
    task = asyncio.create_task(signer.run(), name="signer")
    try:
        yield signer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert not signer.foreign_seen


# --- the agent side ---------------------------------------------------------------------------


class Node:
    """One node's files and its call of obtain_certificate."""

    def __init__(self, cluster: TenantCluster, tmp: Path, *, name: str, tunnel_ca: Path,
                 credentials: str | None = None) -> None:  # fmt: skip
        self.cluster = cluster
        self.name = name
        self.dir = tmp / f"state-{name}"
        self.key = self.dir / "node.key"
        self.cert = self.dir / "node.crt"
        self.pending = Path(str(self.key) + PENDING_SUFFIX)
        self.tc = self.dir / "tls-crypt-v2-client.key"
        self.tunnel_ca = tunnel_ca
        self.credentials = credentials or mint_node(cluster, tmp, name)
        self.steps: list[Step] = []

    async def obtain(self, *, timeout: float = 30.0, renew_fraction: float = 2 / 3,
                     as_node: str | None = None) -> Obtained:  # fmt: skip
        return await obtain_certificate(
            server=self.cluster.server_url,
            ca_file=str(self.cluster.pki.ca.cert),
            client_cert_file=self.credentials,
            client_key_file=self.credentials,
            node_name=as_node or self.name,
            key_path=str(self.key),
            cert_path=str(self.cert),
            tunnel_ca_file=str(self.tunnel_ca),
            clock=_now,
            timeout=timeout,
            renew_fraction=renew_fraction,
            progress=self.steps.append,
            poll_interval=0.2,
            tls_crypt_key_path=str(self.tc),
        )


@pytest.fixture
def tunnel_ca(tmp_path: Path) -> tuple[certs.Issued, Path]:
    ca = certs.new_ca(common_name="tenant-a-tunnel", now=_now(), lifetime=dt.timedelta(days=30))
    path = tmp_path / "tunnel-ca.crt"
    path.write_bytes(ca.cert_pem)
    return ca, path


async def _csrs(signer: Signer) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = (await signer.call("GET", CSR_PATH))["items"]
    return items


async def _secrets(signer: Signer) -> dict[str, list[bytes]]:
    items = (await signer.call("GET", "/api/v1/secrets"))["items"]
    return {
        f"{s['metadata']['namespace']}/{s['metadata']['name']}": [
            base64.b64decode(v) for v in (s.get("data") or {}).values()
        ]
        for s in items
    }


# --- tests -------------------------------------------------------------------------------------


async def test_node_gets_its_own_certificate_and_renews_with_a_new_key(
    tenant_cluster_factory: TenantFactory,
    tmp_path: Path,
    tunnel_ca: tuple[certs.Issued, Path],
) -> None:
    cluster = await tenant_cluster_factory(controller_manager=True)
    ca, ca_path = tunnel_ca
    async with signer_for(cluster, ca) as signer:
        secrets_before = await _secrets(signer)
        node = Node(cluster, tmp_path, name="node-1", tunnel_ca=ca_path)
        async with signing(signer):
            got = await node.obtain()

            assert got.source == "issued"
            key_pem = node.key.read_bytes()
            tc_pem = node.tc.read_bytes()
            assert certs.parse_node_key_metadata(
                certs.tls_crypt_v2_client_metadata(signer.server_key, tc_pem)
            ) == ("node-1", got.info.not_after)
            assert stat.S_IMODE(os.stat(node.key).st_mode) == 0o600
            info = certs.validate(
                node.cert.read_bytes(), key_pem=key_pem, ca_pem=ca.cert_pem, now=_now(),
                usage="client",
            )  # fmt: skip
            assert info.common_name == "node-1"
            assert info.serial == got.info.serial
            assert got.csr_name is not None
            decision = signer.decisions[got.csr_name]
            assert decision.approve
            assert decision.machine == "m-1"
            csr = await signer.call("GET", f"{CSR_PATH}/{got.csr_name}")
            # The apiserver, not the agent, says who asked: the kubelet's identity.
            assert csr["spec"]["username"] == "system:node:node-1"
            assert "system:nodes" in csr["spec"]["groups"]
            assert csr["spec"]["usages"] == ["digital signature", "client auth"]
            assert [s.event for s in node.steps] == ["key_created", "csr_created",
                                                    "certificate_issued"]  # fmt: skip

            # Valid and not due: reused, nothing asked.
            count = len(await _csrs(signer))
            again = await node.obtain()
            assert again.source == "existing"
            assert again.info.serial == info.serial
            assert len(await _csrs(signer)) == count

            # Due: a new key beside the live pair, a new CSR, then both swapped.
            renewed = await node.obtain(renew_fraction=1e-9)
            assert renewed.source == "issued"
            assert renewed.csr_name != got.csr_name
            assert renewed.info.serial != info.serial
            new_key = node.key.read_bytes()
            assert new_key != key_pem
            # A new tls-crypt-v2 key came with the new certificate, installed with it.
            assert node.tc.read_bytes() != tc_pem
            assert certs.parse_node_key_metadata(
                certs.tls_crypt_v2_client_metadata(signer.server_key, node.tc.read_bytes())
            ) == ("node-1", renewed.info.not_after)
            assert not node.pending.exists()
            certs.validate(node.cert.read_bytes(), key_pem=new_key, ca_pem=ca.cert_pem,
                           now=_now(), usage="client")  # fmt: skip

        # No key ever went to the API: no new Secret, no Secret holding a private key,
        # and no CSR carries either of the node's keys.
        secrets_after = await _secrets(signer)
        assert secrets_after.keys() == secrets_before.keys()
        assert not [n for n, vs in secrets_after.items() if any(b"PRIVATE KEY" in v for v in vs)]
        dump = json.dumps(await _csrs(signer))
        for csr in await _csrs(signer):
            for field in (csr["spec"]["request"], csr.get("status", {}).get("certificate", "")):
                assert b"PRIVATE KEY" not in base64.b64decode(field)
        for k in (key_pem, new_key):
            body = b"".join(k.splitlines()[1:-1]).decode()
            assert body[:40] not in dump


async def test_a_node_is_denied_another_nodes_name_and_a_node_without_a_machine(
    tenant_cluster_factory: TenantFactory,
    tmp_path: Path,
    tunnel_ca: tuple[certs.Issued, Path],
) -> None:
    cluster = await tenant_cluster_factory(controller_manager=True)
    ca, ca_path = tunnel_ca
    async with signer_for(cluster, ca) as signer:
        async with signing(signer):
            # node-2 (it has a Machine) asks for node-1's name.
            node2 = Node(cluster, tmp_path, name="node-2", tunnel_ca=ca_path)
            with pytest.raises(CSRRefused) as refused:
                await node2.obtain(as_node="node-1")
            assert refused.value.outcome == "Denied"
            assert refused.value.reason == "CommonNameMismatch"
            assert "node node-2" in str(refused.value)
            assert "CN=node-1" in str(refused.value)
            assert not node2.key.exists()  # burned: the next attempt has a new key
            assert not node2.cert.exists()
            first = refused.value.csr_name
            with pytest.raises(CSRRefused) as again:
                await node2.obtain(as_node="node-1")
            assert again.value.csr_name != first

            # node-3 authenticates fine but no Machine has it as nodeRef.
            node3 = Node(cluster, tmp_path, name="node-3", tunnel_ca=ca_path)
            with pytest.raises(CSRRefused) as orphan:
                await node3.obtain()
            assert orphan.value.reason == "NoMachineForNode"
            assert "no Machine of Cluster tenant-a" in str(orphan.value)
            assert not node3.cert.exists()

            # Meanwhile node-2 asking as itself is fine.
            got = await node2.obtain()
            assert got.info.common_name == "node-2"

        denied = {n: d.reason for n, d in signer.decisions.items() if not d.approve}
        assert sorted(denied.values()) == [
            "CommonNameMismatch", "CommonNameMismatch", "NoMachineForNode",
        ]  # fmt: skip
        for name, reason in denied.items():
            csr = await signer.call("GET", f"{CSR_PATH}/{name}")
            assert csr_state(csr) == "denied"
            assert not csr["status"].get("certificate")
            (cond,) = csr["status"]["conditions"]
            assert cond["reason"] == reason


async def test_waiting_agent_restarted_picks_up_its_csr(
    tenant_cluster_factory: TenantFactory,
    tmp_path: Path,
    tunnel_ca: tuple[certs.Issued, Path],
) -> None:
    """No answer in time: BootstrapTimeout, the key stays; the next call posts the same
    name, gets 409 AlreadyExists, and waits for that CSR instead of making another."""
    cluster = await tenant_cluster_factory(controller_manager=True)
    ca, ca_path = tunnel_ca
    async with signer_for(cluster, ca) as signer:
        node = Node(cluster, tmp_path, name="node-1", tunnel_ca=ca_path)
        with pytest.raises(BootstrapTimeout, match=r"got no answer within 1\.5 s"):
            await node.obtain(timeout=1.5)
        assert node.key.exists()
        (pending,) = await _csrs(signer)
        assert csr_state(pending) == "pending"  # kube-controller-manager left it alone

        async with signing(signer):
            got = await node.obtain()
        assert got.csr_name == pending["metadata"]["name"]
        assert "csr_found" in [s.event for s in node.steps]
        assert len(await _csrs(signer)) == 1


async def test_credentials_that_are_not_a_nodes_are_refused(
    tenant_cluster_factory: TenantFactory,
    tmp_path: Path,
    tunnel_ca: tuple[certs.Issued, Path],
) -> None:
    cluster = await tenant_cluster_factory()
    _, ca_path = tunnel_ca
    user = mint_client(cluster, tmp_path / "mallory.pem", cn="mallory", orgs=["developers"])
    node = Node(cluster, tmp_path, name="node-1", tunnel_ca=ca_path, credentials=user)
    with pytest.raises(ApiRequestError) as refused:
        await node.obtain()
    assert refused.value.status == 403
    assert "system:node:node-1 may not do this" in str(refused.value)

    # And a node's own credentials read no Secret: there is none to steal keys from, and
    # the Node authorizer would not hand out unrelated ones either.
    context = ssl.create_default_context(cafile=str(cluster.pki.ca.cert))
    creds = mint_node(cluster, tmp_path, "node-1")
    context.load_cert_chain(creds, creds)
    async with (
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context), trust_env=False
        ) as session,
        session.get(f"{cluster.server_url}/api/v1/secrets") as resp,
    ):
        assert resp.status == 403


async def test_node_role_is_unready_until_its_csr_is_signed(
    tenant_cluster_factory: TenantFactory,
    tmp_path: Path,
    tunnel_ca: tuple[certs.Issued, Path],
) -> None:
    """The node role's bootstrap task: openvpn's material check is held back and
    /readyz says what the node waits for, until the CSR is signed."""
    cluster = await tenant_cluster_factory(controller_manager=True)
    ca, ca_path = tunnel_ca
    node = Node(cluster, tmp_path, name="node-1", tunnel_ca=ca_path)
    cfg = ClientRoleConfig(
        role="node",
        common=Common(state_dir=str(node.dir)),
        openvpn=ClientConfig(
            remotes=[("198.18.0.1", 1194)],
            ca=str(ca_path),
            cert=str(node.cert),
            key=str(node.key),
            tls_crypt_v2=str(tmp_path / "tc.key"),
            management=str(tmp_path / "m.sock"),
        ),
        probe=ProbeSettings(target=(IPv4Address("198.18.8.1"), 7947)),
        bootstrap=BootstrapSettings(
            server=cluster.server_url,
            ca=str(cluster.pki.ca.cert),
            client_cert=node.credentials,
            client_key=node.credentials,
        ),
    )
    role = NodeRole(
        cfg=cfg, registry=CollectorRegistry(), clock=SYSTEM_CLOCK, rng=random.Random(1),
        kernel_factory=_no_kernel, environ={"NODE_NAME": "node-1"},
    )  # fmt: skip
    task = asyncio.create_task(role._bootstrap_task())
    try:
        await aeventually(
            lambda: "waiting for vpnctl" in (role.conditions.reason("certificate") or ""),
            what="the node waiting for vpnctl to sign",
            timeout=20,
        )
        assert not role._first_attempt.is_set()  # openvpn waits
        async with signer_for(cluster, ca) as idle, signing(idle) as signer:
            signer_key = signer.server_key
            await aeventually(
                lambda: role.conditions.reason("certificate") is None,
                what="the certificate condition cleared",
                timeout=20,
            )
        assert role._first_attempt.is_set()
        info = certs.validate(node.cert.read_bytes(), key_pem=node.key.read_bytes(),
                              ca_pem=ca.cert_pem, now=_now(), usage="client")  # fmt: skip
        assert info.common_name == "node-1"
        # Its own tls-crypt-v2 key came with it, wrapped by the tenant's server key.
        metadata = certs.tls_crypt_v2_client_metadata(
            signer_key, (tmp_path / "tc.key").read_bytes()
        )
        assert certs.parse_node_key_metadata(metadata) == ("node-1", info.not_after)
        assert (
            role.registry.get_sample_value(
                "vpnctl_agent_certificate_requests_total", {"role": "node", "result": "issued"}
            )
            == 1
        )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _no_kernel() -> Kernel:
    raise AssertionError("the bootstrap task needs no kernel")
