"""Per-tenant budgets: what one tenant may cost the controller before its tenant-side work
pauses, so that a hostile or broken tenant cluster cannot starve the others.

A tenant's cluster admin writes the CertificateSigningRequests and the objects we watch
there, and runs the admission webhooks our writes pass through. Without limits one tenant
can fill the controller's memory (thousands of big CSRs in the watch cache), keep the CSR
loop busy denying them, or make drift repair write forever (a webhook that rewrites the
agent DaemonSet on every write). So, per tenant:

- cached objects and bytes (``max_objects``, ``max_bytes``): what the tenant's watch
  caches hold, measured after ``slim_csr`` dropped oversize fields;
- CSR decisions and drift repairs per minute, over a sliding 60 s window;
- slow installs: an ``ensure()`` that takes longer than ``max_call_seconds`` (slow
  admission webhooks, a slow apiserver) is cut there, and more than
  ``slow_calls_per_minute`` of those pause the tenant, so it stops holding a reconcile
  worker for that long at every pass;
- a CSR whose ``spec.request`` is over ``max_csr_request_bytes`` (a node CSR is under
  1 KiB) is denied with ``RequestTooLarge``; its body is dropped before it is cached.

A tenant over budget raises ``OverBudget`` inside its tenant-side work; the tenant side
then stops all of that tenant's watches and loops, drops its caches, and starts them
again after a pause that doubles with every trip in a row (``pause_base`` .. ``pause_cap``).
``TenantBudget.degraded()`` is what the Tunnel's ``Degraded`` condition shows, until the
tenant has run one full window without tripping again. Nothing here touches another
tenant, and nothing here makes the controller unhealthy: the tenant is the problem.
"""

from __future__ import annotations

import collections
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from vpnctl.api import Condition
from vpnctl.reconcile.conditions import find_condition, set_condition

if TYPE_CHECKING:  # vpnctl.controller.cli reads the defaults without the Kubernetes client
    from collections.abc import Callable

    from vpnctl.kube import Clock, KubeObject, Resource, WatchSource

KIB = 1024
MIB = 1024 * KIB
WINDOW = 60.0  # seconds: the rates are per minute

# The Tunnel condition, True while the tenant is over budget. Not a part of Ready: the
# tunnel itself works; what is paused is keeping the agent installed and signing CSRs.
DEGRADED = "Degraded"
# Reasons of the Degraded condition (and of the tenant-side log lines).
REASON_CACHE = "CacheBudgetExceeded"
REASON_CSR_RATE = "CSRBudgetExceeded"
REASON_REPAIR_RATE = "RepairBudgetExceeded"
REASON_SLOW = "TenantTooSlow"
REASON_WITHIN = "WithinBudget"
# The reason of a CSR denied for its size.
REASON_CSR_TOO_LARGE = "RequestTooLarge"

# Set by ``slim_csr`` on a cached CSR whose request (or certificate) was dropped: the
# size in bytes of what was dropped. No object from the API has this top-level key.
DROPPED_BYTES = "x-vpnctl-dropped-bytes"

# Upper bound of one reconcile's calls into a tenant cluster (``--tenant-side-timeout``,
# ``TenantSettings.tenant_side_timeout``): a tenant apiserver that doesn't answer in this
# time holds up only its own key, which is retried with backoff. Here, not beside
# TenantSettings, so the CLI reads it without importing the controller.
DEFAULT_TENANT_SIDE_TIMEOUT = 10.0


@dataclass(frozen=True, kw_only=True)
class Budgets:
    """The limits, the same for every tenant (controller flags ``--tenant-*``)."""

    max_objects: int = 10_000
    max_bytes: int = 64 * MIB
    csr_decisions_per_minute: int = 300
    repairs_per_minute: int = 60
    max_csr_request_bytes: int = 8 * KIB
    max_call_seconds: float = 8.0
    slow_calls_per_minute: int = 2
    pause_base: float = 30.0
    pause_cap: float = 600.0

    def __post_init__(self) -> None:
        for name in (
            "max_objects",
            "max_bytes",
            "csr_decisions_per_minute",
            "repairs_per_minute",
            "max_csr_request_bytes",
            "slow_calls_per_minute",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"budget {name} must be at least 1, got {getattr(self, name)}")
        if not self.max_call_seconds > 0:
            raise ValueError(
                f"budget max_call_seconds must be positive, got {self.max_call_seconds}"
            )
        if not 0 < self.pause_base <= self.pause_cap:
            raise ValueError(
                f"budget pause must satisfy 0 < base <= cap, got base={self.pause_base} "
                f"cap={self.pause_cap}"
            )


class OverBudget(Exception):
    """A tenant went over one of its budgets; ``reason`` is the Degraded reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class RateWindow:
    """At most ``limit`` takes in any ``window`` seconds (sliding)."""

    def __init__(self, limit: int, window: float = WINDOW) -> None:
        self.limit = limit
        self.window = window
        self._times: collections.deque[float] = collections.deque()

    def take(self, now: float) -> bool:
        while self._times and now - self._times[0] >= self.window:
            self._times.popleft()
        if len(self._times) >= self.limit:
            return False
        self._times.append(now)
        return True

    def reset(self) -> None:
        self._times.clear()


class TenantBudget:
    """The budget accounting of one tenant. ``tenant`` names it in messages."""

    def __init__(self, budgets: Budgets, *, tenant: str, clock: Clock, rng: random.Random):
        self.budgets = budgets
        self._tenant = tenant
        self._clock = clock
        self._rng = rng
        self._csr = RateWindow(budgets.csr_decisions_per_minute)
        self._repairs = RateWindow(budgets.repairs_per_minute)
        self._slow = RateWindow(budgets.slow_calls_per_minute)
        self.trips = 0  # in a row; reset by a full window without one
        self.total_trips = 0
        self._last: OverBudget | None = None
        self._paused_until = 0.0  # monotonic
        self._resume_wall: datetime | None = None

    # --- accounting (raise OverBudget) ----------------------------------------------------

    def check_cache(self, *, objects: int, size: int) -> None:
        b = self.budgets
        if objects <= b.max_objects and size <= b.max_bytes:
            return
        raise OverBudget(
            REASON_CACHE,
            f"the tenant cluster of {self._tenant} holds {objects} objects "
            f"({size / MIB:.1f} MiB) that vpnctl must watch (node CSRs of signer "
            f"vpnctl.io/node and the agent's objects), over the budget of "
            f"{b.max_objects} objects or {b.max_bytes / MIB:.1f} MiB "
            "(--tenant-max-objects, --tenant-max-cache-bytes); delete the CSRs no node "
            "needs, or raise the budget",
        )

    def take_csr_decision(self) -> None:
        if self._csr.take(self._clock.monotonic()):
            return
        raise OverBudget(
            REASON_CSR_RATE,
            f"the tenant cluster of {self._tenant} asked for more than "
            f"{self.budgets.csr_decisions_per_minute} node CSR decisions in a minute "
            "(--tenant-csr-decisions-per-minute); delete the pending CSRs of signer "
            "vpnctl.io/node that no node needs, or raise the budget",
        )

    def take_repair(self) -> None:
        if self._repairs.take(self._clock.monotonic()):
            return
        raise OverBudget(
            REASON_REPAIR_RATE,
            f"the agent objects in the tenant cluster of {self._tenant} needed more than "
            f"{self.budgets.repairs_per_minute} repairs in a minute "
            "(--tenant-repairs-per-minute): something there (an admission webhook, "
            "another controller) keeps changing what vpnctl installs; stop it, or "
            "raise the budget",
        )

    def take_slow_call(self) -> None:
        """An ensure() that was cut after ``max_call_seconds``."""
        if self._slow.take(self._clock.monotonic()):
            return
        b = self.budgets
        raise OverBudget(
            REASON_SLOW,
            f"the tenant cluster of {self._tenant} took longer than {b.max_call_seconds:g}s "
            f"to install the agent more than {b.slow_calls_per_minute} times in a minute "
            "(--tenant-max-call-seconds, --tenant-slow-calls-per-minute): its admission "
            "webhooks or its apiserver are too slow; fix them, or raise the budget",
        )

    # --- pausing ---------------------------------------------------------------------------

    def trip(self, exc: OverBudget) -> float:
        """Record that the tenant went over budget; how long to pause its work."""
        from vpnctl.kube.retry import backoff  # see the TYPE_CHECKING import above

        self.trips += 1
        self.total_trips += 1
        self._last = exc
        delay = backoff(
            attempt=self.trips,
            base=self.budgets.pause_base,
            cap=self.budgets.pause_cap,
            rng=self._rng,
        )
        # Jitter below the base would make the pause shorter than promised.
        delay = max(delay, min(self.budgets.pause_base, self.budgets.pause_cap))
        self._paused_until = self._clock.monotonic() + delay
        self._resume_wall = self._clock.now() + timedelta(seconds=delay)
        self._csr.reset()
        self._repairs.reset()
        self._slow.reset()
        return delay

    def paused(self) -> bool:
        return self._clock.monotonic() < self._paused_until

    def degraded(self) -> tuple[str, str] | None:
        """(reason, message) while the tenant is paused, or ran less than one window
        since it resumed; None once it stays within budget."""
        last = self._last
        if last is None:
            return None
        now = self._clock.monotonic()
        if now - self._paused_until >= WINDOW:
            self._last = None
            self.trips = 0
            return None
        when = f"{self._resume_wall:%Y-%m-%dT%H:%M:%SZ}" if self._resume_wall else "later"
        state = "are paused until" if now < self._paused_until else "resumed at"
        return (
            last.reason,
            f"{last.message}. Its tenant-side watches and loops {state} {when} "
            f"(over budget {self.trips} time(s) in a row); other tenants are not affected",
        )


def with_degraded(
    conditions: list[Condition],
    degraded: tuple[str, str] | None,
    *,
    observed_generation: int,
    now: datetime,
) -> list[Condition]:
    """``conditions`` with Degraded set from the tenant side's answer. A tenant never
    over budget gets no Degraded condition at all; one that was gets it set False."""
    if degraded is None:
        present = find_condition(conditions, DEGRADED)
        if present is None or present.get("status") == "False":
            return conditions
        return set_condition(
            conditions,
            type=DEGRADED,
            status="False",
            reason=REASON_WITHIN,
            message="the tenant is within its budgets again; its tenant-side work runs",
            observed_generation=observed_generation,
            now=now,
        )
    reason, message = degraded
    return set_condition(
        conditions,
        type=DEGRADED,
        status="True",
        reason=reason,
        message=message,
        observed_generation=observed_generation,
        now=now,
    )


# --- a listing that alone is over budget -----------------------------------------------------


class GuardedListing:
    """A watch source whose listings stop, page by page, as soon as what they brought so
    far plus what the tenant's other caches hold (``others()``: objects, bytes) is over
    the budget: a tenant with a million CSRs must not make us download them all before
    the cache check after the listing says no. Watches pass through unchanged.

    A ``WatchSource`` wrapping one (``Kube``): what the ``Watcher`` of the tenant's CSRs
    lists and watches through; the selectors and ``transform`` are the Watcher's."""

    def __init__(
        self,
        source: WatchSource,
        budget: TenantBudget,
        *,
        others: Callable[[], tuple[int, int]],
    ) -> None:
        self._source = source
        self._budget = budget
        self._others = others
        self.watch = source.watch  # watches pass through unchanged

    async def list(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        page_size: int = 500,
        transform: Callable[[KubeObject], KubeObject] | None = None,
    ) -> tuple[list[KubeObject], str]:
        objects, size = self._others()

        def counted(obj: KubeObject) -> KubeObject:
            nonlocal objects, size
            kept = transform(obj) if transform is not None else obj
            objects += 1
            size += object_bytes(kept)
            self._budget.check_cache(objects=objects, size=size)
            return kept

        return await self._source.list(
            res,
            namespace,
            label_selector=label_selector,
            field_selector=field_selector,
            page_size=page_size,
            transform=counted,
        )


# --- what the cache keeps of a CSR ----------------------------------------------------------


def object_bytes(obj: Mapping[str, Any]) -> int:
    """What an object costs in the cache, roughly: the size of its compact JSON."""
    return len(json.dumps(obj, separators=(",", ":"), default=str))


def slim_csr(obj: KubeObject, *, max_request_bytes: int) -> KubeObject:
    """The CSR to cache: without managedFields, and without ``spec.request`` when that is
    over ``max_request_bytes`` (its size kept in the ``DROPPED_BYTES`` key, so the CSR
    loop can deny it). Idempotent; the object given is not changed."""
    spec = obj.get("spec")
    request = spec.get("request") if isinstance(spec, Mapping) else None
    meta = obj.get("metadata")
    big = isinstance(request, str) and len(request) > max_request_bytes
    managed = isinstance(meta, Mapping) and "managedFields" in meta
    if not (big or managed):
        return obj
    slim = dict(obj)
    if isinstance(meta, Mapping) and managed:
        slim["metadata"] = {k: v for k, v in meta.items() if k != "managedFields"}
    if isinstance(spec, Mapping) and isinstance(request, str) and big:
        slim["spec"] = {**spec, "request": ""}
        slim[DROPPED_BYTES] = len(request)
    return slim


def dropped_bytes(csr: Mapping[str, Any]) -> int:
    """The size of the request ``slim_csr`` dropped from this cached CSR (0: none)."""
    value = csr.get(DROPPED_BYTES)
    return value if isinstance(value, int) else 0
