"""The controller process: watches feed a per-key queue; only the leader reconciles.

How the parts fit (kopf's model, see STYLE.md):

- ``Watcher``s (vpnctl.kube) on Clusters, Machines, Tunnels, our own objects (label
  ``vpnctl.io/cluster``) and CAPI's kubeconfig Secrets. Their handlers only map an event
  to its tenant key, ``TenantRef(namespace, cluster)``, and add it to the ``WorkQueue``.
- The queue runs ``TenantReconciler.reconcile_tenant`` one key at a time, keys in
  parallel. It starts only once every watch has its first listing: a reconcile that saw
  an empty Machine cache would take every node for deleted and revoke it.
- A resync loop re-adds every known key each ``resync_period`` (level-triggered safety
  net; a resync of an unchanged world writes nothing), and an observation poller asks
  each tenant's server who is connected every ``observe_interval`` and adds the key when
  that changed: the service-route election must follow a node that drops. The tenant
  side adds a tenant's key when a routed Node's podCIDRs change (``follow_nodes``).
- Leader election on a Lease (lease 10 s, renew deadline 7 s, retry 2 s: failover after a
  crash takes at most about 14 s). Watches, queue and loops run only while leading; a
  standby holds no caches and sends no requests but the lease's.
- ``/healthz`` fails when a watch of the leader has been silent for longer than
  ``watch_max_silence`` (a stream that died quietly) or the election loop died; ``/readyz``
  until the leader's caches are synced; ``/metrics`` renders the registry passed in.
- Graceful shutdown (SIGTERM in the CLI, ``stop`` here): stop taking keys, let running
  reconciles finish (up to ``shutdown_grace``), stop the tenant side's watches, then
  hand the lease back so the other replica takes over within a retry period.

A task that dies with an exception is logged and ends ``run()`` with that exception
(the pod restarts); nothing is swallowed.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from telemetry.health import Check, HealthServer
from telemetry.tasks import cancel_and_wait
from vpnctl.api import CAPI_CLUSTER_NAME_LABEL
from vpnctl.controller.interfaces import ObservationSource, TenantRef, TenantSide
from vpnctl.controller.metrics import ControllerMetrics
from vpnctl.controller.queue import Outcome, WorkQueue
from vpnctl.controller.tenant_reconciler import TenantReconciler
from vpnctl.controller.tenant_settings import TenantSettings
from vpnctl.controller.tenant_status import observation_fingerprint
from vpnctl.kube import (
    CLUSTER,
    CONFIG_MAP,
    DEPLOYMENT,
    MACHINE,
    SECRET,
    SERVICE,
    TUNNEL,
    Clock,
    Kube,
    KubeObject,
    LeaderElector,
    Resource,
    Watcher,
    WatchSource,
)
from vpnctl.reconcile.names import CLUSTER_LABEL
from vpnctl.reconcile.sidecar_objects import (
    ATTACH_SIDECAR_LABEL,
)

_log = logging.getLogger(__name__)

KUBECONFIG_SUFFIX = "-kubeconfig"


@dataclass(frozen=True, kw_only=True)
class ControllerSettings:
    tenant: TenantSettings
    # Identity in the Lease and in Events: the pod name.
    identity: str
    # Watch one namespace, or all (None).
    namespace: str | None = None
    leader_elect: bool = True
    lease_namespace: str = "vpnctl-system"
    lease_name: str = "vpnctl-controller"
    lease_duration: float = 10.0
    renew_deadline: float = 7.0
    retry_period: float = 2.0
    # False only in tests that simulate a crash: the lease then has to expire.
    release_lease_on_shutdown: bool = True
    resync_period: float = 300.0
    observe_interval: float = 5.0
    observe_concurrency: int = 16
    workers: int = 8
    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    health_host: str = "0.0.0.0"
    health_port: int = 8081
    # /metrics on a port of its own (the chart's http-metrics); None: on the health port.
    metrics_host: str | None = None
    metrics_port: int | None = None
    watch_timeout_seconds: int = 120
    # A watch silent for longer than this fails /healthz; None: twice the watch timeout
    # plus 30 s (the server ends every stream after watch_timeout_seconds, a sign of life).
    watch_max_silence: float | None = None
    shutdown_grace: float = 10.0
    # Extra liveness checks, e.g. the tenant side's own health.
    extra_liveness: Mapping[str, Check] = field(default_factory=dict)

    @property
    def max_silence(self) -> float:
        if self.watch_max_silence is not None:
            return self.watch_max_silence
        return 2.0 * self.watch_timeout_seconds + 30.0


@dataclass(frozen=True)
class _WatchPlan:
    res: Resource
    label_selector: str | None
    # how events map to keys: "cluster", "tunnel", "machine", "owned", "kubeconfig",
    # "apiserver" (a hosted apiserver Deployment: its pods come and go, each needs a slot)
    what: str


WATCHES = (
    _WatchPlan(CLUSTER, None, "cluster"),
    _WatchPlan(TUNNEL, None, "tunnel"),
    _WatchPlan(MACHINE, None, "machine"),
    _WatchPlan(SECRET, CLUSTER_LABEL, "owned"),
    _WatchPlan(CONFIG_MAP, CLUSTER_LABEL, "owned"),
    _WatchPlan(DEPLOYMENT, CLUSTER_LABEL, "owned"),
    _WatchPlan(SERVICE, CLUSTER_LABEL, "owned"),
    _WatchPlan(SECRET, CAPI_CLUSTER_NAME_LABEL, "kubeconfig"),
    _WatchPlan(DEPLOYMENT, ATTACH_SIDECAR_LABEL, "apiserver"),
)


def key_of(what: str, obj: KubeObject) -> TenantRef | None:
    """The tenant an event is about, or None if it is about none."""
    meta = obj.get("metadata") or {}
    namespace = str(meta.get("namespace") or "")
    name = str(meta.get("name") or "")
    labels = meta.get("labels") or {}
    cluster: object = None
    if what in ("cluster", "tunnel"):
        cluster = name
    elif what == "machine":
        cluster = (obj.get("spec") or {}).get("clusterName") or labels.get(CAPI_CLUSTER_NAME_LABEL)
    elif what == "owned":
        cluster = labels.get(CLUSTER_LABEL)
    elif what == "apiserver":
        cluster = labels.get(ATTACH_SIDECAR_LABEL)
    elif what == "kubeconfig" and name.endswith(KUBECONFIG_SUFFIX):
        cluster = labels.get(CAPI_CLUSTER_NAME_LABEL) or name[: -len(KUBECONFIG_SUFFIX)]
    if not namespace or not isinstance(cluster, str) or not cluster:
        return None
    return TenantRef(namespace=namespace, cluster=cluster)


class _Term:
    """One term of leadership: the watches, the queue and the loops."""

    def __init__(self, controller: Controller) -> None:
        c = controller
        self.watchers: list[tuple[_WatchPlan, Watcher]] = []
        self.queue: WorkQueue[TenantRef] = WorkQueue(
            self._handle,
            clock=c.clock,
            rng=c.rng,
            workers=c.settings.workers,
            backoff_base=c.settings.backoff_base,
            backoff_cap=c.settings.backoff_cap,
            on_retry=c.metrics.queue_retries.inc,
            on_taken=c.metrics.queue_wait.observe,
        )
        for plan in WATCHES:
            watcher = Watcher(
                c.watch_source,
                plan.res,
                c.settings.namespace,
                on_event=self._on_event(plan),
                clock=c.clock,
                metrics=c.metrics.watch,
                rng=c.rng,
                label_selector=plan.label_selector,
                timeout_seconds=c.settings.watch_timeout_seconds,
            )
            self.watchers.append((plan, watcher))
        machines = next(w for p, w in self.watchers if p.what == "machine")
        self.reconciler = TenantReconciler(
            api=c.kube,
            settings=c.settings.tenant,
            clock=c.clock,
            rng=c.rng,
            tenant_side=c.tenant_side,
            observations=c.observations,
            metrics=c.metrics,
            machines=machines.store,
            tunnels=next(w for p, w in self.watchers if p.what == "tunnel").store,
        )
        self._c = controller
        self.synced = asyncio.Event()
        # A node's podCIDR changes the plan: re-plan that tenant (tenant_nodes.py).
        c.tenant_side.follow_nodes(self.queue.add)
        # A tenant the image rollout starts is reconciled now, not at its next event.
        self.reconciler.images.follow(self.queue.add)

    def _on_event(self, plan: _WatchPlan) -> Callable[[str, KubeObject], None]:
        def handler(event_type: str, obj: KubeObject) -> None:
            key = key_of(plan.what, obj)
            if key is not None:
                self.queue.add(key)

        return handler

    async def _handle(self, key: TenantRef) -> Outcome:
        return await self.reconciler.reconcile_tenant(key)

    def keys(self) -> set[TenantRef]:
        out: set[TenantRef] = set()
        for plan, watcher in self.watchers:
            if plan.what in ("cluster", "tunnel"):
                for obj in watcher.store:
                    key = key_of(plan.what, obj)
                    if key is not None:
                        out.add(key)
        return out

    def tunnel_keys(self) -> set[TenantRef]:
        watcher = next(w for p, w in self.watchers if p.what == "tunnel")
        return {k for obj in watcher.store if (k := key_of("tunnel", obj)) is not None}

    def unhealthy_watches(self, max_silence: float) -> list[str]:
        return [
            f"{p.res.label}{f' ({p.label_selector})' if p.label_selector else ''}"
            for p, w in self.watchers
            if not w.healthy(max_silence)
        ]

    async def run(self) -> None:
        c = self._c
        async with asyncio.TaskGroup() as group:
            for plan, watcher in self.watchers:
                group.create_task(watcher.run(), name=f"watch-{plan.res.label}-{plan.what}")
            await asyncio.gather(*(w.synced.wait() for _, w in self.watchers))
            self.synced.set()
            _log.info(
                "event=caches_synced identity=%s keys=%d", c.settings.identity, len(self.queue)
            )
            group.create_task(self.queue.run(), name="queue")
            group.create_task(self._resync_loop(), name="resync")
            group.create_task(self._observe_loop(), name="observe")

    async def _resync_loop(self) -> None:
        period = self._c.settings.resync_period
        while True:
            await self._c.clock.sleep(period)
            keys = self.keys()
            for key in keys:
                self.queue.add(key)
            _log.debug("event=resync keys=%d", len(keys))

    async def _observe_loop(self) -> None:
        c = self._c
        limit = asyncio.Semaphore(c.settings.observe_concurrency)

        async def poll(key: TenantRef) -> None:
            last = self.reconciler.observed.get(key)
            if last is None:
                return  # not reconciled yet (or failed early): the queue has it
            async with limit:
                try:
                    async with asyncio.timeout(c.settings.tenant.observe_timeout):
                        seen = observation_fingerprint(await c.observations.observe(key))
                except Exception:
                    seen = observation_fingerprint(None)
            if seen != self.reconciler.observed.get(key, seen):
                _log.info("event=observation_changed tenant=%s", key)
                self.queue.add(key)

        while True:
            await c.clock.sleep(c.settings.observe_interval)
            await asyncio.gather(*(poll(k) for k in self.tunnel_keys()))

    async def drain(self, timeout: float) -> bool:
        return await self.queue.drain(timeout=timeout)


class Controller:
    """The controller process minus the CLI. ``run()`` until ``stop`` is set."""

    def __init__(
        self,
        *,
        settings: ControllerSettings,
        kube: Kube,
        registry: CollectorRegistry,
        clock: Clock,
        tenant_side: TenantSide,
        observations: ObservationSource,
        rng: random.Random | None = None,
        watch_source: WatchSource | None = None,
        metrics: ControllerMetrics | None = None,
    ) -> None:
        """``metrics``: pass one made on ``registry`` when something else (the tenant
        side) must share its WatchMetrics; made here otherwise."""
        self.settings = settings
        self.kube = kube
        self.clock = clock
        self.rng = rng or random.Random()
        self.tenant_side = tenant_side
        self.observations = observations
        self.watch_source: WatchSource = watch_source or kube
        self.metrics = metrics or ControllerMetrics(registry=registry)
        self.metrics.watch_leader(lambda: self.is_leader)
        self.term: _Term | None = None
        self._term_task: asyncio.Task[None] | None = None
        self._failed: asyncio.Future[None] | None = None
        self._elector_task: asyncio.Task[None] | None = None
        liveness: dict[str, Check] = {"watches": self._watches_alive}
        if settings.leader_elect:
            liveness["leader-election"] = self._election_alive
        liveness.update(settings.extra_liveness)
        self.health = HealthServer(
            registry=registry,
            host=settings.health_host,
            port=settings.health_port,
            metrics_host=settings.metrics_host,
            metrics_port=settings.metrics_port,
            liveness=liveness,
            readiness={"caches": self._caches_synced},
        )

    @property
    def is_leader(self) -> bool:
        return self._term_task is not None and not self._term_task.done()

    # --- health checks -----------------------------------------------------------------------

    def _watches_alive(self) -> str | None:
        term = self.term
        if term is None or not self.is_leader:
            return None  # a standby watches nothing
        silent = term.unhealthy_watches(self.settings.max_silence)
        if silent:
            return f"no sign of life for {self.settings.max_silence:g}s from: " + ", ".join(silent)
        return None

    def _election_alive(self) -> str | None:
        task = self._elector_task
        if task is not None and task.done():
            return "the leader election loop has ended"
        return None

    def _caches_synced(self) -> str | None:
        term = self.term
        if term is None or not self.is_leader:
            return None
        return None if term.synced.is_set() else "waiting for the first listing of every watch"

    # --- leadership ---------------------------------------------------------------------------

    def _start_leading(self) -> None:
        if self.is_leader:
            return
        self.term = _Term(self)
        self.metrics.watch_queue(depth=self.term.queue.depth, scheduled=self.term.queue.scheduled)
        task = asyncio.create_task(self.term.run(), name="leader-term")
        task.add_done_callback(self._term_done)
        self._term_task = task
        _log.info("event=leading identity=%s", self.settings.identity)

    def _term_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            _log.error(
                "event=controller_task_failed identity=%s error=%r",
                self.settings.identity,
                exc,
                exc_info=exc,
            )
            if self._failed is not None and not self._failed.done():
                self._failed.set_exception(exc)

    async def _stop_leading(self) -> None:
        task, term = self._term_task, self.term
        self._term_task = None
        self.term = None
        await cancel_and_wait(task)
        if term is not None:
            self.tenant_side.follow_nodes(None)
            for key in term.keys() | set(term.reconciler.observed):
                await term.reconciler.forget_tenant(key)
        self.metrics.forget_all()
        _log.info("event=stopped_leading identity=%s", self.settings.identity)

    # --- the process ----------------------------------------------------------------------------

    async def run(self, *, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        self._failed = asyncio.get_running_loop().create_future()
        await self.health.start()
        elector: LeaderElector | None = None
        try:
            if self.settings.leader_elect:
                elector = LeaderElector(
                    self.kube,
                    namespace=self.settings.lease_namespace,
                    name=self.settings.lease_name,
                    identity=self.settings.identity,
                    clock=self.clock,
                    on_started_leading=self._start_leading,
                    on_stopped_leading=self._stop_leading,
                    lease_duration=self.settings.lease_duration,
                    renew_deadline=self.settings.renew_deadline,
                    retry_period=self.settings.retry_period,
                    release_on_cancel=self.settings.release_lease_on_shutdown,
                )
                self._elector_task = asyncio.create_task(elector.run(), name="leader-election")
            else:
                self._start_leading()
            stopping = asyncio.ensure_future(stop.wait())
            waiting: set[asyncio.Future[Any]] = {stopping, self._failed}
            if self._elector_task is not None:
                waiting.add(self._elector_task)
            try:
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
            election_ended = self._elector_task is not None and self._elector_task.done()
            await self._shutdown()
            if self._failed.done():
                self._failed.result()  # raises what killed the term
            if election_ended and self._elector_task is not None:
                self._elector_task.result()  # raises what ended the election loop
                raise RuntimeError("the leader election loop ended by itself")
        finally:
            if self._elector_task is not None and not self._elector_task.done():
                await cancel_and_wait(self._elector_task)
            await self._stop_leading()
            await self.health.stop()

    async def _shutdown(self) -> None:
        """Finish what is running, then give up leadership (and with it the lease)."""
        term = self.term
        if term is not None and self.is_leader:
            finished = await term.drain(self.settings.shutdown_grace)
            _log.info(
                "event=shutdown identity=%s reconciles_finished=%s",
                self.settings.identity,
                finished,
            )
        if self._elector_task is not None and not self._elector_task.done():
            await cancel_and_wait(self._elector_task)  # stops leading, releases the lease
