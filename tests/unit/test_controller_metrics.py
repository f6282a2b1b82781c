"""The controller's metrics: on the registry passed in, computed at scrape time."""

from __future__ import annotations

import datetime as dt

from prometheus_client import CollectorRegistry, generate_latest

from vpnctl.controller.interfaces import TenantRef
from vpnctl.controller.metrics import ControllerMetrics
from vpnctl.kube import ManualClock

A = TenantRef("ns-a", "a")
B = TenantRef("ns-b", "b")


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_certificate_expiry_counts_down_by_itself() -> None:
    clock = ManualClock()
    registry = CollectorRegistry()
    metrics = ControllerMetrics(registry=registry, clock=clock)
    metrics.set_expiry(A, "server", clock.now() + dt.timedelta(hours=1))
    name = "vpnctl_certificate_expiry_seconds"
    labels = {"namespace": "ns-a", "cluster": "a", "certificate": "server"}
    assert sample(registry, name, **labels) == 3600.0
    clock.advance(600)
    assert sample(registry, name, **labels) == 3000.0
    metrics.forget(A)
    assert sample(registry, name, **labels) is None


def test_tenants_by_condition_and_repairs_per_tenant() -> None:
    registry = CollectorRegistry()
    metrics = ControllerMetrics(registry=registry, clock=ManualClock())
    repairs = {A: 3, B: 0}
    metrics.watch_repairs(lambda t: repairs[t])
    metrics.set_conditions(A, {"Ready": "True", "PKIReady": "True"})
    metrics.set_conditions(B, {"Ready": "False", "PKIReady": "True"})
    assert sample(registry, "vpnctl_tenants", condition="Ready", status="True") == 1
    assert sample(registry, "vpnctl_tenants", condition="Ready", status="False") == 1
    assert sample(registry, "vpnctl_tenants", condition="Ready", status="Unknown") == 0
    assert sample(registry, "vpnctl_tenants", condition="PKIReady", status="True") == 2
    assert sample(registry, "vpnctl_tenant_side_repairs_total", namespace="ns-a", cluster="a") == 3
    metrics.forget_all()
    assert sample(registry, "vpnctl_tenants", condition="Ready", status="True") is None


def test_queue_gauges_come_from_the_queue_and_two_registries_never_mix() -> None:
    one, two = CollectorRegistry(), CollectorRegistry()
    first = ControllerMetrics(registry=one, clock=ManualClock())
    ControllerMetrics(registry=two, clock=ManualClock())
    first.watch_queue(depth=lambda: 4, scheduled=lambda: 9)
    first.reconciles.labels(result="ok").inc()
    assert sample(one, "vpnctl_queue_depth") == 4
    assert sample(one, "vpnctl_queue_scheduled") == 9
    assert sample(two, "vpnctl_queue_depth") == 0
    assert sample(one, "vpnctl_reconciles_total", result="ok") == 1
    assert sample(two, "vpnctl_reconciles_total", result="ok") is None
    text = generate_latest(one).decode()
    assert "vpnctl_watch_restarts" in text or "vpnctl_reconcile_duration_seconds" in text
