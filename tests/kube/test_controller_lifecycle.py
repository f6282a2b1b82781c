"""Following CAPI's lifecycle: election, revocation, renewal, deletion (real apiserver)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from datetime import UTC, datetime, timedelta

import pytest

import certs
from tests.support.capi import create_tenant
from tests.support.polling import aeventually
from vpnctl.controller.interfaces import TenantRef
from vpnctl.kube import CLUSTER, CONFIG_MAP, POD, SECRET, TUNNEL, Kube, KubeObject
from vpnctl.reconcile.settings import Settings

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
from .kubefix import kube  # noqa: F401

pytestmark = pytest.mark.kube


def _desired(config_map: KubeObject | None) -> dict[str, dict[str, object]]:
    assert config_map is not None
    doc = json.loads(config_map["data"]["desired.json"])
    return {c["common_name"]: c for c in doc["clients"]}


async def test_service_route_moves_when_the_holder_disconnects(
    kube: Kube,  # noqa: F811
    namespace: str,
) -> None:
    tenant = TenantRef(namespace, "elect")
    observations = FakeObservations()
    observations.set(tenant, {"elect-node-1": True, "elect-node-2": True, "elect-node-3": True})
    # No grace: this holder's drop is not the kick of its own election (the grace is
    # test_controller_service_route.py's), and the figure is the re-election itself.
    settings = controller_settings(
        namespace,
        observe_interval=0.2,
        build=Settings(agent_image="vpnctl:test", service_route_grace=timedelta(0)),
    )
    async with running_controller(kube, settings, side=FakeTenantSide(), observations=observations):
        await create_tenant(kube, namespace, "elect")
        tunnel = await wait_ready(kube, namespace, "elect", nodes=3, connected=3)
        assert tunnel["status"]["serviceRouteNode"] == "elect-node-1"
        clients = _desired(await kube.get(CONFIG_MAP, "elect-vpn-server", namespace))
        assert "198.19.192.0/20" in clients["elect-node-1"]["iroutes"]  # type: ignore[operator]

        started = time.monotonic()
        observations.set(
            tenant, {"elect-node-1": False, "elect-node-2": True, "elect-node-3": True}
        )

        async def moved() -> KubeObject | None:
            cm = await kube.get(CONFIG_MAP, "elect-vpn-server", namespace)
            clients = _desired(cm)
            return cm if "198.19.192.0/20" in clients["elect-node-2"]["iroutes"] else None  # type: ignore[operator]

        cm = await aeventually(moved, timeout=10, interval=0.05, what="service CIDR on node-2")
        took = time.monotonic() - started
        clients = _desired(cm)
        assert "198.19.192.0/20" not in clients["elect-node-1"]["iroutes"]  # type: ignore[operator]
        tunnel = await wait_ready(kube, namespace, "elect", nodes=3, connected=2)
        assert tunnel["status"]["serviceRouteNode"] == "elect-node-2"
        print(f"\nservice-route re-election took {took:.2f}s (poll interval 0.2s)")

        # The old holder coming back does not take it back (moving costs a reconnect).
        observations.set(tenant, {"elect-node-1": True, "elect-node-2": True, "elect-node-3": True})
        tunnel = await wait_ready(kube, namespace, "elect", nodes=3, connected=3)
        assert tunnel["status"]["serviceRouteNode"] == "elect-node-2"


async def test_machine_deletion_revokes_its_certificates_within_two_seconds(
    kube: Kube,  # noqa: F811
    namespace: str,
) -> None:
    tenant = TenantRef(namespace, "rev")
    nodes = [f"rev-node-{i}" for i in (1, 2, 3)]
    serials = {node: f"5eed{i:04x}" for i, node in enumerate(nodes, start=1)}
    side = FakeTenantSide(signed={tenant: tuple(serials.items())})
    observations = FakeObservations(default=all_connected(nodes))
    async with running_controller(
        kube, controller_settings(namespace), side=side, observations=observations
    ):
        await create_tenant(kube, namespace, "rev")
        tunnel = await wait_ready(kube, namespace, "rev", nodes=3, connected=3)
        # The serials the tenant side signed are the controller's memory of what to revoke.
        recorded = {a["node"]: a.get("serials") for a in tunnel["status"]["allocations"]}
        assert recorded == {node: [serial] for node, serial in serials.items()}
        node2 = _desired(await kube.get(CONFIG_MAP, "rev-vpn-server", namespace))["rev-node-2"]
        assert node2["serial"] == serials["rev-node-2"]
        # ... and what the server admits rev-node-2 with (issue 9): that serial only.
        assert node2["serials"] == [serials["rev-node-2"]]
        # kube-controller-manager has made the server's pods (unscheduled: no kubelet here).
        pods = await aeventually(
            lambda: _server_pods(kube, namespace, "rev"), what="server pods", timeout=20
        )

        revocation = await delete_machine_until_revoked(
            kube,
            namespace,
            cluster="rev",
            machine="rev-md-2",
            serial=serials["rev-node-2"],
            interval=0.02,
        )
        cm, ca_pem, took = revocation.config_map, revocation.ca_pem, revocation.took
        print(f"\nMachine deleted -> serial in the CRL of the server ConfigMap: {took:.3f}s")
        assert took < 2.0
        # The same write removed the node from the server's desired state...
        assert sorted(_desired(cm)) == ["rev-node-1", "rev-node-3"]
        listed = certs.crl_serials(cm["data"]["crl.pem"].encode(), ca_pem=ca_pem)
        assert listed == {int(serials["rev-node-2"], 16)}
        # ...and every server pod was nudged so kubelet refreshes the volume now.
        version = cm["metadata"]["annotations"]["vpnctl.io/desired-hash"]

        async def nudged() -> bool:
            pods = await _server_pods(kube, namespace, "rev")
            return bool(pods) and all(
                (p["metadata"].get("annotations") or {}).get("vpnctl.io/server-config") == version
                for p in pods
            )

        await aeventually(nudged, timeout=5, what="server pods annotated")
        assert len(pods) >= 1
        tunnel = await wait_ready(kube, namespace, "rev", nodes=2)
        assert sorted(a["node"] for a in tunnel["status"]["allocations"]) == [
            "rev-node-1", "rev-node-3",
        ]  # fmt: skip
        assert tunnel["status"]["releasedTunnelIPs"] == ["100.127.255.4"]


async def _server_pods(kube: Kube, namespace: str, cluster: str) -> list[KubeObject]:  # noqa: F811
    pods, _ = await kube.list(
        POD,
        namespace,
        label_selector=f"app.kubernetes.io/component=server,vpnctl.io/cluster={cluster}",
    )
    return pods


def _cert(secret: KubeObject | None) -> bytes:
    assert secret is not None
    return base64.b64decode(secret["data"]["tls.crt"])


async def test_certificates_near_expiry_are_renewed_with_the_same_ca(
    kube: Kube,  # noqa: F811
    namespace: str,
) -> None:
    observations = FakeObservations(default=all_connected(["renew-node-1"]))
    async with running_controller(
        kube, controller_settings(namespace), side=FakeTenantSide(), observations=observations
    ):
        await create_tenant(kube, namespace, "renew", nodes=1)
        await wait_ready(kube, namespace, "renew", nodes=1)
        ca_secret = await kube.get(SECRET, "renew-vpn-ca", namespace)
        assert ca_secret is not None
        ca = certs.Issued(
            cert_pem=base64.b64decode(ca_secret["data"]["tls.crt"]),
            key_pem=base64.b64decode(ca_secret["data"]["tls.key"]),
        )
        # A certificate whose renewal time (0.66 of its lifetime, which starts 5 minutes
        # back) is 3 s away, as if it had been issued long ago.
        now = datetime.now(UTC)
        lifetime = (timedelta(seconds=3) + certs.CLOCK_SKEW * (1 - 0.66)) / 0.66
        short = certs.new_client_cert(
            ca, common_name="vpnctl-apiserver", now=now, lifetime=lifetime
        )
        renew_at = certs.renew_at(short.cert_pem, renew_fraction=0.66)
        assert timedelta(seconds=2) < renew_at - now < timedelta(seconds=4)
        await kube.patch_merge(
            SECRET,
            "renew-vpn-apiserver-tls",
            {"data": {"tls.crt": base64.b64encode(short.cert_pem).decode(),
                      "tls.key": base64.b64encode(short.key_pem).decode()}},
            namespace=namespace,
        )  # fmt: skip
        # A window on purpose: the patch's watch event is reconciled within it, and a
        # certificate that is valid and not due yet must come out of that untouched.
        await asyncio.sleep(1.0)
        # Valid and not due yet: kept as it is.
        kept = await kube.get(SECRET, "renew-vpn-apiserver-tls", namespace)
        assert _cert(kept) == short.cert_pem

        async def renewed() -> KubeObject | None:
            secret = await kube.get(SECRET, "renew-vpn-apiserver-tls", namespace)
            return secret if _cert(secret) != short.cert_pem else None

        secret = await aeventually(renewed, timeout=10, interval=0.1, what="renewal")
        renewed_at = datetime.now(UTC)
        print(f"\nrenewal due at {renew_at:%H:%M:%S.%f}, renewed by {renewed_at:%H:%M:%S.%f}")
        assert renewed_at >= renew_at
        new_cert = _cert(secret)
        info = certs.validate(
            new_cert,
            key_pem=base64.b64decode(secret["data"]["tls.key"]),
            ca_pem=ca.cert_pem,
            now=renewed_at,
            usage="client",
        )
        assert info.common_name == "vpnctl-apiserver"
        assert not certs.renewal_due(new_cert, now=renewed_at, renew_fraction=0.66)
        # The same CA: nothing else changes, no node needs new credentials.
        again = await kube.get(SECRET, "renew-vpn-ca", namespace)
        assert again is not None
        assert again["metadata"]["resourceVersion"] == ca_secret["metadata"]["resourceVersion"]

        # The server's desired state names the new apiserver serial (kick-on-revoke ready).
        async def serial_updated() -> bool:
            cm = await kube.get(CONFIG_MAP, "renew-vpn-server", namespace)
            assert cm is not None
            doc = json.loads(cm["data"]["desired.json"])
            return bool(doc["apiserver"]["serial"] == format(info.serial, "x"))

        await aeventually(serial_updated, timeout=5, what="apiserver serial in desired.json")


@pytest.mark.usefixtures("gc_knows_tunnels")
async def test_cluster_deletion_removes_everything_through_the_finalizer(
    kube: Kube,  # noqa: F811
    namespace: str,
) -> None:
    tenant = TenantRef(namespace, "gone")
    side = FakeTenantSide(cleanup_answers=False)
    observations = FakeObservations(default=all_connected(["gone-node-1", "gone-node-2"]))
    async with running_controller(
        kube, controller_settings(namespace), side=side, observations=observations
    ):
        await create_tenant(kube, namespace, "gone", nodes=2)
        await wait_ready(kube, namespace, "gone", nodes=2)
        ours = await _ours(kube, namespace, "gone")
        assert len(ours) == 9  # 4 Secrets, 3 ConfigMaps, a Deployment, a Service

        await kube.delete(CLUSTER, "gone", namespace)
        # The Tunnel waits for the tenant side (the fake's cluster is "still cleaning")...
        await aeventually(lambda: len(side.cleaned) >= 2, what="cleanup retried", timeout=15)
        waiting = await kube.get(TUNNEL, "gone", namespace)
        assert waiting is not None
        assert waiting["metadata"].get("deletionTimestamp")
        assert waiting["metadata"]["finalizers"] == ["vpnctl.io/cleanup"]
        # ...and once the tenant cluster is clean, everything goes.
        side.cleanup_answers = True

        async def all_gone() -> bool:
            return await kube.get(TUNNEL, "gone", namespace) is None and not await _ours(
                kube, namespace, "gone"
            )

        await aeventually(all_gone, timeout=30, interval=0.2, what="everything deleted")
    assert all(t == tenant for t, _ in side.cleaned)
    assert side.cleaned[-1] == (tenant, True)  # with the kubeconfig it still had
    assert tenant in side.forgotten


async def _ours(kube: Kube, namespace: str, cluster: str) -> list[str]:  # noqa: F811
    from vpnctl.kube import DEPLOYMENT, SERVICE

    out = []
    for res in (SECRET, CONFIG_MAP, DEPLOYMENT, SERVICE):
        items, _ = await kube.list(res, namespace, label_selector=f"vpnctl.io/cluster={cluster}")
        out += [f"{res.plural}/{o['metadata']['name']}" for o in items]
    return out
