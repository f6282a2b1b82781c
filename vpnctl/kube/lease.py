"""Leader election on a coordination.k8s.io/v1 Lease, the way client-go does it.

Two controller replicas run; only the leader reconciles. The rules:

- A lease is free when it has no holder, or when its record (holder, renewTime, ...)
  hasn't changed for ``leaseDurationSeconds`` *as measured by our own monotonic clock*
  since we first saw that record. Comparing the remote renewTime with our wall clock
  would make failover depend on clock skew between nodes.
- Every write is a PUT carrying the resourceVersion we read: if two replicas race, one
  gets 409 Conflict and simply tries again next period.
- The leader renews every ``retry_period``; if it can't for ``renew_deadline`` (shorter
  than the lease), it stops leading *before* anyone else may take over.
- On graceful shutdown (``run()`` cancelled) the leader stops its work, then writes an
  empty holder, so the other replica takes over at its next try (about
  ``retry_period``) instead of waiting the lease out.

Failover after a crash takes at most about ``lease_duration + 2 * retry_period``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from telemetry.logs import pairs
from vpnctl.kube.clock import Clock
from vpnctl.kube.errors import AlreadyExists, ApiError, Conflict
from vpnctl.kube.resources import LEASE, ObjectApi

_log = logging.getLogger(__name__)

Callback = Callable[[], Awaitable[None] | None]


def micro_time(clock: Clock) -> str:
    """metav1.MicroTime as the apiserver writes it."""
    return clock.now().strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        kube: ObjectApi,
        *,
        namespace: str,
        name: str,
        identity: str,
        clock: Clock,
        on_started_leading: Callback,
        on_stopped_leading: Callback,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        release_on_cancel: bool = True,
    ) -> None:
        """``on_started_leading`` / ``on_stopped_leading`` must return promptly (start
        or stop the controller's tasks; don't run the controller inside them). They may
        be called more than once: leadership can be lost and won again.
        ``release_on_cancel=False`` leaves the lease to expire (a crash, for tests)."""
        if not identity:
            raise ValueError("leader election needs a non-empty identity (e.g. the pod name)")
        if not 0 < retry_period < renew_deadline < lease_duration:
            raise ValueError(
                "leader election needs 0 < retry_period < renew_deadline < lease_duration, "
                f"got {retry_period}, {renew_deadline}, {lease_duration}"
            )
        self._kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self._clock = clock
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self._release_on_cancel = release_on_cancel
        self.is_leader = False
        self.observed_holder = ""
        self._observed_record: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._where = pairs(lease=f"{namespace}/{name}", identity=identity)

    async def run(self) -> None:
        """Campaign, lead, and campaign again if leadership is lost; until cancelled.
        When cancelled while leading: stop leading, then release the lease."""
        try:
            while True:
                await self._acquire()
                self.is_leader = True
                _log.info("event=leader_started %s", self._where)
                await _call(self._on_started)
                await self._renew_until_lost()
                self.is_leader = False
                _log.warning("event=leader_lost %s holder=%r", self._where, self.observed_holder)
                await _call(self._on_stopped)
        finally:
            if self.is_leader:
                self.is_leader = False
                _log.info(
                    "event=leader_stopping %s release=%s", self._where, self._release_on_cancel
                )
                await _call(self._on_stopped)
                if self._release_on_cancel:
                    await self._release()

    # --- internals --------------------------------------------------------------------------

    async def _acquire(self) -> None:
        while True:
            if await self._try_acquire_or_renew():
                return
            await self._clock.sleep(self.retry_period)

    async def _renew_until_lost(self) -> None:
        last_renew = self._clock.monotonic()
        while True:
            await self._clock.sleep(self.retry_period)
            left = self.renew_deadline - (self._clock.monotonic() - last_renew)
            renewed = False
            if left > 0:
                try:
                    async with asyncio.timeout(left):
                        renewed = await self._try_acquire_or_renew()
                except TimeoutError:
                    _log.warning("event=leader_renew_timeout %s after=%.1fs", self._where, left)
            if renewed:
                last_renew = self._clock.monotonic()
                continue
            if self.observed_holder not in ("", self.identity):
                return  # someone else holds it now
            if self._clock.monotonic() - last_renew >= self.renew_deadline:
                return

    async def _try_acquire_or_renew(self) -> bool:
        try:
            return await self._attempt()
        except ApiError as exc:
            _log.warning("event=leader_attempt_failed %s error=%r", self._where, str(exc))
            return False

    def _observe(self, spec: dict[str, Any]) -> None:
        record = (
            spec.get("holderIdentity") or "",
            spec.get("leaseDurationSeconds"),
            spec.get("acquireTime"),
            spec.get("renewTime"),
            spec.get("leaseTransitions"),
        )
        if record != self._observed_record:
            self._observed_record = record
            self._observed_at = self._clock.monotonic()
        self.observed_holder = str(record[0])

    def _spec(self, *, previous: dict[str, Any] | None) -> dict[str, Any]:
        now = micro_time(self._clock)
        previous = previous or {}
        spec = dict(previous)
        spec["holderIdentity"] = self.identity
        spec["leaseDurationSeconds"] = max(1, math.ceil(self.lease_duration))
        spec["renewTime"] = now
        if previous.get("holderIdentity") != self.identity:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(previous.get("leaseTransitions") or 0) + (
                1 if previous else 0
            )
        return spec

    async def _attempt(self) -> bool:
        lease = await self._kube.get(LEASE, self.name, self.namespace)
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(previous=None),
            }
            try:
                created = await self._kube.create(LEASE, body)
            except AlreadyExists:
                return False
            self._observe(created.get("spec") or {})
            return True
        spec = dict(lease.get("spec") or {})
        self._observe(spec)
        holder = self.observed_holder
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
        if holder and holder != self.identity:
            if self._clock.monotonic() < self._observed_at + duration:
                return False  # held, and its holder is still renewing
            _log.info("event=leader_lease_expired %s holder=%r", self._where, holder)
        lease["spec"] = self._spec(previous=spec)
        try:
            updated = await self._kube.replace(LEASE, lease)
        except Conflict:
            return False
        self._observe(updated.get("spec") or {})
        return True

    async def _release(self) -> None:
        """Hand the lease back: no holder, so the next try of any replica wins it."""
        try:
            async with asyncio.timeout(self.renew_deadline):
                lease = await self._kube.get(LEASE, self.name, self.namespace)
                if lease is None:
                    return
                spec = dict(lease.get("spec") or {})
                if spec.get("holderIdentity") != self.identity:
                    return
                now = micro_time(self._clock)
                spec.update(
                    holderIdentity=None,
                    leaseDurationSeconds=1,
                    acquireTime=now,
                    renewTime=now,
                )
                lease["spec"] = spec
                await self._kube.replace(LEASE, lease)
            _log.info("event=leader_released %s", self._where)
        except (ApiError, TimeoutError) as exc:
            _log.warning(
                "event=leader_release_failed %s error=%r fallback=lease_expires",
                self._where,
                str(exc),
            )


async def _call(callback: Callback) -> None:
    result = callback()
    if inspect.isawaitable(result):
        await result
