"""Observations from the server role's own /metrics (the real exposition format)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, generate_latest

from agent.roles.server_metrics import ServerMetrics
from vpnctl.controller.observe import merge_observations, parse_server_metrics
from vpnctl.reconcile.status import NodeObservation

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def server_metrics_text(
    connected: dict[str, bool],
    kubelet: dict[str, bool],
    *,
    since: dict[str, datetime] | None = None,
    rtt: dict[str, float] | None = None,
) -> str:
    """What a server role with these per-node values exposes, through its own metrics
    class and the real exposition."""
    registry = CollectorRegistry()
    metrics = ServerMetrics(registry=registry)
    for node, up in connected.items():
        metrics.node_connected.labels("server", node).set(1 if up else 0)
    for node, ok in kubelet.items():
        metrics.kubelet_reachable.labels("server", node).set(1 if ok else 0)
    for node, when in (since or {}).items():
        metrics.node_connected_since.labels("server", node).set(when.timestamp())
    for node, seconds in (rtt or {}).items():
        metrics.node_rtt.labels("server", node).set(seconds)
        metrics.kubelet_probe.labels("server", node).observe(seconds)
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


def test_connect_time_and_rtt_come_with_a_connected_node() -> None:
    text = server_metrics_text(
        {"node-1": True, "node-2": True, "node-3": False},
        {"node-1": True, "node-2": False, "node-3": False},
        since={"node-1": T0, "node-2": T0 + timedelta(seconds=7), "node-3": T0},
        rtt={"node-1": 0.0042, "node-3": 0.5},
    )
    seen = parse_server_metrics(text)
    assert seen["node-1"] == NodeObservation(
        node="node-1", connected=True, connected_since=T0, rtt_seconds=0.0042,
        kubelet_reachable=True,
    )  # fmt: skip
    # Connected, its kubelet does not answer: a connect time and no RTT.
    assert seen["node-2"].connected_since == T0 + timedelta(seconds=7)
    assert seen["node-2"].rtt_seconds is None
    # Values left behind for a node the server calls disconnected are not believed.
    assert seen["node-3"] == NodeObservation(
        node="node-3", connected=False, kubelet_reachable=False
    )


def test_replicas_merged_connect_time_and_rtt_come_from_the_newest_connection() -> None:
    """node-1 moved from replica a to b; a still lists its old session until it times
    out (its probe through the dead tunnel already failed). node-2 is on a only."""
    a = parse_server_metrics(
        server_metrics_text(
            {"node-1": True, "node-2": True}, {"node-1": False, "node-2": True},
            since={"node-1": T0, "node-2": T0}, rtt={"node-2": 0.003},
        )
    )  # fmt: skip
    b = parse_server_metrics(
        server_metrics_text(
            {"node-1": True, "node-2": False}, {"node-1": True},
            since={"node-1": T0 + timedelta(minutes=1)}, rtt={"node-1": 0.012},
        )
    )  # fmt: skip
    for views in ([a, b], [b, a]):
        merged = merge_observations(views)
        assert merged["node-1"] == NodeObservation(
            node="node-1", connected=True, connected_since=T0 + timedelta(minutes=1),
            rtt_seconds=0.012, kubelet_reachable=True,
        )  # fmt: skip
        assert merged["node-2"] == NodeObservation(
            node="node-2", connected=True, connected_since=T0, rtt_seconds=0.003,
            kubelet_reachable=True,
        )  # fmt: skip
