"""Tenant apiservers are separate clusters: separate etcd, separate CA."""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from vpnctl.testenv import KubectlError, TenantCluster

from .conftest import TenantFactory

pytestmark = pytest.mark.kube


async def test_two_tenants_cannot_see_each_other(tenant_cluster_factory: TenantFactory) -> None:
    a, b = await asyncio.gather(
        tenant_cluster_factory(name="tenant-a"), tenant_cluster_factory(name="tenant-b")
    )
    assert a.server_url != b.server_url
    await a.kubectl("create", "configmap", "only-in-a", "-n", "default")
    await b.kubectl("create", "configmap", "only-in-b", "-n", "default")

    assert "only-in-a" in await a.kubectl("get", "configmap", "-n", "default", "-o", "name")
    b_sees = await b.kubectl("get", "configmap", "-n", "default", "-o", "name")
    assert "only-in-a" not in b_sees
    assert "only-in-b" in b_sees
    with pytest.raises(KubectlError, match="NotFound"):
        await b.kubectl("get", "configmap", "only-in-a", "-n", "default")

    # A's credentials don't even get through B's TLS: each tenant has its own CA.
    with pytest.raises(KubectlError, match=r"x509|certificate"):
        await a.kubectl("--server", b.server_url, "get", "configmap", "-n", "default")


async def test_tenant_apiserver_inside_a_network_namespace(
    tenant_cluster_factory: TenantFactory, netns: str
) -> None:
    address = "198.18.250.1"  # the lab's address plan; exists only inside the netns
    subprocess.run(["ip", "-n", netns, "addr", "add", f"{address}/32", "dev", "lo"], check=True)
    tenant: TenantCluster = await tenant_cluster_factory(
        name="tenant-ns", netns=netns, bind_address=address, port=6443
    )
    assert tenant.server_url == f"https://{address}:6443"
    await tenant.kubectl("create", "namespace", "inside")
    assert "namespace/inside" in await tenant.kubectl("get", "namespace", "-o", "name")
    # The apiserver really listens in the namespace, not in ours.
    listening = subprocess.run(
        ["ip", "netns", "exec", netns, "ss", "-Htln", f"src {address}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert ":6443" in listening
