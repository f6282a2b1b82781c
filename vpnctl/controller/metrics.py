"""The controller's Prometheus metrics, on a registry passed in (no global REGISTRY).

Plain counters and histograms for what happens (reconciles, their errors and duration),
and collectors that are computed at scrape time for what *is* (queue depth, tenants by
condition, seconds until each certificate expires, tenant-side repairs): a gauge set
during a reconcile would go stale between reconciles, and "seconds until expiry" must
count down on its own. Watch restarts are counted by ``vpnctl.kube.WatchMetrics`` on the
same registry.

No label carries anything secret: namespace, cluster name, certificate role, condition.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vpnctl.controller.interfaces import TenantRef
from vpnctl.kube import Clock, WatchMetrics

# Reconciles of a healthy tenant take tens of milliseconds; a tenant whose apiserver is
# unreachable can take the tenant-side timeout.
RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CONDITION_STATUSES = ("True", "False", "Unknown")


class _ScrapeTime(Collector):
    """A collector whose samples come from a function called at scrape time."""

    def __init__(self, produce: Callable[[], Iterable[Metric]]) -> None:
        self._produce = produce

    def collect(self) -> Iterable[Metric]:
        return list(self._produce())

    def describe(self) -> Iterable[Metric]:
        # Known up front would be nicer, but an empty describe() keeps the registry from
        # calling collect() at registration, before there is anything to collect.
        return []


class ControllerMetrics:
    """Every metric of the controller. Create one per registry."""

    def __init__(self, *, registry: CollectorRegistry, clock: Clock) -> None:
        self._clock = clock
        self.watch = WatchMetrics(registry)
        self.reconciles = Counter(
            "vpnctl_reconciles",
            "Tenant reconciles, by result (ok; retry: waiting for something, backed off; "
            "invalid: bad input reported as a condition; error: failed, backed off).",
            ["result"],
            registry=registry,
        )
        self.reconcile_errors = Counter(
            "vpnctl_reconcile_errors",
            "Reconciles that failed or reported a problem, by condition reason.",
            ["reason"],
            registry=registry,
        )
        self.reconcile_duration = Histogram(
            "vpnctl_reconcile_duration_seconds",
            "Time one tenant reconcile took.",
            buckets=RECONCILE_BUCKETS,
            registry=registry,
        )
        self.writes = Counter(
            "vpnctl_writes",
            "Writes to the service cluster by kind (apply, status, create, delete, event); "
            "a resync with nothing changed adds none.",
            ["kind", "resource"],
            registry=registry,
        )
        self.service_route_elections = Counter(
            "vpnctl_service_route_elections",
            "Service-route holders elected, by reason (NoHolder, HolderGone, "
            "HolderDisconnected, HolderUnhealthy); each costs the new holder a reconnect.",
            ["reason"],
            registry=registry,
        )
        self._queue_depth: Callable[[], int] = lambda: 0
        self._queue_scheduled: Callable[[], int] = lambda: 0
        self._conditions: dict[TenantRef, dict[str, str]] = {}
        self._expiry: dict[tuple[TenantRef, str], datetime] = {}
        self._repairs: Callable[[TenantRef], int] | None = None
        registry.register(_ScrapeTime(self._collect_queue))
        registry.register(_ScrapeTime(self._collect_conditions))
        registry.register(_ScrapeTime(self._collect_expiry))
        registry.register(_ScrapeTime(self._collect_repairs))

    # --- wiring ----------------------------------------------------------------------------

    def watch_queue(self, *, depth: Callable[[], int], scheduled: Callable[[], int]) -> None:
        """Where the queue gauges come from (the operator's WorkQueue)."""
        self._queue_depth = depth
        self._queue_scheduled = scheduled

    def watch_repairs(self, repairs: Callable[[TenantRef], int]) -> None:
        """Where tenant-side repair counts come from (``TenantSide.repairs``)."""
        self._repairs = repairs

    # --- per tenant ------------------------------------------------------------------------

    def set_conditions(self, tenant: TenantRef, conditions: Mapping[str, str]) -> None:
        """The tenant's condition type -> status, as last written."""
        self._conditions[tenant] = dict(conditions)

    def set_expiry(self, tenant: TenantRef, certificate: str, not_after: datetime) -> None:
        self._expiry[(tenant, certificate)] = not_after

    def forget(self, tenant: TenantRef) -> None:
        """Drop every series of a tenant that is gone (or no longer ours to lead)."""
        self._conditions.pop(tenant, None)
        for key in [k for k in self._expiry if k[0] == tenant]:
            del self._expiry[key]

    def forget_all(self) -> None:
        self._conditions.clear()
        self._expiry.clear()

    # --- scrape time -----------------------------------------------------------------------

    def _collect_queue(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "vpnctl_queue_depth",
            "Tenant keys due now and waiting for a worker.",
            value=self._queue_depth(),
        )
        yield GaugeMetricFamily(
            "vpnctl_queue_scheduled",
            "Tenant keys waiting for a later time (backoff, renewal, resync).",
            value=self._queue_scheduled(),
        )

    def _collect_conditions(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "vpnctl_tenants",
            "Tenants by condition type and status, as last written to their Tunnels.",
            labels=["condition", "status"],
        )
        counts: dict[tuple[str, str], int] = {}
        for conditions in self._conditions.values():
            for type_, status in conditions.items():
                counts[(type_, status)] = counts.get((type_, status), 0) + 1
        types = sorted({t for t, _ in counts})
        for type_ in types:
            for status in CONDITION_STATUSES:
                family.add_metric([type_, status], counts.get((type_, status), 0))
        yield family

    def _collect_expiry(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "vpnctl_certificate_expiry_seconds",
            "Seconds until a tenant's certificate (ca, server, apiserver) or CRL (crl: its "
            "nextUpdate) expires; negative once expired.",
            labels=["namespace", "cluster", "certificate"],
        )
        now = self._clock.now()
        for (tenant, certificate), not_after in sorted(
            self._expiry.items(), key=lambda kv: (kv[0][0].namespace, kv[0][0].cluster, kv[0][1])
        ):
            family.add_metric(
                [tenant.namespace, tenant.cluster, certificate],
                (not_after - now).total_seconds(),
            )
        yield family

    def _collect_repairs(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "vpnctl_tenant_side_repairs",
            "Agent objects in a tenant cluster that were deleted or edited and put back.",
            labels=["namespace", "cluster"],
        )
        if self._repairs is not None:
            for tenant in sorted(self._conditions, key=lambda t: (t.namespace, t.cluster)):
                family.add_metric([tenant.namespace, tenant.cluster], self._repairs(tenant))
        yield family
