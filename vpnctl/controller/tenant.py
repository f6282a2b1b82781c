"""``reconcile_tenant``: one tenant's service-cluster side, from what is to what should be.

Level-triggered: every run reads the world afresh (the Tunnel and its Cluster with GETs,
Machines from the watch cache, our objects with GETs), so it does not matter which event
brought the key, or how many were coalesced. What is remembered between runs lives in
the Tunnel's status (addresses, the service-route holder) and in the revocation book
(ConfigMap ``<cluster>-vpn-revocations``: every node certificate signed and every
revocation, ``controller/revocations.py``), never in this process, so another replica
can take over.

The order of writes is the order that keeps promises:

1. The Tunnel gets our finalizer (``vpnctl.io/cleanup``) and an owner reference to its
   Cluster. Owner references delete everything in the service cluster when the Cluster
   goes; the finalizer is only for what they can't reach: the agent objects in the
   tenant's own cluster (``TenantSide.cleanup``).
2. PKI Secrets. The CA and the tls-crypt-v2 server key are only ever *created* (POST),
   never overwritten: a corrupt one is reported (PKIReady=False CorruptPKISecret) and left
   for a person, and so is a CA Secret that disappeared (CASecretMissing): no new CA is
   minted in its place. Leaf certificates are renewed with the same CA once due.
3. The revocation book, then the server ConfigMap (server.json, desired.json, crl.pem)
   built from it, *before* the status: a deleted Machine's certificates are revoked in
   the book and the CRL first, so a crash in between can't lose a revocation, and a lost
   server ConfigMap is re-published with every revocation. This step also runs when the
   spec is invalid (``tenant_revocations.py``).
4. Revocation in about two seconds: kubelet refreshes a ConfigMap volume only on its
   periodic pod sync (up to a minute plus its cache TTL), so after a config change we
   patch an annotation (``vpnctl.io/server-config``) on each server *pod* (not the pod
   template: that would roll the Deployment). The pod update makes kubelet sync that pod
   now, which rewrites the volume; the server role polls crl.pem and desired.json every
   0.25 s (agent/desired.py's ``crl_source``), installs the CRL and kicks every connected
   client with a revoked serial, and the client removed from desired.json loses its CCD,
   so ``ccd-exclusive`` refuses it on reconnect.
5. Deployment, Service, the apiserver sidecar's ConfigMap.
6. The tenant cluster, through ``TenantSide``, with the CAPI kubeconfig.
7. The status, and Events for every condition that changed.

Every write is skipped when ``diff.needs_update`` (or, for the status, equality) says the
live object is already right, so a resync of an unchanged world writes nothing.

Bad input never raises out of here: it becomes a condition and an Event, and the key
waits for the next change (permanent) or retries with backoff (temporary).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

import certs
from vpnctl.api import CAPI_CLUSTER_NAME_LABEL, Condition, ConditionStatus, TunnelStatusBody
from vpnctl.controller import pki
from vpnctl.controller.budgets import DEGRADED, with_degraded
from vpnctl.controller.interfaces import (
    ObservationSource,
    TenantRef,
    TenantSide,
    TenantSideResult,
)
from vpnctl.controller.metrics import ControllerMetrics
from vpnctl.controller.queue import Outcome
from vpnctl.controller.revocations import RevocationStore, reported_certificates
from vpnctl.controller.tenant_revocations import RevocationPasses
from vpnctl.kube import (
    CLUSTER,
    CONFIG_MAP,
    DEPLOYMENT,
    EVENT,
    MACHINE,
    NETWORK_POLICY,
    POD,
    SECRET,
    SERVICE,
    TUNNEL,
    AlreadyExists,
    ApiError,
    Clock,
    Conflict,
    Kube,
    KubeObject,
    Resource,
    Store,
    record_event,
    with_retries,
)
from vpnctl.reconcile.agentdocs import (
    node_role_config,
    server_desired_state,
    service_remotes,
)
from vpnctl.reconcile.allocation import Allocation, record_serial
from vpnctl.reconcile.conditions import (
    AGENT_INSTALLED,
    PKI_READY,
    SERVER_READY,
    derive_ready,
    parse_rfc3339,
    set_condition,
    set_error_condition,
)
from vpnctl.reconcile.diff import needs_update
from vpnctl.reconcile.errors import PermanentError, ReconcileError, TemporaryError
from vpnctl.reconcile.names import (
    CLUSTER_LABEL,
    COMPONENT_SERVER,
    DESIRED_HASH_ANNOTATION,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    SERVER_COMMON_NAME,
    TenantNames,
    selector_labels,
)
from vpnctl.reconcile.objects import (
    ATTACH_SIDECAR_LABEL,
    TLS_CRYPT_V2_CLIENT,
    apiserver_client_secret,
    apiserver_config_map,
    apiserver_sidecar,
    ca_secret,
    server_config_map,
    server_deployment,
    server_service,
    sidecar_apply_body,
    tls_crypt_secret,
)
from vpnctl.reconcile.objects import (
    server_secret as server_secret_object,
)
from vpnctl.reconcile.plan import TenantPlan, plan_tenant
from vpnctl.reconcile.revocations import IssuedCert
from vpnctl.reconcile.routes import client_routes
from vpnctl.reconcile.secrets import (
    check_leaf_secret,
    kubeconfig_secret_name,
    parse_kubeconfig_secret,
    read_ca_secret,
    read_tls_crypt_server_key,
)
from vpnctl.reconcile.server_policy import server_network_policy
from vpnctl.reconcile.settings import Settings
from vpnctl.reconcile.status import NodeObservation, build_status
from vpnctl.reconcile.tenant import APISERVER_COMMON_NAME, TenantSpec
from vpnctl.reconcile.tenant_objects import tenant_objects

_log = logging.getLogger(__name__)

T = TypeVar("T")

FINALIZER = "vpnctl.io/cleanup"
# On a Cluster: "false" means no Tunnel is created for it automatically.
AUTO_TUNNEL_ANNOTATION = "vpnctl.io/auto-tunnel"
# On server pods: the server ConfigMap's hash, bumped so kubelet refreshes the volume now.
SERVER_CONFIG_ANNOTATION = "vpnctl.io/server-config"
# How many serials per node status keeps: certificates are renewed at 2/3 of their
# lifetime, so older ones than this have long expired.
MAX_SERIALS_PER_NODE = 8
ALL_PARTS = (PKI_READY, SERVER_READY, AGENT_INSTALLED)


@dataclass(frozen=True, kw_only=True)
class TenantSettings:
    """What ``TenantReconciler`` needs beyond the object builders' ``Settings``."""

    build: Settings
    # Identity of this controller replica, for Events (e.g. the pod name).
    instance: str
    field_manager: str = "vpnctl"
    # Create a Tunnel for every Cluster (a Cluster still opts out with the annotation).
    auto_tunnel: bool = True
    # spec of auto-created Tunnels, besides clusterName (e.g. {"expose": {...}}).
    tunnel_defaults: Mapping[str, Any] = field(default_factory=dict)
    crl_lifetime: timedelta = pki.DEFAULT_CRL_LIFETIME
    # Upper bounds for the two calls that leave the service cluster.
    tenant_side_timeout: float = 30.0
    observe_timeout: float = 5.0
    # Retries of a single API call on transport errors and 429 (Retry-After honoured).
    api_attempts: int = 3


@dataclass(frozen=True, kw_only=True)
class TenantPKI:
    ca: certs.Issued
    tls_crypt_server_key: bytes = field(repr=False)
    server: certs.Issued
    apiserver: certs.Issued
    apiserver_serial: str
    not_after: Mapping[str, datetime]  # role -> expiry
    renew_at: datetime  # the earliest renewal of a leaf certificate
    issued: tuple[str, ...]  # roles issued or renewed in this run


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _deleting(obj: Mapping[str, Any]) -> bool:
    return bool(_meta(obj).get("deletionTimestamp"))


def _owner_ref(cluster: Mapping[str, Any]) -> dict[str, Any]:
    meta = _meta(cluster)
    return {
        "apiVersion": CLUSTER.api_version,
        "kind": CLUSTER.kind,
        "name": meta.get("name"),
        "uid": meta.get("uid"),
    }


def _has_cluster_owner(obj: Mapping[str, Any], *, uid: str | None = None) -> bool:
    for ref in _meta(obj).get("ownerReferences") or []:
        ours = ref.get("kind") == CLUSTER.kind and str(ref.get("apiVersion", "")).startswith(
            CLUSTER.group + "/"
        )
        if ours and (uid is None or ref.get("uid") == uid):
            return True
    return False


def _decode(secret: Mapping[str, Any] | None, key: str) -> bytes | None:
    data = (secret or {}).get("data") or {}
    raw = data.get(key) if isinstance(data, Mapping) else None
    if not isinstance(raw, str):
        return None
    try:
        return base64.b64decode(raw, validate=True)
    except ValueError:
        return None


def _belongs(machine: Mapping[str, Any], cluster: str) -> bool:
    spec = machine.get("spec") or {}
    if spec.get("clusterName"):
        return bool(spec.get("clusterName") == cluster)
    return bool((_meta(machine).get("labels") or {}).get(CAPI_CLUSTER_NAME_LABEL) == cluster)


def observation_fingerprint(
    observations: Mapping[str, NodeObservation] | None,
) -> frozenset[tuple[str, bool, bool | None]]:
    """What in an observation is worth a reconcile: who is connected and whose kubelet
    answers (RTT moves all the time and waits for the next reconcile). None (the server
    did not answer) has its own fingerprint."""
    if observations is None:
        return frozenset({("", False, None)})
    return frozenset((n, o.connected, o.kubelet_reachable) for n, o in observations.items())


def _observations_from_status(status: Mapping[str, Any]) -> dict[str, NodeObservation]:
    """Last known observations, from the status table, for when the server can't be asked:
    the service-route holder then stays where it is instead of being dropped."""
    out: dict[str, NodeObservation] = {}
    for row in status.get("nodes") or []:
        name = row.get("name")
        if not isinstance(name, str) or not row.get("tunnelIP"):
            continue
        since = None
        if isinstance(row.get("since"), str):
            try:
                since = parse_rfc3339(row["since"])
            except ValueError:
                since = None
        rtt = row.get("rttSeconds")
        kubelet = row.get("kubeletReachable")
        out[name] = NodeObservation(
            node=name,
            connected=bool(row.get("connected")),
            connected_since=since if row.get("connected") else None,
            rtt_seconds=float(rtt) if isinstance(rtt, int | float) else None,
            kubelet_reachable=kubelet if isinstance(kubelet, bool) else None,
        )
    return out


class TenantReconciler(RevocationPasses):
    """Reconciles tenants one key at a time (the queue guarantees that); see the module
    docstring. ``machines`` is the operator's Machine watch cache; without it Machines are
    listed from the API on every run."""

    def __init__(
        self,
        *,
        kube: Kube,
        settings: TenantSettings,
        clock: Clock,
        rng: random.Random,
        tenant_side: TenantSide,
        observations: ObservationSource,
        metrics: ControllerMetrics,
        machines: Store | None = None,
    ) -> None:
        self._kube = kube
        self._settings = settings
        self._clock = clock
        self._rng = rng
        self._side = tenant_side
        self._source = observations
        self._metrics = metrics
        self._machines = machines
        self._book = RevocationStore(
            kube=kube,
            clock=clock,
            rng=rng,
            attempts=settings.api_attempts,
            on_write=lambda kind: self._count(kind, CONFIG_MAP),
        )
        # Fingerprint of the observations each tenant was last reconciled with (the
        # operator's poller compares against it), and Machines reported as waiting.
        self.observed: dict[TenantRef, frozenset[tuple[str, bool, bool | None]]] = {}
        self._reported_waiting: dict[TenantRef, dict[str, str]] = {}
        # What the tenant side last said about each tenant's budgets (absent: no answer).
        self._side_degraded: dict[TenantRef, tuple[str, str] | None] = {}

    # --- entry points ---------------------------------------------------------------------

    async def reconcile_tenant(self, key: TenantRef) -> Outcome:
        """One pass over one tenant. API errors propagate (the queue backs off); domain
        problems become conditions."""
        started = self._clock.monotonic()
        result = "error"
        try:
            outcome, result = await self._reconcile(key)
            return outcome
        except Conflict:
            # An object changed between our read and our conditional write: read again
            # now (SSA writes never conflict; only the Tunnel's metadata patches can).
            result = "retry"
            self._metrics.reconcile_errors.labels(reason="Conflict").inc()
            _log.info("event=reconcile_conflict tenant=%s action=reread", key)
            return Outcome(requeue_after=0.0)
        except ReconcileError as exc:  # a step found the world not ready yet
            result = "retry"
            self._metrics.reconcile_errors.labels(reason=exc.reason).inc()
            _log.info(
                "event=reconcile_retry tenant=%s reason=%s message=%r", key, exc.reason, exc.message
            )
            return Outcome(retry=True)
        except Exception as exc:  # API trouble (the queue backs off) or a bug (logged there)
            self._metrics.reconcile_errors.labels(reason=type(exc).__name__).inc()
            raise
        finally:
            self._metrics.reconciles.labels(result=result).inc()
            self._metrics.reconcile_duration.observe(self._clock.monotonic() - started)

    async def forget_tenant(self, key: TenantRef) -> None:
        """Drop everything kept in memory about a tenant (it is gone, or not ours)."""
        self.observed.pop(key, None)
        self._reported_waiting.pop(key, None)
        self._side_degraded.pop(key, None)
        self._metrics.forget(key)
        await self._side.forget(key)

    # --- the pass -----------------------------------------------------------------------------

    async def _reconcile(self, key: TenantRef) -> tuple[Outcome, str]:
        tunnel = await self._get(TUNNEL, key.cluster, key.namespace)
        cluster = await self._get(CLUSTER, key.cluster, key.namespace)
        if tunnel is None:
            await self.forget_tenant(key)
            if cluster is not None and not _deleting(cluster) and self._wants_tunnel(cluster):
                await self._create_tunnel(cluster)
            return Outcome(), "ok"
        if _deleting(tunnel):
            return await self._finalize(key, tunnel)
        if cluster is not None and _deleting(cluster):
            # Start the cleanup now, while the tenant's apiserver may still answer, rather
            # than when the Cluster is finally gone.
            await self._delete(TUNNEL, tunnel)
            return Outcome(), "ok"
        tunnel = await self._ensure_metadata(tunnel, cluster)
        if cluster is None:
            if _has_cluster_owner(tunnel):
                # Its Cluster is gone. The garbage collector would delete it too, but it
                # may lag (it learns about new kinds by periodic discovery): don't wait.
                await self._delete(TUNNEL, tunnel)
                return Outcome(), "ok"
            error = PermanentError(
                reason="ClusterNotFound",
                message=(
                    f"Tunnel {key.namespace}/{key.cluster} names Cluster {key.cluster}, which "
                    f"does not exist in namespace {key.namespace}; create the Cluster or "
                    "delete the Tunnel"
                ),
            )
            await self._report(key, tunnel, error=error, part=SERVER_READY)
            return Outcome(), "invalid"

        machines = await self._list_machines(key)
        # The CSR signer decides with the Machines of now, whatever the spec's state.
        self._side.machines_changed(key, machines)
        observations, observe_error = await self._observe(key, tunnel)
        try:
            plan = plan_tenant(
                tunnel=cast(Any, tunnel),
                cluster=cast(Any, cluster),
                machines=cast(Any, machines),
                nodes=None,
                observations=observations,
                settings=self._settings.build,
            )
        except PermanentError as exc:
            # Revocation does not wait for a valid spec: a Machine deleted meanwhile
            # loses its certificates and its CCD now.
            await self._revoke_while_invalid(key, tunnel, machines)
            await self._report(key, tunnel, error=exc, part=SERVER_READY)
            return Outcome(), "invalid"
        for warning in plan.tenant.warnings:
            _log.info("event=tenant_warning tenant=%s warning=%r", key, warning)
        await self._report_waiting(key, plan, machines)

        now = self._clock.now()
        try:
            keys = await self._ensure_pki(plan.tenant, plan.names, now=now)
            # The revocation book, then the server ConfigMap: it carries the CRL.
            server_cm = await self._get(CONFIG_MAP, plan.names.server_config, key.namespace)
            step = await self._revocations(
                key,
                tunnel,
                keys.ca,
                server_cm,
                machines,
                known=[
                    (a.node, a.machine, serial)
                    for a in (*plan.allocation.allocations, *plan.allocation.removed)
                    for text in a.serials
                    if (serial := pki.parse_serial(text)) is not None
                ],
                revoke=[
                    (removed.node, serial)
                    for removed in plan.allocation.removed
                    for text in removed.serials
                    if (serial := pki.parse_serial(text)) is not None
                ],
                now=now,
            )
        except PermanentError as exc:
            await self._report(key, tunnel, error=exc, part=PKI_READY)
            return Outcome(), "invalid"
        crl = step.crl
        allocations = plan.allocation.allocations
        server_cm = await self._apply_server_config(
            plan, keys, crl, allocations=allocations, live=server_cm
        )

        role_config = plan.server_role_config
        await self._ensure(
            DEPLOYMENT,
            server_deployment(
                tenant=plan.tenant, settings=self._settings.build, role_config=role_config
            ),
        )
        await self._ensure(
            NETWORK_POLICY,
            server_network_policy(tenant=plan.tenant, settings=self._settings.build),
        )
        service = await self._ensure(SERVICE, server_service(tenant=plan.tenant))
        await self._ensure(
            CONFIG_MAP,
            apiserver_config_map(tenant=plan.tenant, role_config=plan.apiserver_role_config),
        )
        await self._attach_sidecar(plan)

        agent, side_retry, signed = await self._ensure_tenant_side(
            key, plan, keys, service=service, machines=machines
        )
        if signed:
            # Recorded (and, for a Machine that is gone by now, revoked) in the book
            # before the status learns them: the book is what revokes.
            step = await self._revocations(
                key, tunnel, keys.ca, server_cm, machines, reported=signed, now=now
            )
            crl = step.crl
        updated = _record_signed(allocations, [(c.node, format(c.serial, "x")) for c in signed])
        if updated != allocations or crl.changed:
            allocations = updated
            await self._apply_server_config(
                plan, keys, crl, allocations=allocations, live=server_cm
            )

        conditions = self._conditions(
            tunnel,
            plan.tenant.generation,
            now=now,
            pki_ok=keys,
            server_error=observe_error,
            agent=agent,
        )
        if key in self._side_degraded:
            conditions = with_degraded(
                conditions,
                self._side_degraded[key],
                observed_generation=plan.tenant.generation,
                now=now,
            )
        status = build_status(
            tenant=plan.tenant,
            result=dataclasses.replace(plan.allocation, allocations=allocations),
            service_route_node=plan.service_route_node,
            observations=plan.observations,
            conditions=conditions,
            previous=cast(TunnelStatusBody, tunnel.get("status") or {}),
            now=now,
        )
        await self._write_status(key, tunnel, status)
        self._expiries(key, keys, crl)
        self.observed[key] = observation_fingerprint(None if observe_error else observations)

        due = [keys.renew_at, crl.refresh_at]
        requeue = max(1.0, min((d - now).total_seconds() for d in due))
        return Outcome(requeue_after=requeue, retry=side_retry), "retry" if side_retry else "ok"

    # --- Tunnel lifecycle -----------------------------------------------------------------

    def _wants_tunnel(self, cluster: Mapping[str, Any]) -> bool:
        if not self._settings.auto_tunnel:
            return False
        meta = _meta(cluster)
        for where in (meta.get("annotations") or {}, meta.get("labels") or {}):
            if str(where.get(AUTO_TUNNEL_ANNOTATION, "")).lower() == "false":
                return False
        return True

    async def _create_tunnel(self, cluster: KubeObject) -> None:
        meta = _meta(cluster)
        name, namespace = str(meta["name"]), str(meta["namespace"])
        body: KubeObject = {
            "apiVersion": TUNNEL.api_version,
            "kind": TUNNEL.kind,
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {CLUSTER_LABEL: name, MANAGED_BY_LABEL: MANAGED_BY},
                "ownerReferences": [_owner_ref(cluster)],
                "finalizers": [FINALIZER],
            },
            "spec": {**self._settings.tunnel_defaults, "clusterName": name},
        }
        try:
            await self._call(lambda: self._kube.create(TUNNEL, body))
        except AlreadyExists:
            return
        self._count("create", TUNNEL)
        _log.info("event=tunnel_created tenant=%s/%s", namespace, name)
        await self._event(
            cluster,
            "Normal",
            "TunnelCreated",
            f"created Tunnel {namespace}/{name}; annotate the Cluster with "
            f'{AUTO_TUNNEL_ANNOTATION}: "false" to opt out',
        )

    async def _ensure_metadata(
        self, tunnel: KubeObject, cluster: Mapping[str, Any] | None
    ) -> KubeObject:
        """Our finalizer, and an owner reference to the Cluster (so a hand-made Tunnel
        goes with its Cluster too). One conditional merge patch, only when needed."""
        meta = _meta(tunnel)
        finalizers = list(meta.get("finalizers") or [])
        patch: dict[str, Any] = {}
        if FINALIZER not in finalizers:
            patch["finalizers"] = [*finalizers, FINALIZER]
        if cluster is not None and not _has_cluster_owner(tunnel, uid=_meta(cluster).get("uid")):
            owners = [
                ref
                for ref in meta.get("ownerReferences") or []
                if not (ref.get("kind") == CLUSTER.kind and ref.get("name") == meta.get("name"))
            ]
            patch["ownerReferences"] = [*owners, _owner_ref(cluster)]
        if not patch:
            return tunnel
        patch["resourceVersion"] = meta.get("resourceVersion")
        updated = await self._call(
            lambda: self._kube.patch_merge(
                TUNNEL, str(meta["name"]), {"metadata": patch}, namespace=str(meta["namespace"])
            )
        )
        self._count("patch", TUNNEL)
        return updated

    async def _finalize(self, key: TenantRef, tunnel: KubeObject) -> tuple[Outcome, str]:
        meta = _meta(tunnel)
        finalizers = list(meta.get("finalizers") or [])
        if FINALIZER not in finalizers:
            await self.forget_tenant(key)
            return Outcome(), "ok"
        secret = await self._get(SECRET, kubeconfig_secret_name(key.cluster), key.namespace)
        try:
            text: str | None = parse_kubeconfig_secret(
                secret, namespace=key.namespace, cluster_name=key.cluster
            ).text
        except ReconcileError:
            text = None  # nothing to reach the tenant cluster with; the tenant side decides
        try:
            async with asyncio.timeout(self._settings.tenant_side_timeout):
                done = await self._side.cleanup(tenant=key, kubeconfig_text=text)
        except Exception as exc:  # the tenant's trouble must not stop ours
            _log.warning("event=tenant_cleanup_failed tenant=%s error=%r", key, str(exc))
            done = False
        if not done:
            _log.info("event=tenant_cleanup_pending tenant=%s", key)
            return Outcome(retry=True), "retry"
        await self.forget_tenant(key)
        patch = {
            "metadata": {
                "finalizers": [f for f in finalizers if f != FINALIZER],
                "resourceVersion": meta.get("resourceVersion"),
            }
        }
        await self._call(
            lambda: self._kube.patch_merge(TUNNEL, key.cluster, patch, namespace=key.namespace)
        )
        self._count("patch", TUNNEL)
        _log.info("event=tunnel_finalized tenant=%s", key)
        return Outcome(), "ok"

    # --- reading ------------------------------------------------------------------------------

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        return await with_retries(
            fn, rng=self._rng, clock=self._clock, attempts=self._settings.api_attempts
        )

    async def _get(self, res: Resource, name: str, namespace: str) -> KubeObject | None:
        return await self._call(lambda: self._kube.get(res, name, namespace))

    async def _list_machines(self, key: TenantRef) -> list[KubeObject]:
        if self._machines is not None:
            items = self._machines.list(key.namespace)
        else:
            items, _ = await self._call(lambda: self._kube.list(MACHINE, key.namespace))
        return [m for m in items if _belongs(m, key.cluster)]

    async def _observe(
        self, key: TenantRef, tunnel: Mapping[str, Any]
    ) -> tuple[Mapping[str, NodeObservation], ReconcileError | None]:
        try:
            async with asyncio.timeout(self._settings.observe_timeout):
                return await self._source.observe(key), None
        except ReconcileError as exc:
            error: ReconcileError = exc
        except TimeoutError:
            error = TemporaryError(
                reason="ServerNotAnswering",
                message=(
                    f"the tenant's openvpn server did not report its clients within "
                    f"{self._settings.observe_timeout:g}s; it may still be starting"
                ),
            )
        except Exception as exc:
            error = TemporaryError(
                reason="ServerNotAnswering",
                message=f"could not ask the tenant's openvpn server for its clients: {exc}",
            )
        return _observations_from_status(tunnel.get("status") or {}), error

    # --- writing ------------------------------------------------------------------------------

    def _count(self, kind: str, res: Resource) -> None:
        self._metrics.writes.labels(kind=kind, resource=res.label).inc()

    async def _ensure(
        self,
        res: Resource,
        desired: KubeObject,
        *,
        live: KubeObject | None = None,
        read: bool = True,
    ) -> KubeObject:
        """Apply ``desired`` unless the live object already has it; returns the live one."""
        meta = desired["metadata"]
        if live is None and read:
            live = await self._get(res, meta["name"], meta["namespace"])
        if not needs_update(live, desired):
            assert live is not None
            return live
        applied = await self._call(
            lambda: self._kube.apply(res, desired, field_manager=self._settings.field_manager)
        )
        self._count("apply", res)
        _log.info(
            "event=object_applied resource=%s object=%s/%s",
            res.label,
            meta["namespace"],
            meta["name"],
        )
        return applied

    async def _attach_sidecar(self, plan: TenantPlan) -> None:
        """Attach the apiserver sidecar to every Deployment labelled for this Cluster
        (`vpnctl.io/apiserver-for: <cluster>`): the hosted kube-apiserver opts in."""
        tenant = plan.tenant
        selector = f"{ATTACH_SIDECAR_LABEL}={tenant.cluster_name}"
        deployments, _ = await self._call(
            lambda: self._kube.list(DEPLOYMENT, tenant.namespace, label_selector=selector)
        )
        attachment = apiserver_sidecar(
            tenant=tenant, settings=self._settings.build, role_config=plan.apiserver_role_config
        )
        for deployment in deployments:
            body = sidecar_apply_body(deployment, attachment=attachment)
            if body is None:
                continue

            async def apply(body: KubeObject = body) -> KubeObject:
                return await self._kube.apply(
                    DEPLOYMENT, body, field_manager=self._settings.field_manager
                )

            await self._call(apply)
            self._count("apply", DEPLOYMENT)
            _log.info(
                "event=apiserver_sidecar_attached tenant=%s/%s deployment=%s",
                tenant.namespace,
                tenant.cluster_name,
                body["metadata"]["name"],
            )

    async def _delete(self, res: Resource, obj: Mapping[str, Any]) -> None:
        meta = _meta(obj)
        await self._call(
            lambda: self._kube.delete(
                res, str(meta["name"]), str(meta["namespace"]), uid=str(meta.get("uid") or "")
            )
        )
        self._count("delete", res)

    async def _apply_server_config(
        self,
        plan: TenantPlan,
        keys: TenantPKI,
        crl: pki.CRLPlan,
        *,
        allocations: Sequence[Allocation],
        live: KubeObject | None,
    ) -> KubeObject:
        clients = client_routes(
            tenant=plan.tenant, allocations=allocations, service_route_node=plan.service_route_node
        )
        desired = server_config_map(
            tenant=plan.tenant,
            role_config=plan.server_role_config,
            desired=server_desired_state(clients=clients, apiserver_serial=keys.apiserver_serial),
            crl_pem=crl.pem,
        )
        if not needs_update(live, desired):
            assert live is not None
            return live
        applied = await self._ensure(CONFIG_MAP, desired, live=live, read=False)
        await self._kick_server_pods(
            TenantRef(namespace=plan.tenant.namespace, cluster=plan.tenant.cluster_name), desired
        )
        return applied

    async def _kick_server_pods(self, tenant: TenantRef, config_map: KubeObject) -> None:
        """Make kubelet refresh the server pods' ConfigMap volume now (see step 4)."""
        version = config_map["metadata"]["annotations"][DESIRED_HASH_ANNOTATION]
        selector = ",".join(
            f"{k}={v}"
            for k, v in selector_labels(
                cluster_name=tenant.cluster, component=COMPONENT_SERVER
            ).items()
        )
        pods, _ = await self._call(
            lambda: self._kube.list(POD, tenant.namespace, label_selector=selector)
        )
        for pod in pods:
            meta = _meta(pod)
            if (
                _deleting(pod)
                or (meta.get("annotations") or {}).get(SERVER_CONFIG_ANNOTATION) == version
            ):
                continue
            patch = {"metadata": {"annotations": {SERVER_CONFIG_ANNOTATION: version}}}
            name = str(meta["name"])

            async def kick(name: str = name, patch: dict[str, Any] = patch) -> KubeObject:
                return await self._kube.patch_merge(POD, name, patch, namespace=tenant.namespace)

            try:
                await self._call(kick)
            except ApiError as exc:  # a pod going away: the next one mounts the new config
                _log.info("event=server_pod_kick_skipped pod=%s error=%r", meta["name"], str(exc))
                continue
            self._count("patch", POD)

    async def _write_status(
        self, key: TenantRef, tunnel: KubeObject, status: Mapping[str, Any]
    ) -> None:
        previous = tunnel.get("status") or {}
        self._metrics.set_conditions(
            key, {c["type"]: c["status"] for c in status.get("conditions") or []}
        )
        if dict(status) == previous:
            return
        meta = _meta(tunnel)
        body = {
            "apiVersion": TUNNEL.api_version,
            "kind": TUNNEL.kind,
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "status": dict(status),
        }
        await self._call(
            lambda: self._kube.apply_status(
                TUNNEL, body, field_manager=self._settings.field_manager
            )
        )
        self._count("status", TUNNEL)
        await self._condition_events(tunnel, previous.get("conditions"), status.get("conditions"))

    async def _event(
        self, regarding: Mapping[str, Any], type_: str, reason: str, note: str
    ) -> None:
        try:
            await record_event(
                self._kube,
                regarding=dict(regarding),
                type="Normal" if type_ == "Normal" else "Warning",
                reason=reason,
                note=note,
                action="Reconcile",
                clock=self._clock,
                reporting_instance=self._settings.instance,
            )
        except (ApiError, ValueError) as exc:  # an Event is never worth failing a reconcile
            _log.warning("event=k8s_event_failed reason=%s error=%r", reason, str(exc))
            return
        self._count("event", EVENT)

    async def _condition_events(
        self,
        tunnel: Mapping[str, Any],
        before: Sequence[Condition] | None,
        after: Sequence[Condition] | None,
    ) -> None:
        old = {c.get("type"): (c.get("status"), c.get("reason")) for c in before or []}
        for condition in after or []:
            if old.get(condition["type"]) == (condition["status"], condition["reason"]):
                continue
            await self._event(
                tunnel,
                "Normal"
                if (condition["status"] == "True") != (condition["type"] == DEGRADED)
                else "Warning",
                condition["reason"],
                f"{condition['type']} is {condition['status']}: {condition['message']}",
            )

    # --- conditions ---------------------------------------------------------------------------

    def _conditions(
        self,
        tunnel: Mapping[str, Any],
        generation: int,
        *,
        now: datetime,
        pki_ok: TenantPKI,
        server_error: ReconcileError | None,
        agent: tuple[ConditionStatus, str, str],
    ) -> list[Condition]:
        conditions: list[Condition] = list((tunnel.get("status") or {}).get("conditions") or [])
        conditions = set_condition(
            conditions,
            type=PKI_READY,
            status="True",
            reason="Issued",
            message=(
                "CA, server and apiserver certificates are valid; the CRL is current; next "
                f"renewal at {pki_ok.renew_at:%Y-%m-%dT%H:%M:%SZ}"
            ),
            observed_generation=generation,
            now=now,
        )
        if server_error is None:
            conditions = set_condition(
                conditions,
                type=SERVER_READY,
                status="True",
                reason="ServerRunning",
                message="the openvpn server is configured and reports its clients",
                observed_generation=generation,
                now=now,
            )
        else:
            conditions = set_error_condition(
                conditions,
                type=SERVER_READY,
                error=server_error,
                observed_generation=generation,
                now=now,
            )
        status, reason, message = agent
        conditions = set_condition(
            conditions,
            type=AGENT_INSTALLED,
            status=status,
            reason=reason,
            message=message,
            observed_generation=generation,
            now=now,
        )
        return derive_ready(conditions, observed_generation=generation, now=now)

    async def _report(
        self, key: TenantRef, tunnel: KubeObject, *, error: ReconcileError, part: str
    ) -> None:
        """A problem that stops this pass: ``part`` False with the error, Ready derived,
        every other field of the status kept as it was (addresses are memory)."""
        now = self._clock.now()
        previous = dict(tunnel.get("status") or {})
        generation = int(_meta(tunnel).get("generation") or 0)
        conditions = set_error_condition(
            previous.get("conditions"),
            type=part,
            error=error,
            observed_generation=generation,
            now=now,
        )
        conditions = derive_ready(conditions, observed_generation=generation, now=now)
        status = {**previous, "observedGeneration": generation, "conditions": conditions}
        self._metrics.reconcile_errors.labels(reason=error.reason).inc()
        _log.warning(
            "event=tenant_invalid tenant=%s condition=%s reason=%s message=%r",
            key,
            part,
            error.reason,
            error.message,
        )
        await self._write_status(key, tunnel, status)

    async def _report_waiting(
        self, key: TenantRef, plan: TenantPlan, machines: Sequence[KubeObject]
    ) -> None:
        """An Event on each Machine that gets no tunnel yet, once per reason."""
        waiting = {w.machine: w.error for w in plan.waiting}
        reported = self._reported_waiting.setdefault(key, {})
        by_name = {str(_meta(m).get("name")): m for m in machines}
        for name in list(reported):
            if name not in waiting:
                del reported[name]
        for name, error in waiting.items():
            if reported.get(name) == error.reason or name not in by_name:
                continue
            reported[name] = error.reason
            self._metrics.reconcile_errors.labels(reason=error.reason).inc()
            await self._event(by_name[name], "Warning", error.reason, error.message)

    def _expiries(self, key: TenantRef, keys: TenantPKI, crl: pki.CRLPlan) -> None:
        for role, not_after in keys.not_after.items():
            self._metrics.set_expiry(key, role, not_after)
        self._metrics.set_expiry(key, pki.CRL, crl.state.next_update)

    # --- PKI ----------------------------------------------------------------------------------

    async def _ensure_pki(
        self, tenant: TenantSpec, names: TenantNames, *, now: datetime
    ) -> TenantPKI:
        lifetimes = tenant.spec.certificates
        issued: list[str] = []

        ca = read_ca_secret(await self._get(SECRET, names.ca_secret, tenant.namespace), now=now)
        if ca is None:
            await self._check_no_ca_was_lost(tenant, names)
            new = certs.new_ca(common_name=names.ca_secret, now=now, lifetime=lifetimes.ca)
            body = ca_secret(tenant=tenant, cert_pem=new.cert_pem, key_pem=new.key_pem)
            ca = await self._create_once(body, lambda s: read_ca_secret(s, now=now))
            issued.append(pki.CA)

        tc_secret = await self._get(SECRET, names.tls_crypt_secret, tenant.namespace)
        tc_key = read_tls_crypt_server_key(tc_secret, now=now)
        if tc_key is None:
            body = tls_crypt_secret(tenant=tenant, server_key=certs.new_tls_crypt_v2_server_key())
            tc_key = await self._create_once(body, lambda s: read_tls_crypt_server_key(s, now=now))

        # The server certificate: kept while valid, renewed (same CA) once due.
        live = await self._get(SECRET, names.server_secret, tenant.namespace)
        check = check_leaf_secret(
            live,
            ca_pem=ca.cert_pem,
            now=now,
            usage="server",
            renew_fraction=lifetimes.renew_fraction,
        )
        server = check.issued
        if check.needs_issue or server is None:
            namespace = tenant.namespace
            server = certs.new_server_cert(
                ca,
                common_name=SERVER_COMMON_NAME,
                dns_names=[
                    f"{names.service}.{namespace}.svc",
                    f"{names.service}.{namespace}.svc.cluster.local",
                ],
                now=now,
                lifetime=lifetimes.server,
            )
            issued.append(pki.SERVER)
            _log.info(
                "event=certificate_issued tenant=%s role=server why=%r", tenant.key, check.message
            )
        await self._ensure(
            SECRET,
            server_secret_object(
                tenant=tenant,
                cert_pem=server.cert_pem,
                key_pem=server.key_pem,
                ca_pem=ca.cert_pem,
                tls_crypt_v2_key=tc_key,
            ),
            live=live,
            read=False,
        )

        # The apiserver sidecar's client certificate and tls-crypt-v2 client key.
        live = await self._get(SECRET, names.apiserver_secret, tenant.namespace)
        check = check_leaf_secret(
            live,
            ca_pem=ca.cert_pem,
            now=now,
            usage="client",
            renew_fraction=lifetimes.renew_fraction,
        )
        client = check.issued
        if check.needs_issue or client is None:
            client = certs.new_client_cert(
                ca, common_name=APISERVER_COMMON_NAME, now=now, lifetime=lifetimes.client
            )
            issued.append(pki.APISERVER)
            _log.info(
                "event=certificate_issued tenant=%s role=apiserver why=%r",
                tenant.key,
                check.message,
            )
        client_key = _decode(live, TLS_CRYPT_V2_CLIENT)
        if client_key is None or not pki.tls_crypt_client_key_fits(tc_key, client_key):
            client_key = certs.new_tls_crypt_v2_client_key(tc_key, now=now)
        await self._ensure(
            SECRET,
            apiserver_client_secret(
                tenant=tenant,
                cert_pem=client.cert_pem,
                key_pem=client.key_pem,
                ca_pem=ca.cert_pem,
                tls_crypt_v2_client_key=client_key,
            ),
            live=live,
            read=False,
        )

        infos = {
            pki.CA: certs.cert_info(ca.cert_pem),
            pki.SERVER: certs.cert_info(server.cert_pem),
            pki.APISERVER: certs.cert_info(client.cert_pem),
        }
        renew_at = min(
            certs.renew_at(c.cert_pem, renew_fraction=lifetimes.renew_fraction)
            for c in (server, client)
        )
        return TenantPKI(
            ca=ca,
            tls_crypt_server_key=tc_key,
            server=server,
            apiserver=client,
            apiserver_serial=format(infos[pki.APISERVER].serial, "x"),
            not_after={role: info.not_after for role, info in infos.items()},
            renew_at=renew_at,
            issued=tuple(issued),
        )

    async def _create_once(
        self, body: KubeObject, read: Callable[[KubeObject | None], T | None]
    ) -> T:
        """Create a Secret that must never be overwritten; if someone (another replica,
        a restore) created it first, use theirs, checked like any other."""
        meta = body["metadata"]
        created: KubeObject | None
        try:
            created = await self._call(lambda: self._kube.create(SECRET, body))
            self._count("create", SECRET)
            _log.info("event=secret_created object=%s/%s", meta["namespace"], meta["name"])
        except AlreadyExists:
            created = await self._get(SECRET, meta["name"], meta["namespace"])
        value = read(created)
        if value is None:  # deleted again right away: the next pass creates it
            raise TemporaryError(
                reason="PKISecretVanished",
                message=f"Secret {meta['namespace']}/{meta['name']} vanished after creation",
            )
        return value

    # --- the tenant cluster ---------------------------------------------------------------

    async def _ensure_tenant_side(
        self,
        key: TenantRef,
        plan: TenantPlan,
        keys: TenantPKI,
        *,
        service: Mapping[str, Any],
        machines: Sequence[KubeObject],
    ) -> tuple[tuple[ConditionStatus, str, str], bool, tuple[IssuedCert, ...]]:
        """AgentInstalled as (status, reason, message), whether to retry with backoff, and
        the node certificates the tenant side reported."""
        tenant = plan.tenant
        if not tenant.spec.install_agent:
            return (
                ("True", "Disabled", "spec.agent.install is false: the node agent is not managed"),
                False,
                (),
            )
        secret = await self._get(SECRET, kubeconfig_secret_name(key.cluster), key.namespace)
        try:
            kubeconfig = parse_kubeconfig_secret(
                secret, namespace=key.namespace, cluster_name=key.cluster
            )
            role_config = node_role_config(
                tenant=tenant,
                settings=self._settings.build,
                remotes=service_remotes(
                    service, node_addresses=self._settings.build.node_port_addresses
                ),
                # The nodes ask this apiserver for their certificates (agent/bootstrap.py).
                bootstrap_server=kubeconfig.server,
            )
        except ReconcileError as exc:
            return ("False", exc.reason, exc.message), False, ()
        desired = tenant_objects(
            cluster_name=tenant.cluster_name,
            settings=self._settings.build,
            role_config=role_config,
            ca_pem=keys.ca.cert_pem,
        )
        try:
            async with asyncio.timeout(self._settings.tenant_side_timeout):
                result: TenantSideResult = await self._side.ensure(
                    tenant=key,
                    kubeconfig_text=kubeconfig.text,
                    desired_objects=desired,
                    ca=keys.ca,
                    machines=machines,
                )
            self._side_degraded[key] = result.degraded
        except TimeoutError:
            result = TenantSideResult(
                installed=False,
                reason="TenantUnreachable",
                message=(
                    f"the tenant apiserver {kubeconfig.server} did not answer within "
                    f"{self._settings.tenant_side_timeout:g}s; retrying with backoff"
                ),
            )
        except Exception as exc:  # the tenant's trouble must not stop the service side
            _log.warning("event=tenant_side_failed tenant=%s error=%r", key, str(exc))
            result = TenantSideResult(
                installed=False,
                reason="TenantSideError",
                message=f"installing the agent in the tenant cluster failed: {exc}",
            )
        signed = reported_certificates(result, ca=keys.ca)
        if result.installed:
            return ("True", result.reason or "Installed", result.message), False, signed
        return ("False", result.reason or "NotInstalled", result.message), True, signed


def _config_bytes(config_map: Mapping[str, Any] | None, key: str) -> bytes | None:
    data = (config_map or {}).get("data") or {}
    value = data.get(key) if isinstance(data, Mapping) else None
    return value.encode("ascii", "replace") if isinstance(value, str) and value else None


def _record_signed(
    allocations: Sequence[Allocation], signed: Sequence[tuple[str, str]]
) -> tuple[Allocation, ...]:
    """``allocations`` with the serials the tenant side signed, newest last, at most
    MAX_SERIALS_PER_NODE per node."""
    machine_of = {a.node: a.machine for a in allocations}
    out = tuple(allocations)
    for node, serial in signed:
        machine = machine_of.get(node)
        if machine is None or pki.parse_serial(serial) is None:
            continue
        out = record_serial(out, machine=machine, serial=serial)
    return tuple(
        dataclasses.replace(a, serials=a.serials[-MAX_SERIALS_PER_NODE:])
        if len(a.serials) > MAX_SERIALS_PER_NODE
        else a
        for a in out
    )
