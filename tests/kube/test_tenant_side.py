"""The tenant side against real tenant apiservers: install, no-op resync, drift repair
(measured), node CSRs from real node identities, unreachable and malformed kubeconfigs,
forget and cleanup.

Each test starts its own tenant cluster (etcd + apiserver, own CA); the controller reaches
it with inline kubeconfig text, the way CAPI's ``<cluster>-kubeconfig`` Secret holds it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from prometheus_client import CollectorRegistry

import certs
from agent.bootstrap import CSRRefused, obtain_certificate
from tests.support import capi as samples
from vpnctl.controller.interfaces import TenantRef, TenantSideResult
from vpnctl.controller.tenant_install import (
    REASON_INSTALLED,
    REASON_KUBECONFIG_INVALID,
    REASON_UNREACHABLE,
)
from vpnctl.controller.tenant_side import KubeTenantSide
from vpnctl.kube import (
    CERTIFICATE_SIGNING_REQUEST,
    CLUSTER_ROLE,
    CONFIG_MAP,
    DAEMON_SET,
    NAMESPACE,
    SERVICE_ACCOUNT,
    Kube,
    KubeObject,
    connect,
)
from vpnctl.reconcile.agent_objects import NODE_JSON, tenant_objects
from vpnctl.reconcile.agentdocs import node_role_config
from vpnctl.reconcile.diff import stamp
from vpnctl.reconcile.names import COMPONENT_NODE_AGENT, NODE_AGENT_NAME, labels
from vpnctl.reconcile.settings import Settings
from vpnctl.reconcile.tenant_refs import object_ref
from vpnctl.reconcile.tenant_spec import parse_tenant
from vpnctl.testenv import TenantCluster
from vpnctl.testenv.cluster import free_ports

from .conftest import TenantFactory
from .tenantsidefix import real_tenant_side
from .webhookfix import node_csr

pytestmark = pytest.mark.kube

CLUSTER = "tenant-a"
TENANT = TenantRef(namespace="tenant-a", cluster=CLUSTER)
SETTINGS = Settings(agent_image="registry.example/vpnctl:test")
AGENT_NS = SETTINGS.tenant_namespace
REPAIR_BUDGET = 5.0  # seconds; the issue asks for "within seconds"


# --- helpers ---------------------------------------------------------------------------------


def inline_kubeconfig(path: Path, *, server: str | None = None) -> str:
    """The kubeconfig file's text with every referenced PEM file inlined (``*-data``),
    as CAPI's Secret holds it; ``server`` replaces the server URL."""
    doc = yaml.safe_load(path.read_text())
    for entry in doc["clusters"]:
        cluster = entry["cluster"]
        ca = Path(cluster.pop("certificate-authority"))
        cluster["certificate-authority-data"] = base64.b64encode(ca.read_bytes()).decode()
        if server is not None:
            cluster["server"] = server
    for entry in doc["users"]:
        user = entry["user"]
        for key in ("client-certificate", "client-key"):
            user[f"{key}-data"] = base64.b64encode(Path(user.pop(key)).read_bytes()).decode()
    return str(yaml.safe_dump(doc))


def tunnel_ca() -> certs.Issued:
    return certs.new_ca(
        common_name=f"{CLUSTER}-vpn-ca",
        now=dt.datetime.now(dt.UTC),
        lifetime=dt.timedelta(days=365),
    )


def desired_objects(ca: certs.Issued, *, port: int = 1194) -> list[KubeObject]:
    lab = samples.lab_tenant(nodes=1, name=CLUSTER, namespace=TENANT.namespace)
    spec = parse_tenant(
        tunnel=lab.tunnel, cluster=lab.cluster, machines=lab.machines, nodes=lab.nodes
    )
    role = node_role_config(tenant=spec, settings=SETTINGS, remotes=[("198.18.8.1", port)])
    return list(
        tenant_objects(
            cluster_name=CLUSTER, settings=SETTINGS, role_config=role, ca_pem=ca.cert_pem
        )
    )


# The tenant's tls-crypt-v2 server key: the signer seals each node's own client key,
# made from it, onto the node's CSR.
SERVER_KEY = certs.new_tls_crypt_v2_server_key()


async def ensure(
    ts: KubeTenantSide,
    text: str,
    ca: certs.Issued,
    *,
    machines: Sequence[KubeObject] = (),
    objects: Sequence[KubeObject] | None = None,
) -> TenantSideResult:
    """``ensure()`` for TENANT with its kubeconfig TEXT, tunnel CA and ``SERVER_KEY``, as
    the reconciler calls it; the agent objects are ``desired_objects(ca)`` unless given."""
    return await ts.ensure(
        tenant=TENANT,
        kubeconfig_text=text,
        desired_objects=desired_objects(ca) if objects is None else objects,
        ca=ca,
        machines=machines,
        tls_crypt_server_key=SERVER_KEY,
    )


def machine_for(node: str) -> KubeObject:
    return dict(
        samples.machine(
            name=f"{CLUSTER}-md-{node}",
            cluster_name=CLUSTER,
            namespace=TENANT.namespace,
            node=node,
            internal_ip="198.19.0.11",
        )
    )


def tenant_side(
    registry: CollectorRegistry | None = None,
) -> AbstractAsyncContextManager[KubeTenantSide]:
    return real_tenant_side(registry=registry)


@contextlib.asynccontextmanager
async def admin_of(cluster: TenantCluster) -> AsyncIterator[Kube]:
    async with await connect(kubeconfig=str(cluster.kubeconfig_path)) as kube:
        yield kube


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout: float, what: str, interval: float = 0.05
) -> float:
    """Poll ``check`` until it is true; returns the seconds it took."""
    start = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not true after {timeout}s")
        await asyncio.sleep(interval)


async def wait_synced(ts: KubeTenantSide, tenant: TenantRef) -> None:
    async def synced() -> bool:
        return ts.synced(tenant)

    await eventually(synced, timeout=15, what="tenant watches synced")


async def resource_versions(kube: Kube, objects: list[KubeObject]) -> dict[str, str]:
    out = {}
    for obj in objects:
        ref = object_ref(obj)
        live = await kube.get(ref.res, ref.name, ref.namespace or None)
        assert live is not None, f"{ref} missing in the tenant cluster"
        out[str(ref)] = live["metadata"]["resourceVersion"]
    return out


def write_node_credentials(cluster: TenantCluster, node: str, directory: Path) -> tuple[Path, Path]:
    """A kubelet-style client certificate for ``node`` (CN=system:node:<node>,
    O=system:nodes) from the tenant cluster's CA: the identity the apiserver records
    as a CSR's spec.username, which a client cannot fake."""
    ca_cert = x509.load_pem_x509_certificate(cluster.pki.ca.cert.read_bytes())
    ca_key = serialization.load_pem_private_key(cluster.pki.ca.key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
                    x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{node}"),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{node}-kubelet.crt", directory / f"{node}-kubelet.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


async def obtain(
    cluster: TenantCluster, tmp_path: Path, ca: certs.Issued, node: str
) -> certs.CertInfo:
    """NODE's tunnel certificate, asked for as the node agent does (CSR with its kubelet
    credentials), trusting CA for the tunnel."""
    tunnel_ca_file = tmp_path / "tunnel-ca.crt"
    tunnel_ca_file.write_bytes(ca.cert_pem)
    cert_file, key_file = write_node_credentials(cluster, node, tmp_path)
    obtained = await obtain_certificate(
        server=cluster.server_url,
        ca_file=str(cluster.pki.ca.cert),
        client_cert_file=str(cert_file),
        client_key_file=str(key_file),
        node_name=node,
        key_path=str(tmp_path / f"{node}-tunnel.key"),
        cert_path=str(tmp_path / f"{node}-tunnel.crt"),
        tunnel_ca_file=str(tunnel_ca_file),
        clock=lambda: dt.datetime.now(dt.UTC),
        timeout=20,
        poll_interval=0.2,
    )
    return obtained.info


def tasks_of(tenant: TenantRef) -> list[asyncio.Task[Any]]:
    return [
        t
        for t in asyncio.all_tasks()
        if t.get_name().startswith(f"tenant {tenant} ") and not t.done()
    ]


# --- tests -------------------------------------------------------------------------------------


async def test_install_resync_without_writes_and_drift_put_back(
    tenant_cluster_factory: TenantFactory,
) -> None:
    cluster = await tenant_cluster_factory(name="ts-drift")
    text = inline_kubeconfig(cluster.kubeconfig_path)
    ca = tunnel_ca()
    objects = desired_objects(ca)
    registry = CollectorRegistry()
    async with tenant_side(registry) as ts, admin_of(cluster) as admin:
        first = await ensure(ts, text, ca, objects=objects)
        assert first.installed, first.message
        assert first.reason == REASON_INSTALLED
        assert f"{len(objects)} written" in first.message
        before = await resource_versions(admin, objects)
        assert len(before) == 4  # Namespace, ServiceAccount, ConfigMap, DaemonSet

        # A resync with nothing changed writes nothing: before and after the caches sync.
        again = await ensure(ts, text, ca, objects=objects)
        assert again.installed
        assert "0 written" in again.message
        await wait_synced(ts, TENANT)
        again = await ensure(ts, text, ca, objects=objects)
        assert "0 written" in again.message
        assert await resource_versions(admin, objects) == before
        assert ts.repairs(TENANT) == 0

        # The tenant deletes the DaemonSet: it is back within seconds.
        old = await admin.get(DAEMON_SET, NODE_AGENT_NAME, AGENT_NS)
        assert old is not None
        await admin.delete(DAEMON_SET, NODE_AGENT_NAME, AGENT_NS)

        async def daemon_set_back() -> bool:
            now = await admin.get(DAEMON_SET, NODE_AGENT_NAME, AGENT_NS)
            return now is not None and now["metadata"]["uid"] != old["metadata"]["uid"]

        took = await eventually(daemon_set_back, timeout=REPAIR_BUDGET, what="DaemonSet back")
        print(f"\nDaemonSet deleted by the tenant, put back after {took:.3f}s")

        # The tenant edits the ConfigMap: reverted within seconds.
        wanted = next(o for o in objects if o["kind"] == "ConfigMap")["data"][NODE_JSON]
        await admin.patch_merge(
            CONFIG_MAP,
            NODE_AGENT_NAME,
            {"data": {NODE_JSON: '{"hacked": true}'}},
            namespace=AGENT_NS,
        )

        async def config_reverted() -> bool:
            now = await admin.get(CONFIG_MAP, NODE_AGENT_NAME, AGENT_NS)
            return now is not None and now["data"][NODE_JSON] == wanted

        took = await eventually(config_reverted, timeout=REPAIR_BUDGET, what="ConfigMap reverted")
        print(f"ConfigMap edited by the tenant, reverted after {took:.3f}s")

        # The tenant strips our labels off the ServiceAccount (it leaves the watch's
        # selector, which looks like a deletion): they come back too.
        await admin.patch_merge(
            SERVICE_ACCOUNT,
            NODE_AGENT_NAME,
            {"metadata": {"labels": {"vpnctl.io/cluster": None}}},
            namespace=AGENT_NS,
        )

        async def labels_back() -> bool:
            now = await admin.get(SERVICE_ACCOUNT, NODE_AGENT_NAME, AGENT_NS)
            return now is not None and now["metadata"]["labels"].get("vpnctl.io/cluster") == CLUSTER

        took = await eventually(labels_back, timeout=REPAIR_BUDGET, what="labels back")
        print(f"ServiceAccount labels stripped by the tenant, restored after {took:.3f}s")

        assert ts.repairs(TENANT) == 3
        for kind in ("DaemonSet", "ConfigMap", "ServiceAccount"):
            value = registry.get_sample_value(
                "vpnctl_tenant_repairs_total",
                {"tenant_namespace": TENANT.namespace, "cluster": CLUSTER, "kind": kind},
            )
            assert value == 1.0, kind
        result = await ensure(ts, text, ca, objects=objects)
        assert result.installed
        assert "3 put back" in result.message

        # Our own change (the server moved) is written once and not fought as drift.
        moved = desired_objects(ca, port=31194)
        result = await ensure(ts, text, ca, objects=moved)
        assert "2 written" in result.message  # node.json, and the pods' config hash
        await asyncio.sleep(1)
        assert ts.repairs(TENANT) == 3
        live = await admin.get(CONFIG_MAP, NODE_AGENT_NAME, AGENT_NS)
        assert live is not None
        assert "31194" in live["data"][NODE_JSON]
        assert ts.healthy()


async def test_node_csrs_signed_for_machine_nodes_denied_otherwise(
    tenant_cluster_factory: TenantFactory, tmp_path: Path
) -> None:
    cluster = await tenant_cluster_factory(name="ts-csr")
    text = inline_kubeconfig(cluster.kubeconfig_path)
    ca = tunnel_ca()
    registry = CollectorRegistry()

    async with tenant_side(registry) as ts, admin_of(cluster) as admin:
        result = await ensure(ts, text, ca, machines=[machine_for("node-1")])
        assert result.installed, result.message
        await wait_synced(ts, TENANT)

        # Someone else's signer: vpnctl must leave it alone, never deny it.
        someone = certs.new_csr(certs.new_private_key(), common_name="someone")
        other = await admin.create(
            CERTIFICATE_SIGNING_REQUEST,
            node_csr(
                "not-ours",
                someone,
                signer="kubernetes.io/kube-apiserver-client",
                usages=["client auth"],
            ),
        )
        # Our signer, but created by the admin, not by a node.
        as_node_1 = certs.new_csr(certs.new_private_key(), common_name="node-1")
        impostor = await admin.create(CERTIFICATE_SIGNING_REQUEST, node_csr("impostor", as_node_1))
        assert impostor["spec"]["username"] == "vpnctl-testenv-admin"

        start = time.monotonic()
        info = await obtain(cluster, tmp_path, ca, "node-1")
        print(f"\nnode-1 CSR created, approved and signed in {time.monotonic() - start:.3f}s")
        assert info.common_name == "node-1"
        assert info.issuer_cn == f"{CLUSTER}-vpn-ca"
        assert info.usage == "client"
        assert info.not_after - info.not_before <= dt.timedelta(days=7, minutes=5)

        with pytest.raises(CSRRefused) as refused:
            await obtain(cluster, tmp_path, ca, "node-2")  # a node without a Machine
        assert refused.value.reason == "NoMachineForNode"
        assert "node-2" in refused.value.message

        csrs, _ = await admin.list(CERTIFICATE_SIGNING_REQUEST)
        by_name = {c["metadata"]["name"]: c for c in csrs}
        node1 = next(c for c in csrs if c["spec"]["username"] == "system:node:node-1")
        assert [c["reason"] for c in node1["status"]["conditions"]] == ["NodeHasMachine"]
        assert node1["status"]["certificate"]

        async def impostor_denied() -> bool:
            now = await admin.get(CERTIFICATE_SIGNING_REQUEST, "impostor")
            conds = ((now or {}).get("status") or {}).get("conditions") or []
            return [(c["type"], c["reason"]) for c in conds] == [("Denied", "RequesterNotANode")]

        await eventually(impostor_denied, timeout=5, what="impostor CSR denied")
        assert not (by_name["not-ours"].get("status") or {}).get("conditions"), other

        result = await ensure(ts, text, ca, machines=[machine_for("node-1")])
        assert (result.csr_signed, result.csr_denied) == (1, 2)
        assert result.signed == (("node-1", format(info.serial, "x")),)
        labels_ = {"tenant_namespace": TENANT.namespace, "cluster": CLUSTER}
        assert (
            registry.get_sample_value("vpnctl_tenant_csrs_total", {**labels_, "decision": "signed"})
            == 1
        )
        assert (
            registry.get_sample_value("vpnctl_tenant_csrs_total", {**labels_, "decision": "denied"})
            == 2
        )
        assert ts.healthy()

    # A restarted controller still knows the serial (from the issued CSR) to revoke it,
    # and decides nothing twice.
    async with tenant_side() as ts:
        await ensure(ts, text, ca, machines=[machine_for("node-1")])
        serial = format(info.serial, "x")

        async def serial_known() -> bool:
            nonlocal result
            result = await ensure(ts, text, ca, machines=[machine_for("node-1")])
            return result.signed == (("node-1", serial),)

        await eventually(serial_known, timeout=10, what="serial recovered from the CSR")
        assert (result.csr_signed, result.csr_denied) == (0, 0)


async def test_unreachable_and_malformed_kubeconfig_are_results_not_exceptions(
    tenant_cluster_factory: TenantFactory,
) -> None:
    cluster = await tenant_cluster_factory(name="ts-unreach")
    ca = tunnel_ca()
    objects = desired_objects(ca)
    closed = f"https://127.0.0.1:{free_ports(1)[0]}"
    async with tenant_side() as ts:
        start = time.monotonic()
        result = await ensure(
            ts, inline_kubeconfig(cluster.kubeconfig_path, server=closed), ca, objects=objects
        )
        took = time.monotonic() - start
        print(f"\nunreachable tenant reported after {took:.3f}s: {result.message}")
        assert not result.installed
        assert result.reason == REASON_UNREACHABLE
        assert closed in result.message
        assert took < 5
        assert ts.task_names(TENANT) == []  # no watches on a tenant never reached

        for text, expected in (
            ("clusters: [unclosed", "not valid YAML"),
            ("just a string", "not a kubeconfig"),
            (
                inline_kubeconfig(cluster.kubeconfig_path).replace(
                    "current-context: ts-unreach", "current-context: elsewhere"
                ),
                "current-context names context 'elsewhere', which is not in contexts",
            ),
        ):
            result = await ensure(ts, text, ca, objects=objects)
            assert not result.installed
            assert result.reason == REASON_KUBECONFIG_INVALID
            assert expected in result.message
            assert f"Secret {TENANT.namespace}/{CLUSTER}-kubeconfig" in result.message

        # The Secret is fixed: a new client, and the agent goes in.
        result = await ensure(ts, inline_kubeconfig(cluster.kubeconfig_path), ca, objects=objects)
        assert result.installed, result.message
        assert ts.healthy()


async def test_forget_stops_watches_and_cleanup_removes_everything(
    tenant_cluster_factory: TenantFactory,
) -> None:
    # The controller-manager's namespace controller finishes namespace deletion.
    cluster = await tenant_cluster_factory(name="ts-cleanup", controller_manager=True)
    text = inline_kubeconfig(cluster.kubeconfig_path)
    ca = tunnel_ca()
    ours = labels(cluster_name=CLUSTER, component=COMPONENT_NODE_AGENT)
    # Beyond today's set: a cluster-scoped object and one outside our namespace.
    extra = [
        stamp(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": "vpnctl-node-agent-extra", "labels": dict(ours)},
                "rules": [],
            }
        ),
        stamp(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "vpnctl-extra", "namespace": "default", "labels": dict(ours)},
                "data": {"k": "v"},
            }
        ),
    ]
    objects = [*desired_objects(ca), *extra]
    async with tenant_side() as ts, admin_of(cluster) as admin:
        result = await ensure(ts, text, ca, objects=objects)
        assert result.installed, result.message
        await wait_synced(ts, TENANT)
        names = ts.task_names(TENANT)
        assert len(names) == len(tasks_of(TENANT)) >= 4, names

        # The tenant deletes our whole namespace: it terminates (applies into it are
        # refused meanwhile, and retried), then everything comes back.
        await admin.delete(NAMESPACE, AGENT_NS)

        async def all_back() -> bool:
            ns = await admin.get(NAMESPACE, AGENT_NS)
            if ns is None or ns["metadata"].get("deletionTimestamp"):
                return False
            return await admin.get(DAEMON_SET, NODE_AGENT_NAME, AGENT_NS) is not None

        took = await eventually(all_back, timeout=60, what="namespace and objects back")
        print(f"\nnamespace deleted by the tenant, it and its objects back after {took:.3f}s")
        assert await resource_versions(admin, objects)  # every object exists again
        assert ts.repairs(TENANT) >= 4  # Namespace, ServiceAccount, ConfigMap, DaemonSet
        assert ts.healthy()

        await ts.forget(TENANT)
        assert ts.task_names(TENANT) == []
        assert tasks_of(TENANT) == []
        assert ts.healthy()
        # Nothing watches any more: a deletion stays.
        await admin.delete(DAEMON_SET, NODE_AGENT_NAME, AGENT_NS)
        await asyncio.sleep(2)
        assert await admin.get(DAEMON_SET, NODE_AGENT_NAME, AGENT_NS) is None

        result = await ensure(ts, text, ca, objects=objects)
        assert result.installed
        assert "1 written" in result.message  # just the DaemonSet
        assert tasks_of(TENANT)

        done = False

        async def cleaned() -> bool:
            nonlocal done
            done = await ts.cleanup(tenant=TENANT, kubeconfig_text=text)
            return done

        took = await eventually(cleaned, timeout=60, what="cleanup done", interval=0.5)
        print(f"\ncleanup finished after {took:.3f}s")
        assert tasks_of(TENANT) == []  # cleanup forgot the tenant first
        assert await admin.get(NAMESPACE, AGENT_NS) is None
        assert await admin.get(CLUSTER_ROLE, "vpnctl-node-agent-extra") is None
        assert await admin.get(CONFIG_MAP, "vpnctl-extra", "default") is None
        assert await admin.get(NAMESPACE, "default") is not None  # only ours went

        # The tenant cluster is gone for good while the Cluster is deleted: don't block.
        assert await ts.cleanup(tenant=TENANT, kubeconfig_text=None)
        assert ts.healthy()
    assert not ts.healthy()
