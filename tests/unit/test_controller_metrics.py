"""The controller's metrics: on the registry passed in, computed at scrape time."""

from __future__ import annotations

import datetime as dt

from prometheus_client import CollectorRegistry, generate_latest

from vpnctl.controller.interfaces import TenantRef
from vpnctl.controller.metrics import ControllerMetrics

A = TenantRef("ns-a", "a")
B = TenantRef("ns-b", "b")


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_certificate_expiry_is_a_unix_timestamp_labelled_with_the_tenant_namespace() -> None:
    registry = CollectorRegistry()
    metrics = ControllerMetrics(registry=registry)
    not_after = dt.datetime(2031, 5, 1, 12, 0, tzinfo=dt.UTC)
    metrics.set_expiry(A, "server", not_after)
    name = "vpnctl_certificate_expiry_timestamp_seconds"
    labels = {"tenant_namespace": "ns-a", "cluster": "a", "certificate": "server"}
    assert sample(registry, name, **labels) == not_after.timestamp()
    metrics.forget(A)
    assert sample(registry, name, **labels) is None


def test_leader_gauge_follows_the_term_and_standard_collectors_are_there() -> None:
    registry = CollectorRegistry()
    metrics = ControllerMetrics(registry=registry)
    assert sample(registry, "vpnctl_leader") == 0
    leading = [True]
    metrics.watch_leader(lambda: leading[0])
    assert sample(registry, "vpnctl_leader") == 1
    leading[0] = False
    assert sample(registry, "vpnctl_leader") == 0
    assert (sample(registry, "process_resident_memory_bytes") or 0) > 0
    text = generate_latest(registry).decode()
    assert 'vpnctl_build_info{component="controller",version="' in text
    assert "python_gc_collections_total" in text


def test_tenants_by_condition() -> None:
    registry = CollectorRegistry()
    metrics = ControllerMetrics(registry=registry)
    metrics.set_conditions(A, {"Ready": "True", "PKIReady": "True"})
    metrics.set_conditions(B, {"Ready": "False", "PKIReady": "True"})
    assert sample(registry, "vpnctl_tenants", condition="Ready", status="True") == 1
    assert sample(registry, "vpnctl_tenants", condition="Ready", status="False") == 1
    assert sample(registry, "vpnctl_tenants", condition="Ready", status="Unknown") == 0
    assert sample(registry, "vpnctl_tenants", condition="PKIReady", status="True") == 2
    metrics.forget_all()
    assert sample(registry, "vpnctl_tenants", condition="Ready", status="True") is None


def test_queue_gauges_come_from_the_queue_and_two_registries_never_mix() -> None:
    one, two = CollectorRegistry(), CollectorRegistry()
    first = ControllerMetrics(registry=one)
    ControllerMetrics(registry=two)
    first.watch_queue(depth=lambda: 4, scheduled=lambda: 9)
    first.reconciles.labels(result="ok").inc()
    assert sample(one, "vpnctl_queue_depth") == 4
    assert sample(one, "vpnctl_queue_scheduled") == 9
    assert sample(two, "vpnctl_queue_depth") == 0
    assert sample(one, "vpnctl_reconciles_total", result="ok") == 1
    assert sample(two, "vpnctl_reconciles_total", result="ok") is None
    text = generate_latest(one).decode()
    assert "vpnctl_watch_restarts" in text or "vpnctl_reconcile_duration_seconds" in text
