"""The controller's Prometheus metrics, on a registry passed in (no global REGISTRY).

Plain counters and histograms for what happens (reconciles, their errors and duration,
work-queue retries and waits), and collectors that are computed at scrape time for what
*is* (leadership, queue depth, tenants by condition, when each certificate expires): a
gauge set during a reconcile would go stale between reconciles. Watch restarts are counted
by ``vpnctl.kube.WatchMetrics`` on the same registry; tenant-side repairs, CSRs and budget
trips by the tenant side (``controller/tenant_side.py``) on the same registry too.

Expiry is a Unix timestamp (``..._expiry_timestamp_seconds``), as in the agent: an alert
computes ``... - time()``, and the series does not change between scrapes.

The tenant's namespace is the label ``tenant_namespace``, never ``namespace``: a
Prometheus that scrapes us sets ``namespace`` to the controller pod's own namespace (the
Prometheus operator enforces it), and the two must not collide.

No label carries anything secret: tenant namespace, cluster name, certificate role,
condition.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from telemetry.standard_metrics import register_standard
from vpnctl.controller.interfaces import TenantRef
from vpnctl.kube import WatchMetrics

# Reconciles of a healthy tenant take tens of milliseconds; a tenant whose apiserver is
# unreachable can take the tenant-side timeout.
RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A due key waits for a free worker: nothing while the controller keeps up, seconds when
# every worker is busy with slow tenants.
QUEUE_WAIT_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)
CONDITION_STATUSES = ("True", "False", "Unknown")
TENANT_LABEL = "tenant_namespace"


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
    """Every metric of the controller (and the process's own). Create one per registry."""

    def __init__(self, *, registry: CollectorRegistry) -> None:
        register_standard(registry, component="controller")
        self.watch = WatchMetrics(registry)
        self.reconciles = Counter(
            "vpnctl_reconciles",
            "Tenant reconciles, by result (ok; retry: waiting for something, backed off; "
            "invalid: bad input reported as a condition; paused: the Cluster is paused, "
            "nothing written; error: failed, backed off).",
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
        self.queue_retries = Counter(
            "vpnctl_workqueue_retries",
            "Tenant keys put back on the work queue with a backoff after a failed or "
            "unfinished reconcile.",
            registry=registry,
        )
        self.queue_wait = Histogram(
            "vpnctl_workqueue_wait_seconds",
            "Time a tenant key waited, once due, for a worker to take it.",
            buckets=QUEUE_WAIT_BUCKETS,
            registry=registry,
        )
        self._queue_depth: Callable[[], int] = lambda: 0
        self._queue_scheduled: Callable[[], int] = lambda: 0
        self._conditions: dict[TenantRef, dict[str, str]] = {}
        self._expiry: dict[tuple[TenantRef, str], datetime] = {}
        self._is_leader: Callable[[], bool] = lambda: False
        self._image_rollout: Mapping[str, int] = {}
        registry.register(_ScrapeTime(self._collect_leader))
        registry.register(_ScrapeTime(self._collect_queue))
        registry.register(_ScrapeTime(self._collect_conditions))
        registry.register(_ScrapeTime(self._collect_expiry))
        registry.register(_ScrapeTime(self._collect_image_rollout))

    # --- wiring ----------------------------------------------------------------------------

    def watch_queue(self, *, depth: Callable[[], int], scheduled: Callable[[], int]) -> None:
        """Where the queue gauges come from (the operator's WorkQueue)."""
        self._queue_depth = depth
        self._queue_scheduled = scheduled

    def watch_leader(self, is_leader: Callable[[], bool]) -> None:
        """Where ``vpnctl_leader`` comes from (the operator's leadership term)."""
        self._is_leader = is_leader

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

    def set_image_rollout(self, counts: Mapping[str, int]) -> None:
        """Tenants by their state in the rollout of the default agent image, as last
        planned (``controller/tenant_image.py``)."""
        self._image_rollout = dict(counts)

    def forget_all(self) -> None:
        self._conditions.clear()
        self._expiry.clear()
        self._image_rollout = {}

    # --- scrape time -----------------------------------------------------------------------

    def _collect_leader(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "vpnctl_leader",
            "1 on the replica that holds the leader lease and reconciles, 0 on a standby.",
            value=1 if self._is_leader() else 0,
        )

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
            "vpnctl_certificate_expiry_timestamp_seconds",
            "When a tenant's certificate (ca, server, apiserver) expires, or its CRL (crl) "
            "reaches its nextUpdate, as a Unix timestamp.",
            labels=[TENANT_LABEL, "cluster", "certificate"],
        )
        for (tenant, certificate), not_after in sorted(
            self._expiry.items(), key=lambda kv: (kv[0][0].namespace, kv[0][0].cluster, kv[0][1])
        ):
            family.add_metric(
                [tenant.namespace, tenant.cluster, certificate], not_after.timestamp()
            )
        yield family

    def _collect_image_rollout(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "vpnctl_image_rollout_tenants",
            "Tenants by state in the rollout of the controller's --agent-image (pinned: "
            "spec.agent.image; current: runs it; rolling: moved to it, not Ready with it "
            "yet; halted: not Ready with it within --image-rollout-deadline, which stops "
            "the rollout; waiting: keeps its older image for now).",
            labels=["state"],
        )
        for state, count in sorted(self._image_rollout.items()):
            family.add_metric([state], count)
        yield family
