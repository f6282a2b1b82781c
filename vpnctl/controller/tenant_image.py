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

``TenantImages`` is the pass's side (a part of ``TenantReconciler``, like
``tenant_status``): it reads the tenant's live server Deployment, asks for the verdict,
builds the plan with that image, and reports it (status, condition, Event).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime

from vpnctl.api import Condition, TunnelStatusBody
from vpnctl.controller.interfaces import TenantRef
from vpnctl.controller.metrics import ControllerMetrics
from vpnctl.controller.tenant_api import TenantCalls
from vpnctl.kube import DEPLOYMENT, TUNNEL, KubeObject, Store
from vpnctl.reconcile.conditions import READY, find_condition, rfc3339
from vpnctl.reconcile.image_rollout import (
    RolloutPlan,
    RolloutPolicy,
    TenantImage,
    TenantVerdict,
    container_image,
    deployment_rolled_out,
    observed_tenant,
    plan_rollout,
    rolled_out,
    tenant_image_of,
    with_rollout_halt,
)
from vpnctl.reconcile.service_objects import SERVER_CONTAINER
from vpnctl.reconcile.tenant_plan import TenantPlan

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

    async def forget(self, key: TenantRef, *, now: datetime) -> None:
        """KEY's Tunnel is gone: a slot it held is free for the next tenant now, not at
        the next resync (the watch cache no longer lists it when its key comes)."""
        async with self._lock:
            self._decided.pop(str(key), None)
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


@dataclass(frozen=True, kw_only=True)
class ChosenImage:
    """The agent image one pass builds its tenant with, and what the pass reports of it."""

    verdict: TenantVerdict
    halt: str | None  # why the rollout is halted, if it is
    live: KubeObject | None  # the server Deployment before this pass applied it

    def conditions(
        self, conditions: list[Condition], *, generation: int, now: datetime
    ) -> list[Condition]:
        """CONDITIONS with ImageRolloutHalted, on the tenant that halts the rollout."""
        halt = self.halt if self.verdict.state == "halted" else None
        return with_rollout_halt(conditions, halt, observed_generation=generation, now=now)

    def rolled_out(self, server: KubeObject, conditions: list[Condition]) -> bool:
        """A rolling tenant whose SERVER Deployment has rolled out with the image, Ready."""
        ready = find_condition(conditions, READY)
        return rolled_out(
            self.verdict,
            live_image=container_image(server, SERVER_CONTAINER),
            deployment_done=deployment_rolled_out(server),
            ready=ready is not None and ready.get("status") == "True",
        )

    def status(self, *, rolled_out: bool) -> TunnelStatusBody:
        """The status fields that record the image (reconcile/image_rollout.py)."""
        out: TunnelStatusBody = {"agentImage": self.verdict.image}
        if self.verdict.rolling_since is not None and not rolled_out:
            out["agentImageRollingSince"] = rfc3339(self.verdict.rolling_since)
        return out

    def deadline(self, policy: RolloutPolicy) -> datetime | None:
        """When a rolling tenant's pass must look again: the rollout halts then."""
        if self.verdict.state != "rolling" or self.verdict.rolling_since is None:
            return None
        return self.verdict.rolling_since + policy.deadline


class TenantImages(TenantCalls):
    """Part of ``TenantReconciler``: which agent image the pass builds its tenant with."""

    _tunnels: Store | None  # the Tunnel watch cache; None: list them from the API
    images: ImageRollouts

    def _image_rollouts(self) -> ImageRollouts:
        return ImageRollouts(
            target=self._settings.build.agent_image,
            policy=self._settings.image_rollout,
            tunnels=self._list_tunnels,
            metrics=self._metrics,
        )

    async def _list_tunnels(self) -> list[KubeObject]:
        if self._tunnels is not None:
            return self._tunnels.list()
        items, _ = await self._call(lambda: self._api.list(TUNNEL))
        return items

    async def _agent_image(
        self, key: TenantRef, tunnel: KubeObject, plan: TenantPlan, *, now: datetime
    ) -> tuple[TenantPlan, ChosenImage]:
        """The agent image this pass builds the tenant's objects with: its pin, or what the
        rollout of --agent-image gives it now; PLAN with that image."""
        live = await self._get(DEPLOYMENT, plan.names.deployment, key.namespace)
        own = observed_tenant(
            str(key),
            tunnel,
            pinned=plan.tenant.spec.agent_image,
            live_image=container_image(live, SERVER_CONTAINER),
            now=now,
        )
        verdict, halt = await self.images.verdict(key, own, now=now)
        spec = replace(plan.tenant.spec, agent_image=verdict.image)
        plan = replace(plan, tenant=replace(plan.tenant, spec=spec))
        return plan, ChosenImage(verdict=verdict, halt=halt, live=live)

    async def _image_rolled_out(
        self, key: TenantRef, tunnel: KubeObject, image: str, *, now: datetime
    ) -> None:
        await self.images.rolled_out(key, image, now=now)
        await self._event(
            tunnel,
            "Normal",
            "AgentImageRolledOut",
            f"the server runs agent image {image} and the tenant is Ready",
        )
