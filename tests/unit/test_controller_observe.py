"""Observations from the server role's own /metrics (the real exposition format)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from agent.roles.server_metrics import ServerMetrics
from vpnctl.controller.observe import merge_observations, parse_server_metrics
from vpnctl.reconcile.status import NodeObservation


def server_metrics_text(connected: dict[str, bool], kubelet: dict[str, bool]) -> str:
    registry = CollectorRegistry()
    metrics = ServerMetrics(registry=registry)
    for node, up in connected.items():
        metrics.node_connected.labels("server", node).set(1 if up else 0)
    for node, ok in kubelet.items():
        metrics.kubelet_reachable.labels("server", node).set(1 if ok else 0)
    metrics.apiserver_connected.labels("server").set(1)
    return generate_latest(registry).decode()


def test_the_server_roles_metrics_become_node_observations() -> None:
    text = server_metrics_text(
        {"node-1": True, "node-2": False, "node-3": True}, {"node-1": True, "node-3": False}
    )
    seen = parse_server_metrics(text)
    assert seen == {
        "node-1": NodeObservation(node="node-1", connected=True, kubelet_reachable=True),
        "node-2": NodeObservation(node="node-2", connected=False, kubelet_reachable=None),
        "node-3": NodeObservation(node="node-3", connected=True, kubelet_reachable=False),
    }


def test_nothing_reported_is_nothing_observed() -> None:
    assert parse_server_metrics(server_metrics_text({}, {})) == {}
    assert parse_server_metrics("") == {}


def test_replicas_are_merged_a_node_connected_anywhere_is_connected() -> None:
    a = parse_server_metrics(server_metrics_text({"n1": True, "n2": False}, {"n1": False}))
    b = parse_server_metrics(server_metrics_text({"n1": False, "n2": True}, {"n1": True}))
    merged = merge_observations([a, b])
    assert merged["n1"].connected
    assert merged["n1"].kubelet_reachable is True
    assert merged["n2"].connected
    assert merged["n2"].kubelet_reachable is None
