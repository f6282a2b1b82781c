"""The real ObservationSource: server pods found through the apiserver, their /metrics
scraped over HTTP (a real HealthServer with the server role's own metrics)."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry

from agent.roles.server_metrics import ServerMetrics
from telemetry.health import HealthServer
from vpnctl.controller.interfaces import TenantRef
from vpnctl.controller.observe import ServerMetricsObservations
from vpnctl.kube import POD, Kube
from vpnctl.reconcile.errors import TemporaryError
from vpnctl.testenv.cluster import free_ports

from .kubefix import kube  # noqa: F401

pytestmark = pytest.mark.kube


async def _server_pod(kube: Kube, namespace: str, name: str, *, ip: str | None) -> None:  # noqa: F811
    await kube.create(
        POD,
        {
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"app.kubernetes.io/component": "server", "vpnctl.io/cluster": "obs"},
            },
            "spec": {"containers": [{"name": "openvpn-server", "image": "vpnctl:test"}]},
        },
    )
    if ip is not None:  # what kubelet would report for a running pod
        await kube.apply_status(
            POD,
            {
                "metadata": {"name": name, "namespace": namespace},
                "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
            },
            field_manager="kubelet-stand-in",
        )


async def test_observations_come_from_the_running_server_pods(
    kube: Kube,  # noqa: F811
    namespace: str,
) -> None:
    tenant = TenantRef(namespace, "obs")
    port = free_ports(1)[0]
    registry = CollectorRegistry()
    metrics = ServerMetrics(registry=registry)
    metrics.node_connected.labels("server", "obs-node-1").set(1)
    metrics.node_connected.labels("server", "obs-node-2").set(0)
    metrics.kubelet_reachable.labels("server", "obs-node-1").set(1)
    connected_at = datetime(2030, 1, 1, 12, 0, 5, tzinfo=UTC)
    metrics.node_connected_since.labels("server", "obs-node-1").set(connected_at.timestamp())
    metrics.node_rtt.labels("server", "obs-node-1").set(0.0031)
    source = ServerMetricsObservations(kube=kube, health_port=port, timeout=2.0)
    async with contextlib.aclosing(source):
        with pytest.raises(TemporaryError) as none_running:
            await source.observe(tenant)
        assert none_running.value.reason == "ServerNotRunning"

        await _server_pod(kube, namespace, "obs-server-a", ip="127.0.0.1")
        await _server_pod(kube, namespace, "obs-server-b", ip=None)  # still pending
        with pytest.raises(TemporaryError) as refused:
            await source.observe(tenant)  # nothing listens there yet
        assert refused.value.reason == "ServerNotAnswering"
        assert f"metrics port {port}" in refused.value.message

        async with HealthServer(registry=registry, host="127.0.0.1", port=port):
            seen = await source.observe(tenant)
    assert seen["obs-node-1"].connected
    assert seen["obs-node-1"].kubelet_reachable is True
    assert seen["obs-node-1"].connected_since == connected_at
    assert seen["obs-node-1"].rtt_seconds == 0.0031
    assert not seen["obs-node-2"].connected
