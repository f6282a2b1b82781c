"""The tenant-cluster side of the controller: install the node agent, keep it installed,
and answer the nodes' certificate requests.

Why it is a long-lived object rather than a function of one reconcile: a tenant can
delete or edit what we put in its cluster at any moment, and a node asks for its
certificate whenever it (re)starts. Waiting for the next periodic resync would leave a
node unreachable for minutes, so for every tenant this keeps, next to one cached client:

- watches (``vpnctl.kube.Watcher``) on each kind we install, filtered by our labels; an
  event that shows drift wakes a repair pass, which re-reads the object and re-applies
  the last desired version (server-side apply, field manager ``vpnctl``), counts it in
  ``vpnctl_tenant_repairs_total{namespace,cluster,kind}`` and logs it with its latency;
- a watch on CertificateSigningRequests of signer ``vpnctl.io/node`` and a loop that
  decides each pending one (``vpnctl.reconcile.csr.decide_csr``, with the Machines the
  last ``ensure()`` or ``machines_changed()`` passed), then approves and signs it with
  the tenant CA, or denies it with the reason (``controller/csr_signer.py``: every call
  is bound to the decided object's uid and resourceVersion, and each certificate is in
  the revocation book before it is handed out). The serial of every node certificate it
  signed, or finds in an issued CSR (signed before a restart), is reported by
  ``ensure()`` in ``TenantSideResult.signed``/``certificates`` until it expires.

A tenant is hostile input, and one tenant must not cost the others (issue 9): each
tenant has budgets (``vpnctl.controller.budgets``: cached objects and bytes, CSR
decisions and repairs per minute). The CSR watch asks the apiserver for our signer only
(a field selector), its cache drops oversize requests (such a CSR is denied
``RequestTooLarge``), and the CSR loop looks only at CSRs that changed
(``csr_backlog``). A tenant over budget has all its background work paused and its
caches dropped (``tenant_lane``); until it resumes, ``ensure()`` sends it no request and
reports it ``degraded``, so its slow webhooks hold no reconcile worker.

Every background task runs in one TaskGroup owned by the object (``async with``), under
a supervisor that logs a crash with its traceback and restarts the task with backoff.
API errors never crash a task: the loops retry them with backoff themselves. So nothing
dies silently, and ``healthy()`` (for /healthz) turns False when a task keeps crashing.
A tenant whose apiserver is down does *not* make the controller unhealthy: that is the
tenant's problem, reported by ``ensure()`` as ``TenantUnreachable``; restarting the
controller would not fix it and would hurt every other tenant.

Choices a reader may wonder about:

- ``ensure()`` reads from the watch caches when they are synced, so a resync with
  nothing changed sends no request at all; without a cache (first install) it GETs.
  Every write is preceded by ``diff.needs_update``: no change, no write.
- Watches start only after a first successful install: watching an apiserver that was
  never reachable would only add retry noise to the ``TenantUnreachable`` condition.
- ``cleanup()`` first ``forget()``s the tenant, or drift repair would put back what it
  deletes. It deletes our namespaces (which takes the namespaced objects with them),
  our cluster-scoped objects, and anything namespaced of ours outside our namespaces,
  all found by label (the desired set is not needed, so it works after a restart), and
  returns True only once a fresh listing finds nothing. With ``kubeconfig_text=None`` it
  returns True at once: the caller decided the tenant cluster is gone or unreachable
  while its Cluster is being deleted (CAPI deletes the control plane at the same
  time), and a Cluster must not stay undeletable forever because of it. The objects
  die with the tenant cluster.
- Node CSRs are the nodes', not ours: cleanup leaves them alone, and the loop never
  denies a CSR of another signer (the kubelet's own live in the same API).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Literal, TypeVar

from prometheus_client import CollectorRegistry, Counter

import certs
from vpnctl.controller.budgets import (
    REASON_CACHE,
    REASON_CSR_RATE,
    REASON_CSR_TOO_LARGE,
    REASON_REPAIR_RATE,
    REASON_SLOW,
    Budgets,
    GuardedListing,
    OverBudget,
    TenantBudget,
    dropped_bytes,
    object_bytes,
    slim_csr,
)
from vpnctl.controller.csr_backlog import CsrBacklog
from vpnctl.controller.csr_signer import IssuedRecorder, handle_csr
from vpnctl.controller.interfaces import TenantRef, TenantSideResult
from vpnctl.controller.tenant_lane import Lane
from vpnctl.kube import (
    CERTIFICATE_SIGNING_REQUEST,
    CLUSTER_ROLE,
    CLUSTER_ROLE_BINDING,
    CONFIG_MAP,
    DAEMON_SET,
    DEPLOYMENT,
    NAMESPACE,
    ROLE,
    ROLE_BINDING,
    SECRET,
    SERVICE,
    SERVICE_ACCOUNT,
    ApiError,
    Clock,
    Forbidden,
    Kube,
    KubeconfigError,
    KubeObject,
    NotFound,
    Resource,
    TooManyRequests,
    TransportError,
    Unauthorized,
    Watcher,
    WatchMetrics,
    with_retries,
)
from vpnctl.kube.retry import backoff
from vpnctl.reconcile.csr import NODE_SIGNER, csr_state
from vpnctl.reconcile.diff import needs_update
from vpnctl.reconcile.errors import ReconcileError
from vpnctl.reconcile.names import CLUSTER_LABEL, MANAGED_BY, MANAGED_BY_LABEL
from vpnctl.reconcile.revocations import IssuedCert

_log = logging.getLogger(__name__)

T = TypeVar("T")

FIELD_MANAGER = "vpnctl"

# Reasons of TenantSideResult (they become the AgentInstalled condition's reason).
REASON_INSTALLED = "Installed"
REASON_UNREACHABLE = "TenantUnreachable"  # transport trouble, 5xx, 429 after retries
REASON_KUBECONFIG_INVALID = "KubeconfigInvalid"  # the Secret's text is no usable kubeconfig
REASON_REFUSED = "TenantRefused"  # 401/403: the kubeconfig's credentials may not do it
REASON_APPLY_FAILED = "AgentApplyFailed"  # any other refusal (422, a terminating namespace)

# The kinds we know how to install, watch and clean up in a tenant cluster.
KNOWN_RESOURCES: tuple[Resource, ...] = (
    NAMESPACE,
    SERVICE_ACCOUNT,
    ROLE,
    ROLE_BINDING,
    CLUSTER_ROLE,
    CLUSTER_ROLE_BINDING,
    CONFIG_MAP,
    SECRET,
    SERVICE,
    DAEMON_SET,
    DEPLOYMENT,
)
_BY_TYPE = {(r.api_version, r.kind): r for r in KNOWN_RESOURCES}
# Node CSRs per list page: a tenant's may be big (until slim_csr drops the request), and
# a page is held in full before that.
_CSR_PAGE_SIZE = 25


# --- pure helpers -------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectRef:
    """Which object: its resource, namespace ("" when cluster-scoped) and name."""

    res: Resource
    namespace: str
    name: str

    def __str__(self) -> str:
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{self.res.kind} {where}"


@dataclass(frozen=True)
class WatchSpec:
    """One watch: a resource, in one namespace or (None) all of them / cluster-scoped."""

    res: Resource
    namespace: str | None


def resource_for(obj: Mapping[str, Any]) -> Resource:
    """The Resource of a desired object, from its apiVersion and kind.

    Raises ValueError for a kind this module doesn't know: a desired-state builder
    produced something new, and ``KNOWN_RESOURCES`` needs it too.
    """
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    res = _BY_TYPE.get((str(api_version), str(kind)))
    if res is None:
        known = ", ".join(f"{r.api_version}/{r.kind}" for r in KNOWN_RESOURCES)
        raise ValueError(
            f"tenant_side can't install {api_version}/{kind} (known: {known}); "
            "add its Resource to KNOWN_RESOURCES in vpnctl/controller/tenant_side.py"
        )
    return res


def object_ref(obj: Mapping[str, Any]) -> ObjectRef:
    res = resource_for(obj)
    meta = obj.get("metadata") or {}
    name = str(meta.get("name") or "")
    namespace = str(meta.get("namespace") or "")
    if not name:
        raise ValueError(f"desired {res.kind} has no metadata.name")
    if res.namespaced != bool(namespace):
        scope = "needs metadata.namespace" if res.namespaced else "is cluster-scoped"
        raise ValueError(f"desired {res.kind} {name!r} {scope}")
    return ObjectRef(res, namespace, name)


def desired_by_ref(objects: Iterable[Mapping[str, Any]]) -> dict[ObjectRef, KubeObject]:
    """The desired objects by ref, in the order given (the order to apply them)."""
    out: dict[ObjectRef, KubeObject] = {}
    for obj in objects:
        ref = object_ref(obj)
        if ref in out:
            raise ValueError(f"desired objects name {ref} twice")
        out[ref] = dict(obj)
    return out


def label_selector(cluster: str) -> str:
    """What selects our objects in a tenant cluster (the builders set both labels)."""
    return f"{MANAGED_BY_LABEL}={MANAGED_BY},{CLUSTER_LABEL}={cluster}"


def watch_specs(refs: Iterable[ObjectRef]) -> tuple[WatchSpec, ...]:
    """One watch per kind: in the kind's one namespace, or in all when there are several."""
    namespaces: dict[Resource, set[str]] = {}
    for ref in refs:
        namespaces.setdefault(ref.res, set()).add(ref.namespace)
    specs = []
    for res, found in namespaces.items():
        only = next(iter(found)) if len(found) == 1 else ""
        specs.append(WatchSpec(res, only if res.namespaced and only else None))
    return tuple(specs)


def covers(spec: WatchSpec, ref: ObjectRef) -> bool:
    return spec.res == ref.res and (spec.namespace is None or spec.namespace == ref.namespace)


def drifted(
    desired: Mapping[ObjectRef, KubeObject], live: Mapping[ObjectRef, KubeObject | None]
) -> list[ObjectRef]:
    """Desired objects whose live state (``live``: only what is known; None = absent)
    needs a write, in the desired order."""
    return [ref for ref, obj in desired.items() if ref in live and needs_update(live[ref], obj)]


@dataclass(frozen=True)
class SignedCert:
    """A node certificate of the tenant CA, as ``TenantSideResult.signed`` reports it."""

    node: str
    serial: str  # lower-case hex, as status.allocations keeps it
    not_before: datetime
    not_after: datetime
    machine: str | None = None  # the Machine that vouched, when this process signed it


def issued_certificate(
    csr: Mapping[str, Any], *, ca_pem: bytes, now: datetime
) -> SignedCert | None:
    """The node certificate in an issued CSR's status.certificate when it is a client
    certificate of ``ca_pem`` valid at ``now``; None for anything else (not issued, not
    PEM, another CA's, expired)."""
    status = csr.get("status")
    encoded = status.get("certificate") if isinstance(status, Mapping) else None
    if not isinstance(encoded, str) or not encoded:
        return None
    try:
        chain = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
    end = b"-----END CERTIFICATE-----"
    if end not in chain:
        return None
    leaf = chain[: chain.index(end) + len(end)] + b"\n"
    try:
        info = certs.validate(leaf, ca_pem=ca_pem, now=now, usage="client")
    except (certs.PKIError, ValueError):
        return None
    return SignedCert(
        node=info.common_name,
        serial=format(info.serial, "x"),
        not_before=info.not_before,
        not_after=info.not_after,
    )


def signed_report(issued: Iterable[SignedCert], *, now: datetime) -> tuple[tuple[str, str], ...]:
    """(node, serial) of the certificates not yet expired, oldest first."""
    live = sorted((c for c in issued if c.not_after > now), key=lambda c: (c.not_before, c.serial))
    return tuple((c.node, c.serial) for c in live)


def signer_of(obj: Mapping[str, Any]) -> str:
    spec = obj.get("spec")
    return str(spec.get("signerName") or "") if isinstance(spec, Mapping) else ""


def result_for_error(exc: ApiError, *, tenant: TenantRef, server: str) -> TenantSideResult:
    """The install state for an API error met while installing (retries already spent)."""
    secret = f"Secret {tenant.namespace}/{tenant.cluster}-kubeconfig"
    if isinstance(exc, TransportError | TooManyRequests):
        return TenantSideResult(
            installed=False,
            reason=REASON_UNREACHABLE,
            message=(
                f"the tenant apiserver {server} of Cluster {tenant} did not answer ({exc}); "
                f"the agent is installed as soon as it does: check that the control plane "
                f"runs and that {secret} points at it"
            ),
        )
    if isinstance(exc, Unauthorized | Forbidden):
        return TenantSideResult(
            installed=False,
            reason=REASON_REFUSED,
            message=(
                f"the tenant apiserver {server} of Cluster {tenant} refused the credentials "
                f"of {secret} ({exc}); they need to be the cluster admin's, as Cluster API "
                "writes them"
            ),
        )
    return TenantSideResult(
        installed=False,
        reason=REASON_APPLY_FAILED,
        message=(
            f"installing the node agent in the tenant cluster of Cluster {tenant} failed "
            f"({exc}); it is retried, and this clears once the tenant cluster accepts it"
        ),
    )


# --- per-tenant state ---------------------------------------------------------------------


@dataclass(eq=False)
class _TaskHealth:
    name: str
    started_at: float
    crashes_in_a_row: int = 0


class Supervisor:
    """Runs background bodies that should never end, in a TaskGroup, and knows whether
    they are well.

    A body that raises (or returns) is logged with its traceback and started again after
    a jittered backoff; only cancellation ends it. ``healthy()`` is False while a task
    has crashed ``max_crashes`` times in a row without ``stable_after`` seconds of
    running in between, or when a task ended anyway.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        rng: random.Random,
        backoff_base: float,
        backoff_cap: float,
        max_crashes: int,
        stable_after: float,
    ) -> None:
        self._clock = clock
        self._rng = rng
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._max_crashes = max_crashes
        self._stable_after = stable_after
        self._health: dict[asyncio.Task[None], _TaskHealth] = {}

    def spawn(
        self, group: asyncio.TaskGroup, name: str, body: Callable[[], Awaitable[None]]
    ) -> asyncio.Task[None]:
        health = _TaskHealth(name=name, started_at=self._clock.monotonic())
        task = group.create_task(self._run(health, body), name=name)
        self._health[task] = health
        return task

    def discard(self, task: asyncio.Task[None]) -> None:
        """Stop watching ``task`` (it is being cancelled on purpose)."""
        self._health.pop(task, None)

    def crashes(self, task: asyncio.Task[None]) -> int:
        health = self._health.get(task)
        return health.crashes_in_a_row if health is not None else 0

    def healthy(self) -> bool:
        now = self._clock.monotonic()
        for task, health in self._health.items():
            if task.done():
                return False  # ended without discard(): cancelled by someone else
            if (
                health.crashes_in_a_row >= self._max_crashes
                and now - health.started_at < self._stable_after
            ):
                return False
        return True

    async def _run(self, health: _TaskHealth, body: Callable[[], Awaitable[None]]) -> None:
        while True:
            health.started_at = self._clock.monotonic()
            try:
                await body()
                raise RuntimeError(f"{health.name} returned; it should run until cancelled")
            except Exception:
                ran = self._clock.monotonic() - health.started_at
                health.crashes_in_a_row = (
                    1 if ran >= self._stable_after else health.crashes_in_a_row + 1
                )
                delay = backoff(
                    attempt=health.crashes_in_a_row,
                    base=self._backoff_base,
                    cap=self._backoff_cap,
                    rng=self._rng,
                )
                _log.exception(
                    "event=tenant_task_crashed task=%r crashes_in_a_row=%d retry_in=%.1fs",
                    health.name,
                    health.crashes_in_a_row,
                    delay,
                )
                await self._clock.sleep(delay)


@dataclass(eq=False)
class _Tenant:
    ref: TenantRef
    kubeconfig_text: str = field(repr=False)  # holds the tenant admin's credentials
    kube: Kube
    desired: dict[ObjectRef, KubeObject] = field(default_factory=dict)
    machines: tuple[KubeObject, ...] = ()
    ca: certs.Issued | None = None
    watchers: dict[WatchSpec, Watcher] = field(default_factory=dict)
    watch_tasks: dict[WatchSpec, asyncio.Task[None]] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    budget: TenantBudget | None = None
    lane: Lane | None = None  # its background work, started after a first install
    csr_watcher: Watcher | None = None
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


def _cache_usage(state: _Tenant, *, csrs: bool = True) -> tuple[int, int]:
    """(objects, bytes) in the tenant's watch caches; without the CSRs' if not ``csrs``."""
    watchers = [*state.watchers.values(), state.csr_watcher if csrs else None]
    stores = [w.store for w in watchers if w is not None]
    return sum(len(s) for s in stores), sum(s.bytes for s in stores)


class KubeTenantSide:
    """``TenantSide`` against real tenant apiservers. Use as ``async with``: the
    background tasks of every tenant live in a TaskGroup that the context owns.

    - ``registry``: where ``vpnctl_tenant_repairs_total{namespace,cluster,kind}``,
      ``vpnctl_tenant_csrs_total{namespace,cluster,decision}`` and
      ``vpnctl_tenant_budget_trips_total{namespace,cluster,reason}`` are registered.
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
      (the revocation book, ``controller/revocations.py``); a failed record means no
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
        self._node_cert_lifetime = node_cert_lifetime
        self._recorder = recorder
        self._watch_metrics = watch_metrics or WatchMetrics(registry)
        self._request_timeout = request_timeout
        self._request_attempts = request_attempts
        self._watch_timeout_seconds = watch_timeout_seconds
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._repair_coalesce = repair_coalesce
        self._supervisor = Supervisor(
            clock=clock,
            rng=rng,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            max_crashes=max_crashes,
            stable_after=stable_after,
        )
        self._repairs_total = Counter(
            "vpnctl_tenant_repairs",
            "Objects in tenant clusters put back after the tenant deleted or edited them.",
            ["namespace", "cluster", "kind"],
            registry=registry,
        )
        self._csrs_total = Counter(
            "vpnctl_tenant_csrs",
            "Node CertificateSigningRequests decided in tenant clusters "
            "(signed: approved and signed; denied).",
            ["namespace", "cluster", "decision"],
            registry=registry,
        )
        self._budget_trips_total = Counter(
            "vpnctl_tenant_budget_trips",
            "Times a tenant went over one of its budgets and its tenant-side work paused.",
            ["namespace", "cluster", "reason"],
            registry=registry,
        )
        self._budgets = budgets or Budgets()
        self._tenants: dict[TenantRef, _Tenant] = {}
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
        return self._group is not None and not self._closing and self._supervisor.healthy()

    def repairs(self, tenant: TenantRef) -> int:
        state = self._tenants.get(tenant)
        return state.repairs if state is not None else 0

    def synced(self, tenant: TenantRef) -> bool:
        """True once every watch of the tenant (objects and CSRs) has its first listing."""
        state = self._tenants.get(tenant)
        if state is None or state.lane is None:
            return False
        watchers = [*state.watchers.values(), state.csr_watcher]
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
        return _cache_usage(state) if state is not None else (0, 0)

    def cached_csrs(self, tenant: TenantRef) -> list[KubeObject]:
        """The tenant's node CSRs as cached (for tests and debugging)."""
        state = self._tenants.get(tenant)
        if state is None or state.csr_watcher is None:
            return []
        return state.csr_watcher.store.list()

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
                kube = await self._connect(tenant, kubeconfig_text)
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
            state = _Tenant(
                ref=tenant,
                kubeconfig_text=kubeconfig_text,
                kube=kube,
                budget=TenantBudget(
                    self._budgets, tenant=str(tenant), clock=self._clock, rng=self._rng
                ),
            )
            self._tenants[tenant] = state

        machines_now = tuple(dict(m) for m in machines)
        if machines_now != state.machines or ca != state.ca:
            state.csr_backlog.rescan()  # an approved CSR may now be signable
            state.csr_wakeup.set()
        state.machines = machines_now
        state.ca = ca
        state.desired = desired
        assert state.budget is not None
        if state.budget.paused():
            # Over budget: not one request to this tenant's apiserver until it resumes, so
            # its slow webhooks hold no worker that other tenants' revocations need. The
            # lane picks up the desired state, Machines and CA set above when it resumes.
            installed = state.lane is not None
            return TenantSideResult(
                installed=installed,
                reason=REASON_INSTALLED if installed else REASON_UNREACHABLE,
                message=(
                    f"node agent {'installed' if installed else 'not installed'} in the "
                    "tenant cluster; work there is paused while the tenant is over budget "
                    "(see the Degraded condition)"
                ),
                csr_signed=state.signed,
                csr_denied=state.denied,
                signed=self._signed(state),
                degraded=state.budget.degraded(),
            )

        try:
            async with asyncio.timeout(state.budget.budgets.max_call_seconds):
                async with state.lock:
                    written = await self._apply_all(state)
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
            return TenantSideResult(
                installed=False,
                reason=result.reason,
                message=result.message,
                csr_signed=state.signed,
                csr_denied=state.denied,
                signed=self._signed(state),
                degraded=state.budget.degraded(),
                certificates=self._certificates(state),
            )
        self._sync_background(state)
        if written:
            _log.info(
                "event=tenant_agent_applied tenant=%s objects=%d written=%d",
                tenant,
                len(desired),
                written,
            )
        return TenantSideResult(
            installed=True,
            reason=REASON_INSTALLED,
            message=(
                f"node agent installed in the tenant cluster ({len(desired)} objects, "
                f"{written} written now, {state.repairs} put back after tenant changes)"
            ),
            csr_signed=state.signed,
            csr_denied=state.denied,
            signed=self._signed(state),
            degraded=state.budget.degraded(),
            certificates=self._certificates(state),
        )

    def _too_slow(self, state: _Tenant) -> TenantSideResult:
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
                delay = state.budget.trip(over)
                self._count_trip(state, over)
                _log.warning(
                    "event=tenant_over_budget tenant=%s reason=%s paused_for=%.1fs message=%r",
                    state.ref,
                    over.reason,
                    delay,
                    over.message,
                )
        return TenantSideResult(
            installed=False,
            reason=REASON_UNREACHABLE,
            message=(
                f"the tenant apiserver {state.kube.server} of Cluster {state.ref} took longer "
                f"than {limit:g}s to install the node agent (slow admission webhooks, or a "
                "slow apiserver); retrying with backoff"
            ),
            csr_signed=state.signed,
            csr_denied=state.denied,
            signed=self._signed(state),
            degraded=degraded,
            certificates=self._certificates(state),
        )

    def _count_trip(self, state: _Tenant, over: OverBudget) -> None:
        self._budget_trips_total.labels(
            namespace=state.ref.namespace, cluster=state.ref.cluster, reason=over.reason
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
            self._supervisor.discard(task)
        await state.kube.close()
        for kind in state.repaired_kinds:
            with contextlib.suppress(KeyError):
                self._repairs_total.remove(tenant.namespace, tenant.cluster, kind)
        for decision in ("signed", "denied"):
            with contextlib.suppress(KeyError):
                self._csrs_total.remove(tenant.namespace, tenant.cluster, decision)
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
        try:
            kube = await self._connect(tenant, kubeconfig_text)
        except KubeconfigError as exc:
            _log.warning("event=tenant_cleanup_failed tenant=%s error=%r", tenant, str(exc))
            return False
        async with kube:
            try:
                remaining = await self._delete_ours(kube, tenant)
            except ApiError as exc:
                _log.warning("event=tenant_cleanup_failed tenant=%s error=%r", tenant, str(exc))
                return False
        if remaining:
            _log.info("event=tenant_cleanup_pending tenant=%s remaining=%d", tenant, remaining)
            return False
        _log.info("event=tenant_cleanup_done tenant=%s", tenant)
        return True

    # --- installing -----------------------------------------------------------------------

    def _check_running(self) -> None:
        if self._group is None or self._closing:
            raise RuntimeError("KubeTenantSide is not running: use it inside `async with`")

    async def _connect(self, tenant: TenantRef, text: str) -> Kube:
        return await Kube.from_kubeconfig_text(
            text,
            name=f"Secret {tenant.namespace}/{tenant.cluster}-kubeconfig",
            request_timeout=self._request_timeout,
        )

    async def _retrying(self, fn: Callable[[], Awaitable[T]], *, conflicts: bool = False) -> T:
        return await with_retries(
            fn,
            rng=self._rng,
            clock=self._clock,
            attempts=self._request_attempts,
            base=0.2,
            cap=2.0,
            conflicts=conflicts,
            logger=_log,
        )

    def _cached(self, state: _Tenant, ref: ObjectRef) -> tuple[bool, KubeObject | None]:
        """(known, object) from a synced watch cache that covers ``ref``."""
        for spec, watcher in state.watchers.items():
            if covers(spec, ref) and watcher.synced.is_set():
                return True, watcher.store.get(ref.name, ref.namespace or None)
        return False, None

    async def _read(self, state: _Tenant, ref: ObjectRef) -> KubeObject | None:
        return await self._retrying(
            lambda: state.kube.get(ref.res, ref.name, ref.namespace or None)
        )

    async def _apply(self, state: _Tenant, ref: ObjectRef, obj: KubeObject) -> None:
        await self._retrying(lambda: state.kube.apply(ref.res, obj, field_manager=FIELD_MANAGER))

    async def _apply_all(self, state: _Tenant) -> int:
        """Apply what differs, in order; returns how many objects were written."""
        written = 0
        for ref, obj in state.desired.items():
            known, cached = self._cached(state, ref)
            if known and not needs_update(cached, obj):
                continue
            live = await self._read(state, ref)
            if not needs_update(live, obj):
                continue
            await self._apply(state, ref, obj)
            written += 1
        return written

    # --- background tasks -----------------------------------------------------------------

    def _spawn(
        self, state: _Tenant, name: str, body: Callable[[], Awaitable[None]]
    ) -> asyncio.Task[None]:
        assert self._group is not None  # checked by ensure()
        task = self._supervisor.spawn(self._group, name, body)
        state.tasks.append(task)
        return task

    def _backoff(self, attempt: int) -> float:
        return backoff(
            attempt=attempt, base=self._backoff_base, cap=self._backoff_cap, rng=self._rng
        )

    def _sync_background(self, state: _Tenant) -> None:
        """Start the tenant's lane (once); while it runs, follow changes in the kinds we
        install with the watches (a paused lane picks them up when it resumes)."""
        if state.lane is None:
            assert state.budget is not None  # set by ensure()
            tenant = state.ref
            state.lane = Lane(
                name=str(tenant),
                budget=state.budget,
                clock=self._clock,
                start=lambda lane: self._start_lane(state, lane),
                on_pause=lambda: self._drop_caches(state),
                on_trip=lambda over, _delay: self._count_trip(state, over),
            )
            self._spawn(state, f"tenant {tenant} lane", state.lane.run)
        elif state.lane.running:
            self._sync_watches(state, state.lane)

    def _drop_caches(self, state: _Tenant) -> None:
        state.watchers.clear()
        state.watch_tasks.clear()
        state.csr_watcher = None
        state.csr_backlog.rescan()

    def _start_lane(self, state: _Tenant, lane: Lane) -> None:
        """The tenant's background work: what its lane (re)starts (see ``tenant_lane``)."""
        assert state.budget is not None
        self._drop_caches(state)  # after a crash, too
        self._sync_watches(state, lane)
        lane.spawn("repair", self._repair_loop(state))
        csr_watcher = Watcher(
            # The listing stops as soon as it is over budget, not after it is complete.
            GuardedListing(
                state.kube, state.budget, others=lambda: _cache_usage(state, csrs=False)
            ),
            CERTIFICATE_SIGNING_REQUEST,
            None,
            on_event=self._csr_handler(state),
            clock=self._clock,
            metrics=self._watch_metrics,
            rng=self._rng,
            # Only ours: the kubelets' own CSRs never reach this controller.
            field_selector=f"spec.signerName={NODE_SIGNER}",
            page_size=_CSR_PAGE_SIZE,
            transform=functools.partial(
                slim_csr, max_request_bytes=state.budget.budgets.max_csr_request_bytes
            ),
            sizer=object_bytes,
            timeout_seconds=self._watch_timeout_seconds,
            backoff_base=self._backoff_base,
            backoff_cap=self._backoff_cap,
        )
        state.csr_watcher = csr_watcher
        lane.spawn("watch csrs", csr_watcher.run())
        lane.spawn("csr", self._csr_loop(state))
        _log.info(
            "event=tenant_watches_started tenant=%s kinds=%s",
            state.ref,
            ",".join(sorted(s.res.kind for s in state.watchers)),
        )

    def _sync_watches(self, state: _Tenant, lane: Lane) -> None:
        tenant = state.ref
        wanted = set(watch_specs(state.desired))
        for spec in wanted - set(state.watchers):
            watcher = Watcher(
                state.kube,
                spec.res,
                spec.namespace,
                on_event=self._object_handler(state, spec),
                clock=self._clock,
                metrics=self._watch_metrics,
                rng=self._rng,
                label_selector=label_selector(tenant.cluster),
                sizer=object_bytes,
                timeout_seconds=self._watch_timeout_seconds,
                backoff_base=self._backoff_base,
                backoff_cap=self._backoff_cap,
            )
            state.watchers[spec] = watcher
            state.watch_tasks[spec] = lane.spawn(
                f"watch {spec.res.label}", self._watch_body(state, watcher)()
            )
        for spec in set(state.watchers) - wanted:
            del state.watchers[spec]
            state.watch_tasks.pop(spec).cancel()

    def _check_cache(self, state: _Tenant) -> None:
        """Raises OverBudget when the tenant's caches hold too much."""
        assert state.budget is not None
        objects, size = _cache_usage(state)
        state.budget.check_cache(objects=objects, size=size)

    def _watch_body(
        self, state: _Tenant, watcher: Watcher
    ) -> Callable[[], Coroutine[Any, Any, None]]:
        async def body() -> None:
            # After a listing, a desired object that is simply absent gives no event:
            # wake the repair pass once the cache is there, so it looks.
            async with asyncio.TaskGroup() as group:
                group.create_task(watcher.run())
                await watcher.synced.wait()
                state.repair_wakeup.set()

        return body

    def _object_handler(self, state: _Tenant, spec: WatchSpec) -> Callable[[str, KubeObject], None]:
        def on_event(event_type: str, obj: KubeObject) -> None:
            self._check_cache(state)
            meta = obj.get("metadata") or {}
            ref = ObjectRef(spec.res, str(meta.get("namespace") or ""), str(meta.get("name")))
            wanted = state.desired.get(ref)
            if wanted is None:
                return
            if event_type == "DELETED" or needs_update(obj, wanted):
                state.drift_seen.setdefault(ref, self._clock.monotonic())
                state.repair_wakeup.set()

        return on_event

    def _csr_handler(self, state: _Tenant) -> Callable[[str, KubeObject], None]:
        """Only the CSR that changed is looked at again, never the whole cache."""

        def on_event(event_type: str, obj: KubeObject) -> None:
            state.csr_backlog.changed(event_type, obj)
            if event_type != "DELETED":
                self._check_cache(state)
                state.csr_wakeup.set()

        return on_event

    async def _repair_loop(self, state: _Tenant) -> None:
        failures = 0
        while True:
            await state.repair_wakeup.wait()
            await self._clock.sleep(self._repair_coalesce)
            state.repair_wakeup.clear()
            try:
                async with state.lock:
                    await self._repair_pass(state)
                failures = 0
            except ApiError as exc:
                failures += 1
                delay = self._backoff(failures)
                _log.warning(
                    "event=tenant_repair_failed tenant=%s failures=%d retry_in=%.1fs error=%r",
                    state.ref,
                    failures,
                    delay,
                    str(exc),
                )
                state.repair_wakeup.set()
                await self._clock.sleep(delay)

    async def _repair_pass(self, state: _Tenant) -> None:
        assert state.budget is not None
        live: dict[ObjectRef, KubeObject | None] = {}
        for ref in state.desired:
            known, cached = self._cached(state, ref)
            if known:
                live[ref] = cached
        for ref in drifted(state.desired, live):
            wanted = state.desired[ref]
            current = await self._read(state, ref)  # the cache may lag our own last write
            if not needs_update(current, wanted):
                state.drift_seen.pop(ref, None)
                continue
            state.budget.take_repair()
            await self._apply(state, ref, wanted)
            seen = state.drift_seen.pop(ref, None)
            latency = self._clock.monotonic() - seen if seen is not None else 0.0
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

    # --- node CSRs -------------------------------------------------------------------------

    async def _csr_loop(self, state: _Tenant) -> None:
        failures = 0
        while True:
            await state.csr_wakeup.wait()
            state.csr_wakeup.clear()
            watcher = state.csr_watcher
            if watcher is None or not watcher.synced.is_set():
                continue  # its first listing wakes us again
            failed = await self._csr_pass(state, state.csr_backlog.take(watcher.store))
            if not failed:
                failures = 0
                continue
            state.csr_backlog.retry(failed)
            failures += 1
            delay = self._backoff(failures)
            _log.warning(
                "event=tenant_csr_retry tenant=%s failures=%d csrs=%d retry_in=%.1fs",
                state.ref,
                failures,
                len(failed),
                delay,
            )
            state.csr_wakeup.set()
            await self._clock.sleep(delay)

    async def _csr_pass(self, state: _Tenant, csrs: Sequence[KubeObject]) -> set[str]:
        """Decide each CSR given (the backlog's: not decided yet); the names of those that
        failed (to be retried). Every CSR waiting for a decision takes one from the tenant's budget
        (OverBudget ends the pass, and pauses the tenant)."""
        assert state.budget is not None
        failed: set[str] = set()
        for csr in csrs:
            meta = csr.get("metadata") or {}
            name = str(meta.get("name") or "")
            if signer_of(csr) == NODE_SIGNER and csr_state(csr) in ("pending", "approved"):
                state.budget.take_csr_decision()
            try:
                if dropped_bytes(csr):
                    await self._deny_oversize(state, csr)
                else:
                    await self._handle_csr(state, csr)
                state.csr_backlog.decided(csr)
            except (ApiError, certs.PKIError, ReconcileError) as exc:
                # ReconcileError: the revocation book could not record the certificate
                # (missing, unreadable, contended), so nothing was handed out; retried.
                failed.add(name)
                _log.warning(
                    "event=tenant_csr_failed tenant=%s csr=%s error=%r",
                    state.ref,
                    name,
                    str(exc),
                )
        return failed

    async def _deny_oversize(self, state: _Tenant, csr: KubeObject) -> None:
        """Deny a pending CSR whose request was too big to cache (see ``budgets``)."""
        assert state.budget is not None
        name = str((csr.get("metadata") or {}).get("name"))
        where = csr_state(csr)
        if signer_of(csr) != NODE_SIGNER or where not in ("pending", "approved"):
            return
        limit = state.budget.budgets.max_csr_request_bytes
        message = (
            f"spec.request is {dropped_bytes(csr)} bytes, over the {limit} bytes vpnctl "
            "accepts for a node CSR (a node's is under 1 KiB); the node agent creates a "
            "new one"
        )
        if where == "approved":
            # Approved by someone else: a CSR can't be denied too; we just never sign it.
            _log.warning(
                "event=tenant_csr_not_signed tenant=%s csr=%s reason=%s message=%r",
                state.ref,
                name,
                REASON_CSR_TOO_LARGE,
                message,
            )
            return
        try:
            await self._retrying(
                lambda: state.kube.deny_csr(
                    csr, signer=NODE_SIGNER, reason=REASON_CSR_TOO_LARGE, message=message
                ),
            )
        except NotFound:
            return
        self._count_csr(state, "denied")
        _log.info(
            "event=tenant_csr_denied tenant=%s csr=%s reason=%s message=%r",
            state.ref,
            name,
            REASON_CSR_TOO_LARGE,
            message,
        )

    async def _handle_csr(self, state: _Tenant, csr: KubeObject) -> None:
        """Decide one CSR (and sign it) unless that is done; raises what should be retried
        (a Conflict: the CSR changed since it was read; the next pass reads it anew)."""
        name = str((csr.get("metadata") or {}).get("name"))
        assert state.ca is not None  # set by ensure() before any loop starts
        if signer_of(csr) == NODE_SIGNER and csr_state(csr) == "issued":
            # Signed before (maybe by a controller that restarted since): its serial
            # must still be known to be revoked with its Machine.
            self._record(state, csr, state.ca)
            return
        handled = await handle_csr(
            state.kube,
            csr,
            tenant=state.ref,
            ca=state.ca,
            machines=state.machines,
            now=self._clock.now(),
            lifetime=self._node_cert_lifetime,
            recorder=self._recorder,
            retrying=self._retrying,
        )
        decision = handled.decision
        if handled.outcome == "denied" and decision is not None:
            self._count_csr(state, "denied")
            _log.info(
                "event=tenant_csr_denied tenant=%s csr=%s node=%s reason=%s message=%r",
                state.ref,
                name,
                decision.node_name,
                decision.reason,
                decision.message,
            )
        elif handled.outcome == "signed" and handled.cert is not None and decision is not None:
            cert = handled.cert
            state.issued[format(cert.serial, "x")] = SignedCert(
                node=cert.node,
                serial=format(cert.serial, "x"),
                not_before=self._clock.now(),
                not_after=cert.not_after,
                machine=cert.machine,
            )
            self._count_csr(state, "signed")
            _log.info(
                "event=tenant_csr_signed tenant=%s csr=%s node=%s machine=%s serial=%x",
                state.ref,
                name,
                decision.node_name,
                decision.machine,
                cert.serial,
            )

    def _record(self, state: _Tenant, csr: KubeObject, ca: certs.Issued) -> None:
        cert = issued_certificate(csr, ca_pem=ca.cert_pem, now=self._clock.now())
        if cert is not None:
            state.issued[cert.serial] = cert

    def _signed(self, state: _Tenant) -> tuple[tuple[str, str], ...]:
        now = self._clock.now()
        for serial in [s for s, c in state.issued.items() if c.not_after <= now]:
            del state.issued[serial]
        return signed_report(state.issued.values(), now=now)

    def _certificates(self, state: _Tenant) -> tuple[IssuedCert, ...]:
        """The certificates of ``_signed`` with their expiry, for the revocation book."""
        self._signed(state)  # drops the expired ones
        return tuple(
            IssuedCert(
                serial=int(c.serial, 16), node=c.node, machine=c.machine, not_after=c.not_after
            )
            for c in state.issued.values()
        )

    def _count_csr(self, state: _Tenant, decision: Literal["signed", "denied"]) -> None:
        if decision == "signed":
            state.signed += 1
        else:
            state.denied += 1
        self._csrs_total.labels(
            namespace=state.ref.namespace, cluster=state.ref.cluster, decision=decision
        ).inc()

    # --- cleanup ---------------------------------------------------------------------------

    async def _delete_ours(self, kube: Kube, tenant: TenantRef) -> int:
        """Delete what carries our labels; returns how many objects still existed."""
        selector = label_selector(tenant.cluster)

        async def listed(res: Resource) -> list[KubeObject]:
            items, _ = await self._retrying(lambda: kube.list(res, label_selector=selector))
            return items

        async def delete(res: Resource, obj: KubeObject) -> None:
            meta = obj.get("metadata") or {}
            if meta.get("deletionTimestamp"):
                return
            name, namespace = str(meta.get("name")), meta.get("namespace")
            await self._retrying(lambda: kube.delete(res, name, namespace))
            _log.info(
                "event=tenant_object_deleted tenant=%s object=%r",
                tenant,
                str(ObjectRef(res, str(namespace or ""), name)),
            )

        namespaces = await listed(NAMESPACE)
        ours = {str((ns.get("metadata") or {}).get("name")) for ns in namespaces}
        remaining = 0
        for res in KNOWN_RESOURCES:
            if res == NAMESPACE:
                continue
            for obj in await listed(res):
                remaining += 1
                namespace = (obj.get("metadata") or {}).get("namespace")
                if not res.namespaced or namespace not in ours:
                    await delete(res, obj)
        for ns in namespaces:
            remaining += 1
            await delete(NAMESPACE, ns)
        return remaining
