"""What the tenant side keeps per tenant (``TenantState``), and how it calls a tenant
apiserver (``TenantCalls``: connect, retry, back off, watch), shared by its jobs: install
(``tenant_install``), drift repair (``tenant_repair``), the CSR loop (``tenant_csr_loop``)
and cleanup (``tenant_cleanup``), which ``tenant_side.KubeTenantSide`` puts together.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import certs
from telemetry.logs import pairs
from vpnctl.controller.budgets import TenantBudget, object_bytes
from vpnctl.controller.csr_backlog import CsrBacklog
from vpnctl.controller.interfaces import TenantRef
from vpnctl.controller.tenant_lane import Lane
from vpnctl.kube import (
    Clock,
    Kube,
    KubeObject,
    Resource,
    Watcher,
    WatchMetrics,
    WatchSource,
    with_retries,
)
from vpnctl.kube.retry import backoff
from vpnctl.kube.watch import EventHandler, Transform
from vpnctl.reconcile.node_certs import SignedCert
from vpnctl.reconcile.tenant_members import NodeFacts
from vpnctl.reconcile.tenant_refs import ObjectRef, WatchSpec

_log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(eq=False)
class TenantState:
    ref: TenantRef
    kubeconfig_text: str = field(repr=False)  # holds the tenant admin's credentials
    kube: Kube
    desired: dict[ObjectRef, KubeObject] = field(default_factory=dict)
    machines: tuple[KubeObject, ...] = ()
    ca: certs.Issued | None = None
    tls_crypt_server_key: bytes | None = field(default=None, repr=False)  # secret; set by ensure()
    watchers: dict[WatchSpec, Watcher] = field(default_factory=dict)
    watch_tasks: dict[WatchSpec, asyncio.Task[None]] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    budget: TenantBudget | None = None
    lane: Lane | None = None  # its background work, started after a first install
    csr_watcher: Watcher | None = None
    node_watcher: Watcher | None = None
    # What the plan reads of each Node, by name (``tenant_nodes``), and the last complete
    # listing of the Nodes, kept while the caches are dropped.
    node_facts: dict[str, NodeFacts] = field(default_factory=dict)
    last_nodes: tuple[KubeObject, ...] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    repair_wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    csr_wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    drift_seen: dict[ObjectRef, float] = field(default_factory=dict)
    csr_backlog: CsrBacklog = field(default_factory=CsrBacklog)
    repairs: int = 0
    repaired_kinds: set[str] = field(default_factory=set)
    signed: int = 0
    denied: int = 0
    issued: dict[str, SignedCert] = field(default_factory=dict)  # by serial


def cache_usage(state: TenantState, *, csrs: bool = True, nodes: bool = True) -> tuple[int, int]:
    """(objects, bytes) in the tenant's watch caches; without the CSRs' if not ``csrs``,
    without the Nodes' if not ``nodes``."""
    watchers = [
        *state.watchers.values(),
        state.csr_watcher if csrs else None,
        state.node_watcher if nodes else None,
    ]
    stores = [w.store for w in watchers if w is not None]
    return sum(len(s) for s in stores), sum(s.bytes for s in stores)


def check_cache(state: TenantState) -> None:
    """Raises OverBudget when the tenant's caches hold too much."""
    assert state.budget is not None
    objects, size = cache_usage(state)
    state.budget.check_cache(objects=objects, size=size)


@dataclass(frozen=True, kw_only=True)
class TenantCalls:
    """How the tenant side calls tenant apiservers (see ``KubeTenantSide``'s arguments)."""

    clock: Clock
    rng: random.Random
    watch_metrics: WatchMetrics
    request_timeout: float
    request_attempts: int
    watch_timeout_seconds: int
    backoff_base: float
    backoff_cap: float

    async def connect(self, tenant: TenantRef, text: str) -> Kube:
        return await Kube.from_kubeconfig_text(
            text,
            name=f"Secret {tenant.namespace}/{tenant.cluster}-kubeconfig",
            request_timeout=self.request_timeout,
        )

    async def retrying(self, fn: Callable[[], Awaitable[T]], *, conflicts: bool = False) -> T:
        """One request, retried ``request_attempts`` times on transport trouble."""
        return await with_retries(
            fn,
            rng=self.rng,
            clock=self.clock,
            attempts=self.request_attempts,
            base=0.2,
            cap=2.0,
            conflicts=conflicts,
            logger=_log,
        )

    def backoff(self, attempt: int) -> float:
        """The pause of a background loop after its ``attempt``-th failure in a row."""
        return backoff(attempt=attempt, base=self.backoff_base, cap=self.backoff_cap, rng=self.rng)

    def watcher(
        self,
        source: WatchSource,
        res: Resource,
        namespace: str | None,
        *,
        on_event: EventHandler,
        label_selector: str | None = None,
        field_selector: str | None = None,
        page_size: int | None = None,
        transform: Transform | None = None,
    ) -> Watcher:
        """A Watcher of a tenant's ``res`` that sizes what it caches (for the budgets)."""
        return Watcher(
            source,
            res,
            namespace,
            on_event=on_event,
            clock=self.clock,
            metrics=self.watch_metrics,
            rng=self.rng,
            sizer=object_bytes,
            timeout_seconds=self.watch_timeout_seconds,
            backoff_base=self.backoff_base,
            backoff_cap=self.backoff_cap,
            label_selector=label_selector,
            field_selector=field_selector,
            page_size=page_size,
            transform=transform,
        )


@dataclass(kw_only=True)
class FailedPasses:
    """The failed passes in a row of one background loop of one tenant (repair, CSRs),
    and what follows a failure: a log line ``event``, and a backoff before the loop runs
    again."""

    calls: TenantCalls
    wakeup: asyncio.Event  # the loop's: set, so that it runs again after the backoff
    tenant: TenantRef
    event: str
    failures: int = 0

    def succeeded(self) -> None:
        self.failures = 0

    async def failed(self, **detail: object) -> None:
        self.failures += 1
        delay = self.calls.backoff(self.failures)
        _log.warning(
            "event=%s tenant=%s failures=%d %s retry_in=%.1fs",
            self.event,
            self.tenant,
            self.failures,
            pairs(**detail),
            delay,
        )
        self.wakeup.set()
        await self.calls.clock.sleep(delay)
