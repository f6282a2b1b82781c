"""One rollout of the default agent image across the per-tenant reconciles.

The queue reconciles tenants in parallel, but how many of them roll to a new image is a
fleet-wide bound (``reconcile/image_rollout.py`` decides it, pure). So every pass asks
``ImageRollouts.verdict`` for its tenant's image, which plans over all Tunnels under one
lock: two passes can never both take the last free slot.

What each tenant runs is in its Tunnel's status (``agentImage``,
``agentImageRollingSince``), written at the end of its pass. Between a decision and that
write, and until the Tunnel watch cache shows the write, this keeps the decision in
memory (``_decided``); the status stays the record, so a restarted controller carries on.
A pass that finds its tenant rolled out tells ``rolled_out``, which re-plans at once and
queues the tenants that now start, so a rollout moves on events, not on resyncs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime

from vpnctl.controller.interfaces import TenantRef
from vpnctl.controller.metrics import ControllerMetrics
from vpnctl.kube import KubeObject
from vpnctl.reconcile.image_rollout import (
    RolloutPlan,
    RolloutPolicy,
    TenantImage,
    TenantVerdict,
    plan_rollout,
    tenant_image_of,
)

_log = logging.getLogger(__name__)

Tunnels = Callable[[], Awaitable[list[KubeObject]]]


def _ref(tunnel: KubeObject) -> TenantRef | None:
    meta = tunnel.get("metadata") or {}
    namespace, name = meta.get("namespace"), meta.get("name")
    if not isinstance(namespace, str) or not isinstance(name, str):
        return None
    return TenantRef(namespace=namespace, cluster=name)


class ImageRollouts:
    """The rollout of ``target`` (the controller's ``--agent-image``) over the tenants."""

    def __init__(
        self,
        *,
        target: str,
        policy: RolloutPolicy,
        tunnels: Tunnels,
        metrics: ControllerMetrics,
        requeue: Callable[[TenantRef], None] | None = None,
    ) -> None:
        self.target = target
        self.policy = policy
        self._tunnels = tunnels
        self._metrics = metrics
        self._requeue = requeue or (lambda key: None)
        self._lock = asyncio.Lock()
        # Decisions newer than the Tunnel cache may show: tenant -> its image record.
        self._decided: dict[str, TenantImage] = {}
        self._halted: tuple[str, ...] = ()

    def follow(self, requeue: Callable[[TenantRef], None]) -> None:
        """Where tenants that start rolling are queued (the operator's work queue)."""
        self._requeue = requeue

    async def verdict(
        self, key: TenantRef, own: TenantImage, *, now: datetime
    ) -> tuple[TenantVerdict, str | None]:
        """The image KEY's objects are built with in this pass (its tenant observed as OWN),
        and why the rollout is halted if it is."""
        async with self._lock:
            plan = await self._plan({str(key): own}, now=now)
            return plan.tenants[str(key)], plan.halt_message(deadline=self.policy.deadline)

    async def rolled_out(self, key: TenantRef, image: str, *, now: datetime) -> None:
        """KEY's objects run IMAGE and it is Ready: its roll is over; start the next ones."""
        async with self._lock:
            _log.info("event=agent_image_rolled_out tenant=%s image=%s", key, image)
            done = TenantImage(key=str(key), pinned=None, image=image, rolling_since=None)
            self._decided[str(key)] = done
            await self._plan({}, now=now)

    async def _plan(self, observed: dict[str, TenantImage], *, now: datetime) -> RolloutPlan:
        now = now.replace(microsecond=0)  # as the status records it
        fleet: dict[str, TenantImage] = {}
        for tunnel in await self._tunnels():
            ref = _ref(tunnel)
            if ref is None:
                continue
            recorded = tenant_image_of(str(ref), tunnel)
            decided = self._decided.get(str(ref))
            if decided is not None and (decided.image, decided.rolling_since) == (
                recorded.image,
                recorded.rolling_since,
            ):
                del self._decided[str(ref)]  # the cache has caught up
                decided = None
            if decided is not None:
                recorded = TenantImage(
                    key=recorded.key,
                    pinned=recorded.pinned,
                    image=decided.image,
                    rolling_since=decided.rolling_since,
                )
            fleet[str(ref)] = recorded
        for name, seen in observed.items():
            # What this process decided is newer than any status it wrote; the pass's own
            # reading (its live Deployment) counts where nothing was decided.
            decided = self._decided.get(name)
            fleet[name] = seen if decided is None else replace(decided, pinned=seen.pinned)
        for gone in set(self._decided) - set(fleet):
            del self._decided[gone]
        plan = plan_rollout(fleet.values(), target=self.target, policy=self.policy, now=now)
        for name, verdict in plan.tenants.items():
            if verdict.state == "pinned":
                continue
            before = fleet[name]
            if (verdict.image, verdict.rolling_since) != (before.image, before.rolling_since):
                self._decided[name] = TenantImage(
                    key=name,
                    pinned=None,
                    image=verdict.image,
                    rolling_since=verdict.rolling_since,
                )
                if verdict.rolling_since == now and name not in observed:
                    namespace, cluster = name.split("/", 1)
                    _log.info("event=agent_image_rolling tenant=%s image=%s", name, self.target)
                    self._requeue(TenantRef(namespace=namespace, cluster=cluster))
        if plan.halted_by != self._halted:
            if plan.halted_by:
                _log.warning(
                    "event=image_rollout_halted image=%s tenants=%s",
                    self.target,
                    ",".join(plan.halted_by),
                )
            elif self._halted:
                _log.info("event=image_rollout_resumed image=%s", self.target)
            self._halted = plan.halted_by
        self._metrics.set_image_rollout(plan.counts())
        return plan
