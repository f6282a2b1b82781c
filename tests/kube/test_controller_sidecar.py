"""Attaching the apiserver sidecar to the hosted kube-apiserver, against the real apiserver.

The hosted control plane opts in by labelling its Deployment `vpnctl.io/apiserver-for:
<cluster>`; vpnctl then server-side-applies only its own container, volumes and one
annotation. The user's apiserver container must stay exactly as the user wrote it, and
a resync must not write again.
"""

from __future__ import annotations

import pytest

from tests.support.capi import create_tenant
from tests.support.polling import aeventually
from vpnctl.kube import DEPLOYMENT, Kube, KubeObject
from vpnctl.reconcile.service_objects import (
    APISERVER_CONTAINER,
)
from vpnctl.reconcile.sidecar_objects import (
    ATTACH_SIDECAR_LABEL,
    SIDECAR_HASH_ANNOTATION,
)

from .controllerfix import (
    FakeObservations,
    FakeTenantSide,
    all_connected,
    controller_settings,
    running_controller,
    wait_ready,
)
from .kubefix import kube  # noqa: F401

pytestmark = pytest.mark.kube


def _apiserver_deployment(namespace: str, *, cluster: str) -> dict[str, object]:
    labels = {"app": f"{cluster}-apiserver"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": f"{cluster}-kube-apiserver",
            "namespace": namespace,
            "labels": {ATTACH_SIDECAR_LABEL: cluster, **labels},
        },
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "kube-apiserver",
                            "image": "registry.k8s.io/kube-apiserver:v1.34.4",
                            "args": ["--secure-port=6443"],
                        }
                    ],
                },
            },
        },
    }


async def test_labelled_apiserver_deployment_gets_the_sidecar_and_keeps_its_own_container(
    kube: Kube,  # noqa: F811
    namespace: str,
) -> None:
    nodes = [f"side-node-{i}" for i in (1, 2)]
    settings = controller_settings(namespace, resync_period=0.5)
    mine = _apiserver_deployment(namespace, cluster="side")
    await kube.apply(DEPLOYMENT, mine, field_manager="hosted-control-plane")
    other = _apiserver_deployment(namespace, cluster="other")
    other["metadata"]["name"] = "unrelated"  # type: ignore[index]
    await kube.apply(DEPLOYMENT, other, field_manager="hosted-control-plane")

    async with running_controller(
        kube, settings, side=FakeTenantSide(), observations=FakeObservations(
            default=all_connected(nodes))
    ) as run:  # fmt: skip
        await create_tenant(kube, namespace, "side", nodes=2)
        await wait_ready(kube, namespace, "side", nodes=2, connected=2)

        async def attached() -> KubeObject | None:
            live = await kube.get(DEPLOYMENT, "side-kube-apiserver", namespace)
            assert live is not None
            names = [c["name"] for c in live["spec"]["template"]["spec"]["containers"]]
            return live if APISERVER_CONTAINER in names else None

        live = await aeventually(attached, what="sidecar attached", timeout=20)
        generation = live["metadata"]["generation"]
        await run.wait_settled()
        deployment_writes = run.metric(
            "vpnctl_writes_total", {"kind": "apply", "resource": DEPLOYMENT.label}
        )
        reconciles = run.reconciles_ok()
        # Four resyncs (period 0.5 s): each one lists the labelled Deployments again.
        await run.wait_reconciles(4)
        again = await kube.get(DEPLOYMENT, "side-kube-apiserver", namespace)
        resynced = run.reconciles_ok() - reconciles
        deployment_writes_after = run.metric(
            "vpnctl_writes_total", {"kind": "apply", "resource": DEPLOYMENT.label}
        )

    template = live["spec"]["template"]
    containers = {c["name"]: c for c in template["spec"]["containers"]}
    assert set(containers) == {"kube-apiserver", APISERVER_CONTAINER}
    assert containers["kube-apiserver"]["image"] == "registry.k8s.io/kube-apiserver:v1.34.4"
    assert containers["kube-apiserver"]["args"] == ["--secure-port=6443"]
    sidecar = containers[APISERVER_CONTAINER]
    argv = [*sidecar.get("command", []), *sidecar.get("args", [])]
    assert argv[argv.index("agent") + 1] == "apiserver", argv
    assert "NET_ADMIN" in sidecar["securityContext"]["capabilities"]["add"]
    assert {v["name"] for v in template["spec"]["volumes"]} >= {
        m["name"] for m in sidecar["volumeMounts"]
    }
    assert template["metadata"]["annotations"][SIDECAR_HASH_ANNOTATION]
    owners = {m["manager"] for m in live["metadata"]["managedFields"]}
    assert {"hosted-control-plane", "vpnctl"} <= owners

    assert again is not None
    assert resynced >= 4, "the resyncs did run"
    assert deployment_writes > 0, "the attachment was counted as a Deployment write"
    assert deployment_writes_after == deployment_writes, "a resync must not write again"
    # generation moves on spec writes only (kube-controller-manager writes status)
    assert again["metadata"]["generation"] == generation, "a resync must not write again"
    unrelated = await kube.get(DEPLOYMENT, "unrelated", namespace)
    assert unrelated is not None
    assert [c["name"] for c in unrelated["spec"]["template"]["spec"]["containers"]] == [
        "kube-apiserver"
    ]
