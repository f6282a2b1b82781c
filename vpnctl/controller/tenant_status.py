"""What the pass tells: the Tunnel's status, its conditions, and Events.

The status is written last in a pass (after the CRL and the server config, see
``controller/tenant_reconciler.py``), with server-side apply to the status subresource and only
when it differs from the live one; every condition whose status or reason changed
becomes an Event on the Tunnel. A problem that stops a pass (``_report``) sets one
condition False and keeps every other field, because the status is the tenant's memory
(tunnel addresses, the service-route holder). Machines that get no tunnel yet get one
Event each per reason. The last known observations are read back from the status table
when the server cannot be asked.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from vpnctl.api import Condition, ConditionStatus
from vpnctl.controller import pki_decisions as pki
from vpnctl.controller.budgets import DEGRADED
from vpnctl.controller.interfaces import TenantRef
from vpnctl.controller.tenant_api import TenantCalls, meta_of
from vpnctl.controller.tenant_pki import TenantPKI
from vpnctl.kube import TUNNEL, KubeObject
from vpnctl.reconcile.conditions import (
    AGENT_INSTALLED,
    PKI_READY,
    SERVER_READY,
    derive_ready,
    parse_rfc3339,
    set_condition,
    set_error_condition,
)
from vpnctl.reconcile.errors import ReconcileError
from vpnctl.reconcile.image_rollout import IMAGE_ROLLOUT_HALTED
from vpnctl.reconcile.status import NodeObservation
from vpnctl.reconcile.tenant_plan import TenantPlan

_log = logging.getLogger(__name__)


Fingerprint = frozenset[tuple[str, bool, bool | None, datetime | None]]


def observation_fingerprint(observations: Mapping[str, NodeObservation] | None) -> Fingerprint:
    """What in an observation is worth a reconcile: who is connected, since when (a
    reconnect between two polls is news), and whose kubelet answers. RTT moves all the
    time and waits for the next reconcile. None (the server did not answer) has its own
    fingerprint."""
    if observations is None:
        return frozenset({("", False, None, None)})
    return frozenset(
        (n, o.connected, o.kubelet_reachable, o.connected_since) for n, o in observations.items()
    )


def observations_from_status(status: Mapping[str, Any]) -> dict[str, NodeObservation]:
    """Last known observations, from the status table, for when the server can't be asked:
    the service-route holder then stays where it is instead of being dropped."""
    out: dict[str, NodeObservation] = {}
    for row in status.get("nodes") or []:
        name = row.get("name")
        if not isinstance(name, str) or not row.get("tunnelIP"):
            continue
        # Only the server's own connect time: `since` may be the controller's
        # observation time, which must not come back as if the server had said it.
        since = None
        if isinstance(row.get("connectedSince"), str):
            try:
                since = parse_rfc3339(row["connectedSince"])
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


class StatusReports(TenantCalls):
    """Part of ``TenantReconciler``: status, conditions and Events."""

    # Machines reported as waiting, per tenant: machine -> reason of the last Event.
    _reported_waiting: dict[TenantRef, dict[str, str]]

    async def _write_status(
        self, key: TenantRef, tunnel: KubeObject, status: Mapping[str, Any]
    ) -> None:
        previous = tunnel.get("status") or {}
        self._metrics.set_conditions(
            key, {c["type"]: c["status"] for c in status.get("conditions") or []}
        )
        if dict(status) == previous:
            return
        meta = meta_of(tunnel)
        body = {
            "apiVersion": TUNNEL.api_version,
            "kind": TUNNEL.kind,
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "status": dict(status),
        }
        await self._call(
            lambda: self._api.apply_status(TUNNEL, body, field_manager=self._settings.field_manager)
        )
        self._count("status", TUNNEL)
        await self._condition_events(tunnel, previous.get("conditions"), status.get("conditions"))

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
                if (condition["status"] == "True")
                != (condition["type"] in (DEGRADED, IMAGE_ROLLOUT_HALTED))
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
        generation = int(meta_of(tunnel).get("generation") or 0)
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
        by_name = {str(meta_of(m).get("name")): m for m in machines}
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
