"""`helm install` of the agent chart into a namespace that exists, against a real apiserver
(issue 15, item 5): it installs, and the controller still selects what Helm made.

Helm sets `app.kubernetes.io/managed-by: Helm` on every object it creates, whatever the
template says; the controller finds its objects in a tenant cluster (to repair them, and
to delete them with the Tunnel) with `vpnctl.reconcile.tenant_refs.label_selector`,
which must not depend on that label. The service cluster's apiserver stands in for a
tenant's: the chart needs nothing but an apiserver (its DaemonSet schedules no pod
here, there are no nodes).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.support.polling import aeventually
from vpnctl.charts import REPO_CHARTS
from vpnctl.kube import Kube
from vpnctl.reconcile.tenant_refs import KNOWN_RESOURCES, label_selector
from vpnctl.testenv import ServiceCluster, helm_template
from vpnctl.testenv.helm import helm_command

from .kubefix import kube, unique  # noqa: F401

pytestmark = pytest.mark.kube

AGENT = REPO_CHARTS / "agent"
VALUES = AGENT / "ci" / "example-values.yaml"


async def _selected(client: Kube, namespace: str, selector: str) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for res in KNOWN_RESOURCES:
        items, _ = await client.list(
            res, namespace if res.namespaced else None, label_selector=selector
        )
        for obj in items:
            found.add((res.kind, obj["metadata"]["name"]))
    return found


@pytest.mark.parametrize("create_namespace", [False, True], ids=["existing", "create-namespace"])
async def test_helm_install_into_a_namespace_and_the_controller_selects_it(
    kube: Kube,  # noqa: F811
    service_cluster: ServiceCluster,
    tmp_path: Path,
    create_namespace: bool,
) -> None:
    namespace = unique("agent")
    release = unique("agent")
    if not create_namespace:
        await service_cluster.kubectl("create", "namespace", namespace)
    try:
        flags = ["--create-namespace"] if create_namespace else []
        code, out = await helm_command(
            service_cluster,
            "install", release, str(AGENT), "--namespace", namespace, "--values", str(VALUES),
            *flags,
        )  # fmt: skip
        assert code == 0, out
        rendered = [
            d
            for d in yaml.safe_load_all(
                await helm_template(
                    service_cluster.binaries.helm, AGENT, namespace=namespace, values_files=[VALUES]
                )
            )
            if d
        ]
        assert rendered
        assert "Namespace" not in {d["kind"] for d in rendered}
        cluster_name = yaml.safe_load(VALUES.read_text())["clusterName"]

        selected = await _selected(kube, namespace, label_selector(cluster_name))
        assert selected == {(d["kind"], d["metadata"]["name"]) for d in rendered}
        # What makes this test matter: Helm did replace the template's managed-by.
        for kind, name in selected:
            (res,) = [r for r in KNOWN_RESOURCES if r.kind == kind]
            obj = await kube.get(res, name, namespace)
            assert obj is not None
            assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm", kind
        # ... so a selector on managed-by=vpnctl (the one before issue 15) finds nothing.
        assert not await _selected(
            kube, namespace, f"app.kubernetes.io/managed-by=vpnctl,vpnctl.io/cluster={cluster_name}"
        )

        code, out = await helm_command(
            service_cluster, "uninstall", release, "--namespace", namespace
        )
        assert code == 0, out

        async def gone() -> bool:
            return not await _selected(kube, namespace, label_selector(cluster_name))

        await aeventually(gone, timeout=30, interval=0.2, what="the release's objects deleted")
    finally:
        await helm_command(service_cluster, "uninstall", release, "--namespace", namespace)
        await service_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
