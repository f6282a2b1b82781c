"""Several hosted apiserver replicas, each with its own tunnel identity and address,
against the real apiserver and kube-controller-manager (which makes and deletes the
Deployment's pods; nothing schedules or runs them here, nor needs to).

Scaling the labelled apiserver Deployment is all a person does: the controller gives each
pod a slot (annotation), each slot beyond 0 a certificate in its own Secret, and the
server's desired.json one apiserver client per pod; scaling down unlists the gone pods'.
"""

from __future__ import annotations

import base64
import json
from ipaddress import IPv4Network
from typing import Any

import pytest

import certs
from agent.desired_state import DesiredState, parse_desired
from tests.support.capi import create_tenant
from tests.support.polling import aeventually
from vpnctl.kube import CONFIG_MAP, DEPLOYMENT, POD, SECRET, Kube
from vpnctl.reconcile.apiserver_slots import SLOT_ANNOTATION, parse_slot, slot_common_name
from vpnctl.reconcile.names import TenantNames
from vpnctl.reconcile.service_objects import (
    SLOT_HOLDER_ANNOTATION,
)
from vpnctl.reconcile.sidecar_objects import (
    ATTACH_SIDECAR_LABEL,
)
from vpnctl.reconcile.tunnel_spec import DEFAULT_TUNNEL_CIDR

from .controllerfix import (
    FakeObservations,
    FakeTenantSide,
    all_connected,
    controller_settings,
    running_controller,
    tunnel,
    wait_ready,
)
from .kubefix import kube  # noqa: F401

pytestmark = pytest.mark.kube

CLUSTER = "reps"
APP = {"app": f"{CLUSTER}-apiserver"}


def _deployment(namespace: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": f"{CLUSTER}-kube-apiserver",
            "namespace": namespace,
            "labels": {ATTACH_SIDECAR_LABEL: CLUSTER, **APP},
        },
        "spec": {
            "replicas": replicas,
            # The sidecar's attachment changes the template once; Recreate keeps the
            # count of pods at `replicas` while that rolls (nothing here becomes ready).
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": APP},
            "template": {
                "metadata": {"labels": APP},
                "spec": {
                    "containers": [
                        {
                            "name": "kube-apiserver",
                            "image": "registry.k8s.io/kube-apiserver:v1.34.4",
                        }
                    ],
                },
            },
        },
    }


async def _pods(api: Kube, namespace: str) -> dict[str, dict[str, Any]]:
    """The apiserver pods that are not being deleted, by name."""
    selector = ",".join(f"{k}={v}" for k, v in APP.items())
    pods, _ = await api.list(POD, namespace, label_selector=selector)
    return {p["metadata"]["name"]: p for p in pods if not p["metadata"].get("deletionTimestamp")}


async def _desired(api: Kube, namespace: str) -> DesiredState:
    cm = await api.get(CONFIG_MAP, TenantNames.for_cluster(CLUSTER).server_config, namespace)
    assert cm is not None
    doc = json.loads(cm["data"]["desired.json"])
    live = await tunnel(api, namespace, CLUSTER)
    assert live is not None
    cidr = IPv4Network(live["spec"].get("tunnelCIDR") or DEFAULT_TUNNEL_CIDR)
    # The agent's own loader: what the server would admit.
    return parse_desired(doc, path="desired.json", tunnel_cidr=cidr)


async def _one_client_per_pod(api: Kube, namespace: str, count: int) -> DesiredState | None:
    """The desired state once it has COUNT apiserver clients, one per live pod's slot,
    each slot beyond 0 admitting the certificate issued for the pod that holds it now
    (while the sidecar's attachment rolls the pods, slots pass to new pods)."""
    pods = await _pods(api, namespace)
    slots = {parse_slot(p["metadata"].get("annotations")) for p in pods.values()}
    if len(pods) != count or None in slots or len(slots) != count:
        return None
    state = await _desired(api, namespace)
    names = {slot_common_name(s) for s in slots if s is not None}
    if {a.common_name for a in state.apiservers} != names:
        return None
    for pod in pods.values():
        index = parse_slot(pod["metadata"]["annotations"])
        if not index:
            continue
        secret = await _slot_secret(api, namespace, index)
        entry = state.entry(slot_common_name(index))
        holder = (secret["metadata"].get("annotations") or {}).get(SLOT_HOLDER_ANNOTATION)
        if holder != pod["metadata"]["uid"] or entry is None:
            return None
        if _serial(secret) not in entry.allowed_serials:
            return None
    return state


async def _slot_secret(api: Kube, namespace: str, index: int) -> dict[str, Any]:
    name = TenantNames.for_cluster(CLUSTER).apiserver_slot_secret(index)
    secret = await api.get(SECRET, name, namespace)
    assert secret is not None, f"no Secret {name} for a held slot"
    return secret


def _serial(secret: dict[str, Any]) -> int:
    return certs.cert_info(base64.b64decode(secret["data"]["tls.crt"])).serial


async def test_each_apiserver_replica_gets_its_own_identity_and_scaling_down_unlists_them(
    kube: Kube,  # noqa: F811
    namespace: str,
) -> None:
    nodes = [f"{CLUSTER}-node-{i}" for i in (1, 2)]
    await kube.apply(DEPLOYMENT, _deployment(namespace, 3), field_manager="hosted-control-plane")
    settings = controller_settings(namespace)
    async with running_controller(
        kube, settings, side=FakeTenantSide(),
        observations=FakeObservations(default=all_connected(nodes)),
    ):  # fmt: skip
        await create_tenant(kube, namespace, CLUSTER, nodes=2)
        await wait_ready(kube, namespace, CLUSTER, nodes=2, connected=2)

        three = await aeventually(
            lambda: _one_client_per_pod(kube, namespace, 3),
            what="three apiserver clients, one per pod", timeout=60,
        )  # fmt: skip
        apis = three.apiservers
        assert len({a.common_name for a in apis}) == 3
        assert len({a.ifconfig_ip for a in apis}) == 3
        assert all(a.allowed_serials for a in apis), "each is pinned to a serial"
        assert len({s for a in apis for s in a.allowed_serials}) == len(
            [s for a in apis for s in a.allowed_serials]
        ), "no two replicas share a certificate"
        # Each further slot's certificate is its own, issued for the pod holding it
        # (which _one_client_per_pod waited for), under the slot's own name.
        for pod in (await _pods(kube, namespace)).values():
            index = parse_slot(pod["metadata"]["annotations"])
            if index:
                secret = await _slot_secret(kube, namespace, index)
                info = certs.cert_info(base64.b64decode(secret["data"]["tls.crt"]))
                assert info.common_name == slot_common_name(index)

        # Scale to one: the two gone pods' clients leave the desired state.
        await kube.apply(
            DEPLOYMENT, _deployment(namespace, 1), field_manager="hosted-control-plane"
        )
        one = await aeventually(
            lambda: _one_client_per_pod(kube, namespace, 1),
            what="one apiserver client left", timeout=60,
        )  # fmt: skip
        (survivor,) = (await _pods(kube, namespace)).values()
        kept = parse_slot(survivor["metadata"]["annotations"])
        assert [a.common_name for a in one.apiservers] == [slot_common_name(kept or 0)]
        gone = {a.common_name for a in apis} - {a.common_name for a in one.apiservers}
        assert len(gone) == 2
        # Their serials are no longer admitted by anyone.
        admitted = one.serial_to_cn()
        assert not [s for a in apis if a.common_name in gone for s in a.allowed_serials
                    if s in admitted]  # fmt: skip
        assert survivor["metadata"]["annotations"][SLOT_ANNOTATION] == str(kept)
