"""Drift repair: put back what a tenant deleted or edited of the agent's objects.

Watches (``vpnctl.kube.Watcher``) on each kind we install, filtered by our labels; an
event that shows drift wakes a repair pass, which re-reads the object and re-applies the
last desired version (server-side apply, field manager ``vpnctl``), counts it in
``vpnctl_tenant_repairs_total{namespace,cluster,kind}`` and logs it with its latency.
Each repair takes one from the tenant's repair budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from vpnctl.controller.tenant_install import apply, cached, read
from vpnctl.controller.tenant_lane import Lane
from vpnctl.controller.tenant_state import FailedPasses, TenantCalls, TenantState, check_cache
from vpnctl.kube import ApiError, KubeObject, Watcher
from vpnctl.reconcile.diff import needs_update
from vpnctl.reconcile.tenant_refs import (
    ObjectRef,
    WatchSpec,
    drifted,
    label_selector,
    live_ref,
    watch_specs,
)

_log = logging.getLogger(__name__)


class DriftRepair:
    """The object watches and the repair loop of every tenant (state in ``TenantState``).

    ``repair_coalesce``: seconds a repair waits after the first drift event, so a burst
    (a deleted namespace) is repaired in one pass.
    """

    def __init__(
        self, *, calls: TenantCalls, registry: CollectorRegistry, repair_coalesce: float
    ) -> None:
        self._calls = calls
        self._repair_coalesce = repair_coalesce
        self._repairs_total = Counter(
            "vpnctl_tenant_repairs",
            "Objects in tenant clusters put back after the tenant deleted or edited them.",
            ["namespace", "cluster", "kind"],
            registry=registry,
        )

    def forget(self, state: TenantState) -> None:
        """Drop the tenant's metrics."""
        for kind in state.repaired_kinds:
            with contextlib.suppress(KeyError):
                self._repairs_total.remove(state.ref.namespace, state.ref.cluster, kind)

    def sync_watches(self, state: TenantState, lane: Lane) -> None:
        """One watch per kind the tenant's desired objects have (``watch_specs``)."""
        wanted = set(watch_specs(state.desired))
        for spec in wanted - set(state.watchers):
            watcher = self._calls.watcher(
                state.kube,
                spec.res,
                spec.namespace,
                on_event=self._object_handler(state, spec),
                label_selector=label_selector(state.ref.cluster),
            )
            state.watchers[spec] = watcher
            state.watch_tasks[spec] = lane.spawn(
                f"watch {spec.res.label}", self._watch_body(state, watcher)()
            )
        for spec in set(state.watchers) - wanted:
            del state.watchers[spec]
            state.watch_tasks.pop(spec).cancel()

    def _watch_body(
        self, state: TenantState, watcher: Watcher
    ) -> Callable[[], Coroutine[Any, Any, None]]:
        async def body() -> None:
            # After a listing, a desired object that is simply absent gives no event:
            # wake the repair pass once the cache is there, so it looks.
            async with asyncio.TaskGroup() as group:
                group.create_task(watcher.run())
                await watcher.synced.wait()
                state.repair_wakeup.set()

        return body

    def _object_handler(
        self, state: TenantState, spec: WatchSpec
    ) -> Callable[[str, KubeObject], None]:
        def on_event(event_type: str, obj: KubeObject) -> None:
            check_cache(state)
            ref = live_ref(spec.res, obj)
            wanted = state.desired.get(ref)
            if wanted is None:
                return
            if event_type == "DELETED" or needs_update(obj, wanted):
                state.drift_seen.setdefault(ref, self._calls.clock.monotonic())
                state.repair_wakeup.set()

        return on_event

    async def loop(self, state: TenantState) -> None:
        passes = FailedPasses(
            calls=self._calls,
            wakeup=state.repair_wakeup,
            tenant=state.ref,
            event="tenant_repair_failed",
        )
        while True:
            await state.repair_wakeup.wait()
            await self._calls.clock.sleep(self._repair_coalesce)
            state.repair_wakeup.clear()
            try:
                async with state.lock:
                    await self._repair_pass(state)
            except ApiError as exc:
                await passes.failed(error=str(exc))
            else:
                passes.succeeded()

    async def _repair_pass(self, state: TenantState) -> None:
        assert state.budget is not None
        live: dict[ObjectRef, KubeObject | None] = {}
        for ref in state.desired:
            known, cached_obj = cached(state, ref)
            if known:
                live[ref] = cached_obj
        for ref in drifted(state.desired, live):
            wanted = state.desired[ref]
            current = await read(self._calls, state, ref)  # the cache may lag our last write
            if not needs_update(current, wanted):
                state.drift_seen.pop(ref, None)
                continue
            state.budget.take_repair()
            await apply(self._calls, state, ref, wanted)
            seen = state.drift_seen.pop(ref, None)
            latency = self._calls.clock.monotonic() - seen if seen is not None else 0.0
            state.repairs += 1
            state.repaired_kinds.add(ref.res.kind)
            self._repairs_total.labels(
                namespace=state.ref.namespace, cluster=state.ref.cluster, kind=ref.res.kind
            ).inc()
            _log.info(
                "event=tenant_drift_repaired tenant=%s object=%r drift=%s latency=%.2fs repairs=%d",
                state.ref,
                str(ref),
                "deleted" if current is None else "edited",
                latency,
                state.repairs,
            )
