"""The tenant-cluster side of the controller: install the node agent, keep it installed,
and answer the nodes' certificate requests.

Why it is a long-lived object rather than a function of one reconcile: a tenant can
delete or edit what we put in its cluster at any moment, and a node asks for its
certificate whenever it (re)starts. Waiting for the next periodic resync would leave a
node unreachable for minutes, so for every tenant this keeps, next to one cached client:

- install (``tenant_install``): apply the agent objects that differ, in order;
- drift repair (``tenant_repair``): watches on each kind we install, filtered by our
  labels; an event that shows drift wakes a repair pass that puts the object back;
- the CSR loop (``tenant_csr_loop``, its decision steps in ``csr_signer``): a watch on
  the node CSRs of signer ``vpnctl.io/node`` and a loop that decides, signs or denies
  each; the serial of every node certificate it signed, or finds in an issued CSR, is
  reported by ``ensure()`` in ``TenantSideResult.signed``/``certificates`` until it
  expires;
- the Node watch (``tenant_nodes``): each node's podCIDRs, which the controller's
  plan routes through that node's own tunnel (``nodes()``); a change that the plan sees
  is reported to the listener given to ``follow_nodes()`` (the controller's queue);
- cleanup (``tenant_cleanup``): delete every object of ours, found by label.

Their per-tenant state is a ``tenant_state.TenantState``; this module puts them together.

A tenant is hostile input, and one tenant must not cost the others (issue 9): each
tenant has budgets (``vpnctl.controller.budgets``: cached objects and bytes, CSR
decisions and repairs per minute). The CSR watch asks the apiserver for our signer only
(a field selector), its cache drops oversize requests (such a CSR is denied
``RequestTooLarge``), and the CSR loop looks only at CSRs that changed
(``csr_backlog``). A tenant over budget has all its background work paused and its
caches dropped (``tenant_lane``); until it resumes, ``ensure()`` sends it no request and
reports it ``degraded``, so its slow webhooks hold no reconcile worker.

Every background task runs in one TaskGroup owned by the object (``async with``), under
a supervisor (``tenant_tasks.TenantTasks``) that logs a crash with its traceback and
restarts the task with backoff. API errors never crash a task: the loops retry them with
backoff themselves. So nothing dies silently, and ``healthy()`` (for /healthz) turns
False when a task keeps crashing. A tenant whose apiserver is down does *not* make the
controller unhealthy: that is the tenant's problem, reported by ``ensure()`` as
``TenantUnreachable``; restarting the controller would not fix it and would hurt every
other tenant.

Choices a reader may wonder about:

- ``ensure()`` reads from the watch caches when they are synced (``tenant_install``),
  so a resync with nothing changed sends no request at all.
- Watches start only after a first successful install: watching an apiserver that was
  never reachable would only add retry noise to the ``TenantUnreachable`` condition.
- ``cleanup()`` first ``forget()``s the tenant, or drift repair would put back what it
  deletes, and returns True only once a fresh listing finds nothing of ours. With
  ``kubeconfig_text=None`` it returns True at once: the caller decided the tenant
  cluster is gone or unreachable while its Cluster is being deleted (CAPI deletes the
  control plane at the same time), and a Cluster must not stay undeletable forever
  because of it. The objects die with the tenant cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any

from prometheus_client import CollectorRegistry, Counter

import certs
from vpnctl.controller.budgets import (
    REASON_CACHE,
    REASON_CSR_RATE,
    REASON_REPAIR_RATE,
    REASON_SLOW,
    Budgets,
    OverBudget,
    TenantBudget,
)
from vpnctl.controller.csr_signer import IssuedRecorder
from vpnctl.controller.interfaces import TenantRef, TenantSideResult
from vpnctl.controller.tenant_cleanup import clean_tenant
from vpnctl.controller.tenant_csr_loop import CsrLoop
from vpnctl.controller.tenant_install import (
    REASON_APPLY_FAILED,
    REASON_INSTALLED,
    REASON_KUBECONFIG_INVALID,
    REASON_REFUSED,
    REASON_UNREACHABLE,
    apply_all,
    result_for_error,
)
from vpnctl.controller.tenant_lane import Lane, trip
from vpnctl.controller.tenant_nodes import NodesListener, NodeWatch
from vpnctl.controller.tenant_repair import DriftRepair
from vpnctl.controller.tenant_state import TenantCalls, TenantState, cache_usage
from vpnctl.controller.tenant_tasks import TenantTasks
from vpnctl.kube import ApiError, Clock, KubeconfigError, KubeObject, WatchMetrics
from vpnctl.reconcile.tenant_refs import desired_by_ref

__all__ = [
    "REASON_APPLY_FAILED",
    "REASON_INSTALLED",
    "REASON_KUBECONFIG_INVALID",
    "REASON_REFUSED",
    "REASON_UNREACHABLE",
    "KubeTenantSide",
]

_log = logging.getLogger(__name__)


class KubeTenantSide:
    """``TenantSide`` against real tenant apiservers. Use as ``async with``: the
    background tasks of every tenant live in a TaskGroup that the context owns.

    - ``registry``: where ``vpnctl_tenant_repairs_total{tenant_namespace,cluster,kind}``,
      ``vpnctl_tenant_csrs_total{tenant_namespace,cluster,decision}`` and
      ``vpnctl_tenant_budget_trips_total{tenant_namespace,cluster,reason}`` are registered.
    - ``watch_metrics``: the controller's shared ``WatchMetrics`` (one per registry);
      made on ``registry`` when not given.
    - ``node_cert_lifetime``: lifetime of the node client certificates signed for CSRs
      (shortened to a CSR's spec.expirationSeconds when that asks for less).
    - ``request_timeout``, ``request_attempts``: per tenant request; an unreachable
      tenant costs about ``request_attempts`` connect attempts of an ``ensure()``.
    - ``backoff_base``/``backoff_cap``: retries of background loops after errors.
    - ``repair_coalesce``: seconds a repair waits after the first drift event, so a
      burst (a deleted namespace) is repaired in one pass.
    - ``max_crashes``/``stable_after``: a task that crashed this many times in a row,
      without ``stable_after`` seconds of running in between, makes ``healthy()`` False.
    - ``budgets``: what one tenant may cost (``vpnctl.controller.budgets``); a tenant
      over budget has all its background work paused, and ``ensure()`` reports it
      (``TenantSideResult.degraded``) without calling its apiserver until it resumes.
    - ``recorder``: where each node certificate is recorded before it is handed out
      (the revocation book, ``controller/revocation_store.py``); a failed record means no
      certificate. None only in tests that look at the tenant cluster alone.
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry,
        clock: Clock,
        rng: random.Random,
        node_cert_lifetime: timedelta,
        watch_metrics: WatchMetrics | None = None,
        request_timeout: float = 10.0,
        request_attempts: int = 3,
        watch_timeout_seconds: int = 120,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        repair_coalesce: float = 0.05,
        max_crashes: int = 5,
        stable_after: float = 60.0,
        budgets: Budgets | None = None,
        recorder: IssuedRecorder | None = None,
    ) -> None:
        if node_cert_lifetime <= timedelta(0):
            raise ValueError(f"node_cert_lifetime must be positive, got {node_cert_lifetime}")
        self._clock = clock
        self._rng = rng
        self._calls = TenantCalls(
            clock=clock,
            rng=rng,
            watch_metrics=watch_metrics or WatchMetrics(registry),
            request_timeout=request_timeout,
            request_attempts=request_attempts,
            watch_timeout_seconds=watch_timeout_seconds,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
        )
        self._tasks = TenantTasks(
            clock=clock,
            backoff=self._calls.backoff,
            max_crashes=max_crashes,
            stable_after=stable_after,
        )
        self._repair = DriftRepair(
            calls=self._calls, registry=registry, repair_coalesce=repair_coalesce
        )
        self._csrs = CsrLoop(
            calls=self._calls,
            registry=registry,
            node_cert_lifetime=node_cert_lifetime,
            recorder=recorder,
        )
        self._nodes = NodeWatch(calls=self._calls)
        self._budget_trips_total = Counter(
            "vpnctl_tenant_budget_trips",
            "Times a tenant went over one of its budgets and its tenant-side work paused.",
            ["tenant_namespace", "cluster", "reason"],
            registry=registry,
        )
        self._budgets = budgets or Budgets()
        self._tenants: dict[TenantRef, TenantState] = {}
        self._group: asyncio.TaskGroup | None = None
        self._closing = False

    # --- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> KubeTenantSide:
        if self._group is not None or self._closing:
            raise RuntimeError("KubeTenantSide can be entered only once")
        group = asyncio.TaskGroup()
        await group.__aenter__()
        self._group = group
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True
        try:
            for tenant in list(self._tenants):
                await self.forget(tenant)
        finally:
            group, self._group = self._group, None
            if group is not None:
                await group.__aexit__(exc_type, exc, tb)

    def healthy(self) -> bool:
        """For /healthz: running, and no background task has died or keeps crashing.

        Tenant apiservers that don't answer don't count (see the module docstring).
        """
        return self._group is not None and not self._closing and self._tasks.healthy()

    def repairs(self, tenant: TenantRef) -> int:
        state = self._tenants.get(tenant)
        return state.repairs if state is not None else 0

    def synced(self, tenant: TenantRef) -> bool:
        """True once every watch of the tenant (objects and CSRs) has its first listing."""
        state = self._tenants.get(tenant)
        if state is None or state.lane is None:
            return False
        watchers = [*state.watchers.values(), state.csr_watcher, state.node_watcher]
        return all(w is not None and w.synced.is_set() for w in watchers)

    def task_names(self, tenant: TenantRef) -> list[str]:
        """The names of the tenant's running background tasks (for tests and debugging)."""
        state = self._tenants.get(tenant)
        if state is None:
            return []
        names = [t.get_name() for t in state.tasks if not t.done()]
        return sorted(names + (state.lane.task_names() if state.lane is not None else []))

    def cache_usage(self, tenant: TenantRef) -> tuple[int, int]:
        """(objects, bytes) the tenant's watch caches hold now, CSRs included."""
        state = self._tenants.get(tenant)
        return cache_usage(state) if state is not None else (0, 0)

    def cached_csrs(self, tenant: TenantRef) -> list[KubeObject]:
        """The tenant's node CSRs as cached (for tests and debugging)."""
        state = self._tenants.get(tenant)
        if state is None or state.csr_watcher is None:
            return []
        return state.csr_watcher.store.list()

    def nodes(self, tenant: TenantRef) -> list[KubeObject] | None:
        """The tenant's Nodes (what the plan reads of them), or None while never listed
        (not installed yet, unreachable); see ``tenant_nodes``."""
        state = self._tenants.get(tenant)
        return None if state is None else self._nodes.nodes(state)

    def follow_nodes(self, listener: NodesListener | None) -> None:
        """Call ``listener(tenant)`` when what the plan reads of a tenant's routed Nodes
        changed; None stops it."""
        self._nodes.follow(listener)

    def degraded(self, tenant: TenantRef) -> tuple[str, str] | None:
        """(reason, message) while the tenant is over budget or just resumed; else None."""
        state = self._tenants.get(tenant)
        if state is None or state.budget is None:
            return None
        return state.budget.degraded()

    # --- the TenantSide protocol ----------------------------------------------------------

    async def ensure(
        self,
        *,
        tenant: TenantRef,
        kubeconfig_text: str,
        desired_objects: Sequence[dict[str, Any]],
        ca: certs.Issued,
        machines: Sequence[dict[str, Any]],
        tls_crypt_server_key: bytes,
    ) -> TenantSideResult:
        """Install or update the agent objects; start the watches and the CSR loop once.

        Transport trouble and refusals come back as a result with installed=False, never
        as an exception. A ValueError means a desired object is malformed (our bug).
        ``csr_signed``/``csr_denied`` count this tenant's CSR decisions since its loop
        started (since the last ``forget()``).
        """
        self._check_running()
        desired = desired_by_ref(desired_objects)
        state = self._tenants.get(tenant)
        if state is not None and state.kubeconfig_text != kubeconfig_text:
            _log.info("event=tenant_kubeconfig_changed tenant=%s reconnect=true", tenant)
            await self.forget(tenant)
            state = None
        if state is None:
            try:
                kube = await self._calls.connect(tenant, kubeconfig_text)
            except KubeconfigError as exc:
                _log.warning("event=tenant_kubeconfig_invalid tenant=%s error=%r", tenant, str(exc))
                return TenantSideResult(
                    installed=False,
                    reason=REASON_KUBECONFIG_INVALID,
                    message=(
                        f"{exc}; Cluster API writes this Secret (key value) for the Cluster's "
                        "control plane: check the control plane provider"
                    ),
                )
            state = TenantState(
                ref=tenant,
                kubeconfig_text=kubeconfig_text,
                kube=kube,
                budget=TenantBudget(
                    self._budgets, tenant=str(tenant), clock=self._clock, rng=self._rng
                ),
            )
            self._tenants[tenant] = state

        machines_now = tuple(dict(m) for m in machines)
        if (
            machines_now != state.machines
            or ca != state.ca
            or tls_crypt_server_key != state.tls_crypt_server_key
        ):
            state.csr_backlog.rescan()  # an approved CSR may now be signable
            state.csr_wakeup.set()
        state.machines = machines_now
        state.ca = ca
        state.tls_crypt_server_key = tls_crypt_server_key
        state.desired = desired
        assert state.budget is not None
        if state.budget.paused():
            # Over budget: not one request to this tenant's apiserver until it resumes, so
            # its slow webhooks hold no worker that other tenants' revocations need. The
            # lane picks up the desired state, Machines and CA set above when it resumes.
            installed = state.lane is not None
            return self._result(
                state,
                installed=installed,
                reason=REASON_INSTALLED if installed else REASON_UNREACHABLE,
                message=(
                    f"node agent {'installed' if installed else 'not installed'} in the "
                    "tenant cluster; work there is paused while the tenant is over budget "
                    "(see the Degraded condition)"
                ),
                with_certificates=False,
            )

        try:
            async with asyncio.timeout(state.budget.budgets.max_call_seconds):
                async with state.lock:
                    written = await apply_all(self._calls, state)
        except TimeoutError:
            return self._too_slow(state)
        except ApiError as exc:
            result = result_for_error(exc, tenant=tenant, server=state.kube.server)
            _log.warning(
                "event=tenant_install_failed tenant=%s reason=%s error=%r",
                tenant,
                result.reason,
                str(exc),
            )
            return self._result(
                state, installed=False, reason=result.reason, message=result.message
            )
        self._sync_background(state)
        if written:
            _log.info(
                "event=tenant_agent_applied tenant=%s objects=%d written=%d",
                tenant,
                len(desired),
                written,
            )
        return self._result(
            state,
            installed=True,
            reason=REASON_INSTALLED,
            message=(
                f"node agent installed in the tenant cluster ({len(desired)} objects, "
                f"{written} written now, {state.repairs} put back after tenant changes)"
            ),
        )

    def _result(
        self,
        state: TenantState,
        *,
        installed: bool,
        reason: str,
        message: str,
        degraded: tuple[str, str] | None = None,
        with_certificates: bool = True,
    ) -> TenantSideResult:
        """What ``ensure()`` returns: the install state, and what the CSR loop did.
        ``degraded``: the budget's, unless given."""
        assert state.budget is not None
        return TenantSideResult(
            installed=installed,
            reason=reason,
            message=message,
            csr_signed=state.signed,
            csr_denied=state.denied,
            signed=self._csrs.signed(state),
            degraded=degraded if degraded is not None else state.budget.degraded(),
            certificates=self._csrs.certificates(state) if with_certificates else (),
        )

    def _too_slow(self, state: TenantState) -> TenantSideResult:
        """The result of an ensure() cut after ``max_call_seconds``; one too many of those
        pauses the tenant."""
        assert state.budget is not None
        limit = state.budget.budgets.max_call_seconds
        _log.warning("event=tenant_too_slow tenant=%s cut_after=%.1fs", state.ref, limit)
        degraded = state.budget.degraded()
        try:
            state.budget.take_slow_call()
        except OverBudget as over:
            degraded = (over.reason, over.message)
            if state.lane is not None and state.lane.running:
                state.lane.interrupt(over)
            else:  # paused already, or never installed: no lane to stop
                trip(state.budget, over, name=str(state.ref))
                self._count_trip(state, over)
        return self._result(
            state,
            installed=False,
            reason=REASON_UNREACHABLE,
            message=(
                f"the tenant apiserver {state.kube.server} of Cluster {state.ref} took longer "
                f"than {limit:g}s to install the node agent (slow admission webhooks, or a "
                "slow apiserver); retrying with backoff"
            ),
            degraded=degraded,
        )

    def _count_trip(self, state: TenantState, over: OverBudget) -> None:
        self._budget_trips_total.labels(
            tenant_namespace=state.ref.namespace, cluster=state.ref.cluster, reason=over.reason
        ).inc()

    def machines_changed(self, tenant: TenantRef, machines: Sequence[dict[str, Any]]) -> None:
        """The CSR loop decides with MACHINES from now on (see ``TenantSide``)."""
        state = self._tenants.get(tenant)
        if state is None:
            return
        machines_now = tuple(dict(m) for m in machines)
        if machines_now != state.machines:
            state.machines = machines_now
            state.csr_backlog.rescan()  # a pending CSR may now be decidable, or deniable
            state.csr_wakeup.set()

    async def forget(self, tenant: TenantRef) -> None:
        """Stop the tenant's watches and loops, close its client, drop its metrics."""
        state = self._tenants.pop(tenant, None)
        if state is None:
            return
        for task in state.tasks:
            task.cancel()
        if state.tasks:
            await asyncio.wait(state.tasks)
        for task in state.tasks:
            self._tasks.discard(task)
        await state.kube.close()
        self._repair.forget(state)
        self._csrs.forget(state)
        for reason in (REASON_CACHE, REASON_CSR_RATE, REASON_REPAIR_RATE, REASON_SLOW):
            with contextlib.suppress(KeyError):
                self._budget_trips_total.remove(tenant.namespace, tenant.cluster, reason)
        _log.info("event=tenant_forgotten tenant=%s tasks_stopped=%d", tenant, len(state.tasks))

    async def cleanup(self, *, tenant: TenantRef, kubeconfig_text: str | None) -> bool:
        """Delete our objects in the tenant cluster; True once none is left.

        ``kubeconfig_text=None``: the caller gave up on the tenant cluster while its
        Cluster is being deleted; True at once (see the module docstring). Errors are
        logged and give False, so the caller tries again later.
        """
        self._check_running()
        await self.forget(tenant)
        if kubeconfig_text is None:
            _log.warning(
                "event=tenant_cleanup_skipped tenant=%s why=%r",
                tenant,
                "no kubeconfig: the tenant cluster is gone or unreachable while its Cluster "
                "is deleted; its objects go with it",
            )
            return True
        return await clean_tenant(self._calls, tenant, kubeconfig_text)

    # --- background tasks -----------------------------------------------------------------

    def _check_running(self) -> None:
        if self._group is None or self._closing:
            raise RuntimeError("KubeTenantSide is not running: use it inside `async with`")

    def _spawn(
        self, state: TenantState, name: str, body: Callable[[], Awaitable[None]]
    ) -> asyncio.Task[None]:
        assert self._group is not None  # checked by ensure()
        task = self._tasks.spawn(self._group, name, body)
        state.tasks.append(task)
        return task

    def _sync_background(self, state: TenantState) -> None:
        """Start the tenant's lane (once); while it runs, follow changes in the kinds we
        install with the watches (a paused lane picks them up when it resumes)."""
        if state.lane is None:
            assert state.budget is not None  # set by ensure()
            state.lane = Lane(
                name=str(state.ref),
                budget=state.budget,
                clock=self._clock,
                start=lambda lane: self._start_lane(state, lane),
                on_pause=lambda: self._drop_caches(state),
                on_trip=lambda over, _delay: self._count_trip(state, over),
            )
            self._spawn(state, f"tenant {state.ref} lane", state.lane.run)
        elif state.lane.running:
            self._repair.sync_watches(state, state.lane)

    def _drop_caches(self, state: TenantState) -> None:
        self._nodes.keep_last(state)
        state.node_watcher = None
        state.watchers.clear()
        state.watch_tasks.clear()
        state.csr_watcher = None
        state.csr_backlog.rescan()

    def _start_lane(self, state: TenantState, lane: Lane) -> None:
        """The tenant's background work: what its lane (re)starts (see ``tenant_lane``)."""
        self._drop_caches(state)  # after a crash, too
        self._repair.sync_watches(state, lane)
        lane.spawn("repair", self._repair.loop(state))
        self._csrs.start(state, lane)
        self._nodes.start(state, lane)
        _log.info(
            "event=tenant_watches_started tenant=%s kinds=%s",
            state.ref,
            ",".join(sorted(s.res.kind for s in state.watchers)),
        )
