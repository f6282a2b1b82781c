"""``reconcile_tenant``: one tenant's service-cluster side, from what is to what should be.

Level-triggered: every run reads the world afresh (the Tunnel and its Cluster with GETs,
Machines from the watch cache, our objects with GETs), so it does not matter which event
brought the key, or how many were coalesced. What is remembered between runs lives in
the Tunnel's status (addresses, the service-route holder) and in the revocation book
(ConfigMap ``<cluster>-vpn-revocations``: every node certificate signed and every
revocation, ``controller/revocation_store.py``), never in this process, so another replica
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
   0.25 s (agent/role_config.py's ``crl_source``), installs the CRL and kicks every connected
   client with a revoked serial, and the client removed from desired.json loses its CCD,
   so ``ccd-exclusive`` refuses it on reconnect.
5. Deployment, Service, the apiserver sidecar's ConfigMap, built with the agent image
   the tenant pins, or that the rollout of ``--agent-image`` gives it now (one tenant
   at a time across the fleet, ``tenant_image``).
6. The tenant cluster, through ``TenantSide``, with the CAPI kubeconfig.
7. The status, and Events for every condition that changed.

Every write is skipped when ``diff.needs_update`` (or, for the status, equality) says the
live object is already right, so a resync of an unchanged world writes nothing.

Bad input never raises out of here: it becomes a condition and an Event, and the key
waits for the next change (permanent) or retries with backoff (temporary).
Where each step lives: the API calls the pass makes are the Protocol ``TenantApi``
(``tenant_api``, with the retrying, counting write helpers every part shares); the
Tunnel's lifecycle is ``tenant_lifecycle``, the PKI Secrets ``tenant_pki``, the revocation
book ``tenant_revocations``, the server ConfigMap, pod kicks and sidecar ``tenant_server``,
the status and Events ``tenant_status``, the agent image ``tenant_image``. This module
holds the pass itself, in the order above, and the call to the tenant side.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
from datetime import datetime
from typing import Any, cast

from vpnctl.api import CAPI_CLUSTER_NAME_LABEL, TunnelStatusBody
from vpnctl.controller import pki_decisions as pki
from vpnctl.controller.budgets import with_degraded
from vpnctl.controller.interfaces import (
    ObservationSource,
    TenantRef,
    TenantSide,
)
from vpnctl.controller.metrics import ControllerMetrics
from vpnctl.controller.queue import Outcome
from vpnctl.controller.revocation_store import RevocationStore
from vpnctl.controller.tenant_api import TenantApi, is_deleting, meta_of
from vpnctl.controller.tenant_apiserver_slots import ApiserverSlotPasses
from vpnctl.controller.tenant_image import TenantImages
from vpnctl.controller.tenant_lifecycle import TunnelLifecycle, has_cluster_owner, is_paused
from vpnctl.controller.tenant_server import record_signed
from vpnctl.controller.tenant_settings import TenantSettings
from vpnctl.controller.tenant_side_pass import TenantSidePass
from vpnctl.controller.tenant_status import (
    Fingerprint,
    StatusReports,
    observation_fingerprint,
    observations_from_status,
)
from vpnctl.kube import (
    CLUSTER,
    CONFIG_MAP,
    DEPLOYMENT,
    MACHINE,
    NETWORK_POLICY,
    SERVICE,
    TUNNEL,
    Clock,
    Conflict,
    KubeObject,
    Store,
)
from vpnctl.reconcile.allocation import forget_serials
from vpnctl.reconcile.conditions import PKI_READY, SERVER_READY
from vpnctl.reconcile.errors import PermanentError, ReconcileError, TemporaryError
from vpnctl.reconcile.machine_deletion import DeletionVerdicts
from vpnctl.reconcile.server_policy import server_network_policy
from vpnctl.reconcile.service_objects import (
    apiserver_config_map,
    server_deployment,
    server_service,
)
from vpnctl.reconcile.status import NodeObservation
from vpnctl.reconcile.tenant_plan import TenantPlan, deletion_verdicts, plan_tenant

_log = logging.getLogger(__name__)

# TenantSettings stays importable from here (the CLI, bench and test fixtures use it).
__all__ = ["TenantReconciler", "TenantSettings"]


def _belongs(machine: Mapping[str, Any], cluster: str) -> bool:
    spec = machine.get("spec") or {}
    if spec.get("clusterName"):
        return bool(spec.get("clusterName") == cluster)
    return bool((meta_of(machine).get("labels") or {}).get(CAPI_CLUSTER_NAME_LABEL) == cluster)


class TenantReconciler(
    TunnelLifecycle, StatusReports, ApiserverSlotPasses, TenantImages, TenantSidePass
):
    """Reconciles tenants one key at a time (the queue guarantees that); see the module
    docstring. ``api`` is the service cluster's apiserver (``vpnctl.kube.Kube``, or a fake
    of ``TenantApi``). ``machines`` is the operator's Machine watch cache; without it
    Machines are listed from the API on every run."""

    def __init__(
        self,
        *,
        api: TenantApi,
        settings: TenantSettings,
        clock: Clock,
        rng: random.Random,
        tenant_side: TenantSide,
        observations: ObservationSource,
        metrics: ControllerMetrics,
        machines: Store | None = None,
        tunnels: Store | None = None,
    ) -> None:
        super().__init__(api=api, settings=settings, clock=clock, rng=rng, metrics=metrics)
        self._side = tenant_side
        self._source = observations
        self._machines = machines
        self._tunnels = tunnels
        self.images = self._image_rollouts()
        self._book = RevocationStore(
            kube=api,
            clock=clock,
            rng=rng,
            attempts=settings.api_attempts,
            on_write=lambda kind: self._count(kind, CONFIG_MAP),
        )
        # Fingerprint of the observations each tenant was last reconciled with (the
        # operator's poller compares against it), and Machines reported as waiting.
        self.observed: dict[TenantRef, Fingerprint] = {}
        self._reported_waiting: dict[TenantRef, dict[str, str]] = {}
        self._reported_deletions: dict[TenantRef, dict[str, str]] = {}
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
        self._reported_deletions.pop(key, None)
        self._side_degraded.pop(key, None)
        self._metrics.forget(key)
        await self.images.forget(key, now=self._clock.now())
        await self._side.forget(key)

    # --- the pass -----------------------------------------------------------------------------

    async def _reconcile(self, key: TenantRef) -> tuple[Outcome, str]:
        tunnel = await self._get(TUNNEL, key.cluster, key.namespace)
        cluster = await self._get(CLUSTER, key.cluster, key.namespace)
        if is_paused(cluster, tunnel):
            # No write at all, not even our finalizer: `clusterctl move` removes finalizers
            # before it deletes the source's objects, and a finalizer put back would make
            # this controller clean up the tenant side of a tenant that lives on elsewhere.
            _log.info("event=tenant_paused tenant=%s", key)
            return Outcome(), "paused"
        if tunnel is None:
            await self.forget_tenant(key)
            if cluster is not None and not is_deleting(cluster) and self._wants_tunnel(cluster):
                await self._create_tunnel(cluster)
            return Outcome(), "ok"
        if is_deleting(tunnel):
            return await self._finalize(key, tunnel)
        if cluster is not None and is_deleting(cluster):
            # Start the cleanup now, while the tenant's apiserver may still answer, rather
            # than when the Cluster is finally gone.
            await self._delete(TUNNEL, tunnel)
            return Outcome(), "ok"
        tunnel = await self._ensure_metadata(tunnel, cluster)
        if cluster is None:
            if has_cluster_owner(tunnel):
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
        # One clock reading for the pass. Which deleted Machines' nodes keep their tunnel
        # while they drain is decided once, so the plan's CCDs and the revocation book agree.
        now = self._clock.now()
        deletions = deletion_verdicts(
            tunnel=cast(Any, tunnel),
            machines=cast(Any, machines),
            settings=self._settings.build,
            now=now,
        )
        await self._report_deletions(key, tunnel, deletions)
        try:
            plan = plan_tenant(
                tunnel=cast(Any, tunnel),
                cluster=cast(Any, cluster),
                machines=cast(Any, machines),
                # The tenant's Nodes, for per-node pod routes; None until the tenant side
                # has listed them (the elected node carries the pod CIDR meanwhile).
                nodes=cast(Any, self._side.nodes(key)),
                observations=observations,
                settings=self._settings.build,
                kept=deletions.kept,
                now=now,
            )
        except PermanentError as exc:
            # Revocation does not wait for a valid spec: a Machine deleted meanwhile
            # loses its certificates and its CCD once drained.
            await self._revoke_while_invalid(key, tunnel, machines, kept=deletions.kept)
            await self._report(key, tunnel, error=exc, part=SERVER_READY)
            return Outcome(requeue_after=self._until(deletions.recheck_at)), "invalid"
        for warning in plan.tenant.warnings:
            _log.info("event=tenant_warning tenant=%s warning=%r", key, warning)
        await self._report_waiting(key, plan, machines)

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
                kept=deletions.kept,
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
        # A revoked serial admits nobody again, whatever Machine the tenant side reports
        # it for (its CSRs outlive a node replaced under the same name).
        allocations = forget_serials(plan.allocation.allocations, gone=step.book.revoked)
        # One identity and tunnel address per hosted apiserver pod (apiserver_slots.py).
        replicas = await self._ensure_apiserver_slots(
            plan.tenant, plan.names, keys, allocations=allocations, now=now
        )
        server_cm = await self._apply_server_config(
            plan,
            keys.apiserver_serial,
            crl,
            allocations=allocations,
            live=server_cm,
            replicas=replicas,
        )

        plan, image = await self._agent_image(key, tunnel, plan, now=now)
        role_config = plan.server_role_config
        server = await self._ensure(
            DEPLOYMENT,
            server_deployment(
                tenant=plan.tenant, settings=self._settings.build, role_config=role_config
            ),
            live=image.live,
            read=False,
        )
        await self._ensure(
            NETWORK_POLICY,
            server_network_policy(tenant=plan.tenant, settings=self._settings.build),
        )
        service = await self._ensure(SERVICE, server_service(tenant=plan.tenant))
        apiserver_config = await self._ensure(
            CONFIG_MAP,
            apiserver_config_map(tenant=plan.tenant, role_config=plan.apiserver_role_config),
        )
        await self._attach_sidecar(plan, apiserver_config)

        agent, side_retry, signed = await self._ensure_tenant_side(
            key, plan, keys, service=service, machines=machines
        )
        if signed:
            # Recorded (and, for a Machine that is gone by now, revoked) in the book
            # before the status learns them: the book is what revokes.
            step = await self._revocations(
                key,
                tunnel,
                keys.ca,
                server_cm,
                machines,
                kept=deletions.kept,
                reported=signed,
                now=now,
            )
            crl = step.crl
        updated = forget_serials(
            record_signed(allocations, [(c.node, format(c.serial, "x")) for c in signed]),
            gone=step.book.revoked,
        )
        if updated != allocations or crl.changed:
            allocations = updated
            await self._apply_server_config(
                plan,
                keys.apiserver_serial,
                crl,
                allocations=allocations,
                live=server_cm,
                replicas=replicas,
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
        conditions = image.conditions(conditions, generation=plan.tenant.generation, now=now)
        done = image.rolled_out(server, conditions)
        status = plan.status(
            conditions=conditions,
            previous=cast(TunnelStatusBody, tunnel.get("status") or {}),
            now=now,
            allocations=allocations,
        )
        status.update(image.status(rolled_out=done))
        await self._write_status(key, tunnel, status)
        if done:
            await self._image_rolled_out(key, tunnel, image.verdict.image, now=now)
        await self._report_election(key, tunnel, plan)
        self._expiries(key, keys, crl)
        self.observed[key] = observation_fingerprint(None if observe_error else observations)

        due = [keys.renew_at, crl.refresh_at]
        if replicas.renew_at is not None:  # an apiserver slot's certificate
            due.append(replicas.renew_at)
        if deletions.recheck_at is not None:  # a draining node's bound
            due.append(deletions.recheck_at)
        if plan.election.recheck_at is not None:  # the end of a new holder's grace
            due.append(plan.election.recheck_at)
        if (deadline := image.deadline(self._settings.image_rollout)) is not None:
            due.append(deadline)  # the pass that finds it not rolled out then halts the rollout
        requeue = max(1.0, min((d - now).total_seconds() for d in due))
        return Outcome(requeue_after=requeue, retry=side_retry), "retry" if side_retry else "ok"

    async def _report_election(self, key: TenantRef, tunnel: KubeObject, plan: TenantPlan) -> None:
        """Count, log and tell in an Event a change of the service-route holder."""
        election = plan.election
        if not election.changed:
            return
        reason = election.reason or ""
        self._metrics.service_route_elections.labels(reason=reason).inc()
        _log.info(
            "event=service_route_elected tenant=%s node=%s previous=%s reason=%s",
            key,
            election.holder or "-",
            election.previous or "-",
            reason,
        )
        was = f" (was {election.previous}: {reason})" if election.previous else ""
        if election.holder is None:
            note = f"no node carries the service CIDR any more{was}: none is connected"
        else:
            note = (
                f"node {election.holder} now carries the service CIDR{was}; it reconnects "
                "once to take the new routes"
            )
        await self._event(tunnel, "Normal", "ServiceRouteElected", note)

    def _until(self, when: datetime | None) -> float | None:
        """Seconds until WHEN (at least 1), for a requeue; None for no time."""
        if when is None:
            return None
        return max(1.0, (when - self._clock.now()).total_seconds())

    async def _report_deletions(
        self, key: TenantRef, tunnel: KubeObject, deletions: DeletionVerdicts
    ) -> None:
        """Log, and tell in an Event on the Tunnel, each deleted Machine's verdict once,
        when it changes: NodeRevocationDeferred while its node drains, NodeRevocationDue
        when its certificates go."""
        seen = self._reported_deletions.setdefault(key, {})
        for machine, verdict in sorted(deletions.verdicts.items()):
            said = f"{verdict.revoke}:{verdict.reason}"
            if seen.get(machine) == said:
                continue
            seen[machine] = said
            until = verdict.recheck_at.isoformat() if verdict.recheck_at else "-"
            _log.info(
                "event=%s tenant=%s machine=%s reason=%r until=%s",
                "node_revocation_due" if verdict.revoke else "node_revocation_deferred",
                key,
                machine,
                verdict.reason,
                until,
            )
            if verdict.revoke:
                note = (
                    f"Machine {key.namespace}/{machine} is being deleted ({verdict.reason}): "
                    "its node's tunnel certificates are revoked now"
                )
                await self._event(tunnel, "Normal", "NodeRevocationDue", note)
            else:
                note = (
                    f"Machine {key.namespace}/{machine} is being deleted ({verdict.reason}): "
                    f"its node keeps its tunnel until drained, at the latest {until}"
                )
                await self._event(tunnel, "Normal", "NodeRevocationDeferred", note)
        for machine in set(seen) - set(deletions.verdicts):
            del seen[machine]

    async def _list_machines(self, key: TenantRef) -> list[KubeObject]:
        if self._machines is not None:
            items = self._machines.list(key.namespace)
        else:
            items, _ = await self._call(lambda: self._api.list(MACHINE, key.namespace))
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
        return observations_from_status(tunnel.get("status") or {}), error
