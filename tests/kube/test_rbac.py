"""The controller under the chart's own RBAC, nothing more (issue 9, item 6).

The vpnctl chart is rendered with helm; its ServiceAccount, Roles and bindings are
applied to the real service cluster; the controller runs as that ServiceAccount (a
kubeconfig holding a token from the TokenRequest API) through a tenant's life: Tunnel
Ready, Machine deleted -> revoked, Cluster deleted -> cleaned up. And the ServiceAccount
cannot do what the controller never does: read Secrets outside its namespace, delete
its objects, make pods.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from tests.support.capi import create_tenant
from tests.support.polling import aeventually
from vpnctl.charts import REPO_CHARTS
from vpnctl.controller.interfaces import TenantRef
from vpnctl.controller.networks import reserved_networks
from vpnctl.kube import (
    CLUSTER,
    CONFIG_MAP,
    DEPLOYMENT,
    LEASE,
    NETWORK_POLICY,
    POD,
    SECRET,
    SERVICE,
    TUNNEL,
    Forbidden,
    Kube,
    KubeObject,
    connect,
)
from vpnctl.testenv import Binaries, ServiceCluster, helm_template

from .controllerfix import (
    FakeObservations,
    FakeTenantSide,
    all_connected,
    controller_settings,
    delete_machine_until_revoked,
    gc_knows_tunnels,  # noqa: F401
    running_controller,
    wait_ready,
)
from .kubefix import kube, unique  # noqa: F401

pytestmark = pytest.mark.kube

_RBAC_KINDS = {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}


@pytest_asyncio.fixture(loop_scope="session")
async def controller_account(
    service_cluster: ServiceCluster,
    k8s_binaries: Binaries,
    namespace: str,
    tmp_path: Path,
) -> AsyncIterator[Kube]:
    """A Kube authenticated as the chart's controller ServiceAccount, released into
    `namespace` and confined to it (controller.namespace: a Role there, the chart's
    --namespace; by default the controller watches every namespace under a ClusterRole
    of the same rules, which tests/unit/test_charts.py compares)."""
    values = {"capi": {"enabled": False}, "controller": {"namespace": namespace}}
    async with _account(service_cluster, k8s_binaries, namespace, tmp_path, values) as client:
        yield client


@contextlib.asynccontextmanager
async def _account(
    service_cluster: ServiceCluster,
    k8s_binaries: Binaries,
    namespace: str,
    tmp_path: Path,
    chart_values: dict[str, Any],
) -> AsyncIterator[Kube]:
    """The chart's RBAC objects for ``chart_values`` applied, released into
    ``namespace``; a Kube with a token of its controller ServiceAccount."""
    release = unique("rbac")
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(chart_values))
    text = await helm_template(
        k8s_binaries.helm,
        REPO_CHARTS / "vpnctl",
        release=release,
        namespace=namespace,
        values_files=[values],
        include_crds=False,
    )
    docs = [d for d in yaml.safe_load_all(text) if d and d["kind"] in _RBAC_KINDS]
    (account,) = [d for d in docs if d["kind"] == "ServiceAccount"]
    cluster_scoped = [
        f"{d['kind'].lower()}/{d['metadata']['name']}"
        for d in docs
        if d["kind"] in ("ClusterRole", "ClusterRoleBinding")
    ]
    await service_cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    try:
        name = account["metadata"]["name"]
        created = await service_cluster.kubectl(
            "create", "token", name, "-n", namespace, "--duration=1h"
        )
        token = created.strip()
        kubeconfig = tmp_path / "controller.kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "service",
                            "cluster": {
                                "server": service_cluster.server_url,
                                "certificate-authority-data": base64.b64encode(
                                    service_cluster.ca_pem
                                ).decode(),
                            },
                        }
                    ],
                    "users": [{"name": "controller", "user": {"token": token}}],
                    "contexts": [
                        {"name": "c", "context": {"cluster": "service", "user": "controller"}}
                    ],
                    "current-context": "c",
                }
            )
        )
        async with await connect(kubeconfig=str(kubeconfig)) as client:
            yield client
    finally:
        if cluster_scoped:
            await service_cluster.kubectl(
                "delete", "--ignore-not-found", *cluster_scoped, check=False
            )


async def test_the_service_account_cannot_do_what_the_controller_never_does(
    controller_account: Kube,
    kube: Kube,  # noqa: F811
    namespace: str,
) -> None:
    sa = controller_account
    # Its own namespace: what it uses works.
    await sa.list(SECRET, namespace)
    await sa.list(POD, namespace)
    # Secrets anywhere else, or everywhere: refused.
    with pytest.raises(Forbidden):
        await sa.list(SECRET)
    with pytest.raises(Forbidden):
        await sa.list(SECRET, "kube-system")
    with pytest.raises(Forbidden):
        await sa.get(SECRET, "anything", "default")
    # Writes it never makes: refused even in its namespace.
    await kube.create(
        CONFIG_MAP, {"metadata": {"name": "keep", "namespace": namespace}, "data": {"a": "1"}}
    )
    with pytest.raises(Forbidden):
        await sa.delete(CONFIG_MAP, "keep", namespace)
    keep = await kube.get(CONFIG_MAP, "keep", namespace)
    assert keep is not None
    # ConfigMaps are updated (the revocation book's optimistic writes); Secrets never.
    await kube.create(
        SECRET, {"metadata": {"name": "keep", "namespace": namespace}, "data": {"a": "MQ=="}}
    )
    secret = await kube.get(SECRET, "keep", namespace)
    assert secret is not None
    with pytest.raises(Forbidden):
        await sa.replace(SECRET, secret)
    with pytest.raises(Forbidden):
        await sa.create(
            POD,
            {
                "metadata": {"name": "p", "namespace": namespace},
                "spec": {"containers": [{"name": "c", "image": "x"}]},
            },
        )
    with pytest.raises(Forbidden):
        await sa.patch_merge(
            CLUSTER, "any", {"metadata": {"labels": {"a": "b"}}}, namespace=namespace
        )
    # Cluster-wide, it reads the networks it reserves, and nothing else.
    assert await reserved_networks(sa, flags=())
    with pytest.raises(Forbidden):
        await sa.list(TUNNEL)


async def test_the_controller_runs_a_tenants_life_under_the_charts_rbac(
    controller_account: Kube,
    kube: Kube,  # noqa: F811
    namespace: str,
    gc_knows_tunnels: None,  # noqa: F811
) -> None:
    tenant = TenantRef(namespace, "least")
    nodes = [f"least-node-{i}" for i in (1, 2)]
    serials = {node: f"1ea5{i:04x}" for i, node in enumerate(nodes, start=1)}
    side = FakeTenantSide(signed={tenant: tuple(serials.items())})
    observations = FakeObservations(default=all_connected(nodes))
    # With leader election: the Lease lives in the release namespace, under the chart's
    # leases Role.
    settings = controller_settings(namespace, leader_elect=True, lease_namespace=namespace)
    async with running_controller(
        controller_account, settings, side=side, observations=observations
    ) as run:
        await create_tenant(kube, namespace, "least", nodes=2)
        await wait_ready(kube, namespace, "least", nodes=2, connected=2)
        assert await kube.get(NETWORK_POLICY, "least-vpn-server", namespace) is not None
        await aeventually(
            lambda: _server_pods(kube, namespace, "least"), what="server pods", timeout=20
        )

        # Machine deleted -> revoked (the CRL in the server ConfigMap, the pods kicked).
        revocation = await delete_machine_until_revoked(
            kube,
            namespace,
            cluster="least",
            machine="least-md-2",
            serial=serials["least-node-2"],
            interval=0.05,
        )
        print(f"\nunder the chart's RBAC: Machine deleted -> CRL {revocation.took:.2f}s")

        # Cluster deleted -> the Tunnel's finalizer runs and everything goes.
        await kube.delete(CLUSTER, "least", namespace)

        async def all_gone() -> bool:
            if await kube.get(TUNNEL, "least", namespace) is not None:
                return False
            for res in (SECRET, CONFIG_MAP, DEPLOYMENT, SERVICE, NETWORK_POLICY):
                items, _ = await kube.list(res, namespace, label_selector="vpnctl.io/cluster=least")
                if items:
                    return False
            return True

        await aeventually(all_gone, timeout=30, interval=0.2, what="everything deleted")
        # Not one reconcile failed (a 403 would have been an error and a backoff).
        assert run.metric("vpnctl_reconciles_total", {"result": "error"}) == 0
    assert side.cleaned[-1] == (tenant, True)


async def test_by_default_the_controller_reconciles_tenants_in_any_namespace(
    service_cluster: ServiceCluster,
    k8s_binaries: Binaries,
    kube: Kube,  # noqa: F811
    namespace: str,
    tmp_path: Path,
) -> None:
    """The chart's defaults: a ClusterRole, and the controller (no --namespace) reaches a
    tenant in a namespace that is not the release's, under nothing more."""
    other = unique("tenants")
    await service_cluster.kubectl("create", "namespace", other)
    values = {"capi": {"enabled": False}}
    try:
        async with _account(service_cluster, k8s_binaries, namespace, tmp_path, values) as sa:
            await sa.list(TUNNEL)  # cluster-wide, as the controller's watches list
            observations = FakeObservations(default=all_connected(["wide-node-1"]))
            settings = controller_settings(None, leader_elect=True, lease_namespace=namespace)
            async with running_controller(
                sa, settings, side=FakeTenantSide(), observations=observations
            ):
                await create_tenant(kube, other, "wide", nodes=1)
                await wait_ready(kube, other, "wide", nodes=1, connected=1)
            # Leader election stays a Role in the release namespace.
            with pytest.raises(Forbidden):
                await sa.get(LEASE, "vpnctl-controller", other)
    finally:
        await service_cluster.kubectl("delete", "namespace", other, "--wait=false", check=False)


async def _server_pods(client: Kube, namespace: str, cluster: str) -> list[KubeObject]:
    with contextlib.suppress(Forbidden):
        pods, _ = await client.list(
            POD,
            namespace,
            label_selector=f"app.kubernetes.io/component=server,vpnctl.io/cluster={cluster}",
        )
        return pods
    return []
