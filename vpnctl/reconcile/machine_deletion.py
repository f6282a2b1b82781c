"""When a deleted Machine's node loses its tunnel: once it is drained, not when deletion starts.

CAPI deletes a Machine in steps (core/reconcilers/machine/machine_controller.go,
``reconcileDelete``): pre-drain hooks, cordon and drain the Node, wait for its volumes to
detach, pre-terminate hooks, delete the infrastructure, delete the Node. While the drain
runs, ``kubectl logs``/``exec`` on that node still matter (a person watching a pod go, a
PodDisruptionBudget that holds the drain and needs a look), so the node keeps its
certificate and its CCD until the drain is over. The signal used:

- v1beta2 conditions (``status.v1beta2.conditions`` when read as v1beta1, which is how
  vpnctl reads Machines; ``status.conditions`` when read as v1beta2): the ``Deleting``
  condition's reason. ``WaitingForPreDrainHook`` and ``DrainingNode`` keep the node; any
  later step (``WaitingForVolumeDetach``, ``WaitingForPreTerminateHook``,
  ``WaitingForInfrastructureDeletion``, ``WaitingForBootstrapDeletion``, ``DeletingNode``,
  ``DeletionCompleted``) revokes it. The generic reasons (``Deleting``, ``InternalError``)
  decide nothing.
- v1beta1 conditions (``status.conditions`` as v1beta1; ``status.deprecated.v1beta1
  .conditions`` as v1beta2), for CAPI releases before v1beta2 conditions: revoke when
  ``DrainingSucceeded`` is True, when ``VolumeDetachSucceeded`` or
  ``PreTerminateDeleteHookSucceeded`` exists (CAPI sets them only after the drain, or when
  it skips the drain), or when ``InfrastructureReady`` is False with reason ``Deleted``
  (v1beta2: ``ObjectDeleted``).
- Whatever the conditions say, revoke once ``deletionTimestamp`` is older than the
  bound (the Tunnel's ``spec.nodeRevocation.maxDelay``, else the controller's
  ``--node-revocation-max-delay``, 10m). CAPI's own ``nodeDrainTimeout`` defaults to 0,
  wait forever; a node being deleted must not keep its credentials that long, and a
  Machine with no conditions at all (a provider that sets none) is covered by this bound.
  A bound of 0 revokes when deletion starts, as vpnctl did before.

The decision is pure (``revocation_verdict``); the reconciler computes it once per pass and
hands the names of the Machines that keep their tunnel to the plan and the revocation book
(``kept_while_deleting``), so the CCD and the CRL always agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

DEFAULT_MAX_DELAY = timedelta(minutes=10)

# v1beta2 Deleting reasons, in CAPI's order.
_KEEP_REASONS = frozenset({"WaitingForPreDrainHook", "DrainingNode"})
_REVOKE_REASONS = frozenset(
    {
        "WaitingForVolumeDetach",
        "WaitingForPreTerminateHook",
        "WaitingForInfrastructureDeletion",
        "WaitingForBootstrapDeletion",
        "DeletingNode",
        "DeletionCompleted",
    }
)


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """What to do with a Machine's node certificate now.

    ``revoke``: the node loses its tunnel now. ``reason``: why, for logs and Events
    (``NotDeleting``, ``Draining``, ``Drained``, ``InfrastructureDeleting``, ``Timeout``,
    ``NoDeletionTime``...). ``recheck_at``: when the verdict turns by the clock alone (the
    bound), for a Machine that keeps its tunnel for now."""

    revoke: bool
    reason: str
    recheck_at: datetime | None = None


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _conditions(value: object) -> list[Mapping[str, Any]]:
    return [c for c in value if isinstance(c, Mapping)] if isinstance(value, list) else []


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.astimezone(UTC) if parsed.tzinfo is not None else None


def _all_conditions(status: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Every condition the Machine carries, whichever API version it was read with. The
    v1beta1 and v1beta2 type names do not collide, so one list is enough."""
    deprecated = _mapping(_mapping(status.get("deprecated")).get("v1beta1"))
    return [
        *_conditions(status.get("conditions")),
        *_conditions(_mapping(status.get("v1beta2")).get("conditions")),
        *_conditions(deprecated.get("conditions")),
    ]


def _by_conditions(conditions: Sequence[Mapping[str, Any]]) -> Verdict | None:
    """What the deletion conditions say, or None when they say nothing yet. Looks at every
    entry of a type (``InfrastructureReady`` is a type in both versions)."""

    def having(kind: str, status: str | None = None) -> list[Mapping[str, Any]]:
        return [
            c for c in conditions if c.get("type") == kind and status in (None, c.get("status"))
        ]

    reasons = {c.get("reason") for c in having("Deleting", "True")}
    for reason in sorted(r for r in reasons if r in _REVOKE_REASONS):
        return Verdict(revoke=True, reason=f"Drained ({reason})")
    if having("DrainingSucceeded", "True"):
        return Verdict(revoke=True, reason="Drained (DrainingSucceeded)")
    for after_drain in ("VolumeDetachSucceeded", "PreTerminateDeleteHookSucceeded"):
        if having(after_drain):
            return Verdict(revoke=True, reason=f"Drained ({after_drain})")
    infra = {c.get("reason") for c in having("InfrastructureReady", "False")}
    if infra & {"Deleted", "ObjectDeleted"}:
        return Verdict(revoke=True, reason="InfrastructureDeleting")
    if reasons & _KEEP_REASONS or having("DrainingSucceeded"):
        return Verdict(revoke=False, reason="Draining")
    return None


def revocation_verdict(
    machine: Mapping[str, Any], *, now: datetime, max_delay: timedelta
) -> Verdict:
    """Whether MACHINE's node loses its tunnel now; see the module docstring."""
    meta = _mapping(machine.get("metadata"))
    stamp = meta.get("deletionTimestamp")
    if not stamp:
        return Verdict(revoke=False, reason="NotDeleting")
    deleted_at = _parse_time(stamp)
    if deleted_at is None:  # unreadable: the safe side
        return Verdict(revoke=True, reason="NoDeletionTime")
    deadline = deleted_at + max_delay
    if now >= deadline:
        return Verdict(revoke=True, reason="Timeout")
    said = _by_conditions(_all_conditions(_mapping(machine.get("status"))))
    if said is not None and said.revoke:
        return said
    reason = said.reason if said is not None else "WaitingForDrain"
    return Verdict(revoke=False, reason=reason, recheck_at=deadline)


@dataclass(frozen=True, kw_only=True)
class DeletionVerdicts:
    """The verdicts of one pass, for the Machines being deleted."""

    verdicts: Mapping[str, Verdict]

    @property
    def kept(self) -> frozenset[str]:
        """Names of deleted Machines whose nodes keep their tunnel for now."""
        return frozenset(name for name, v in self.verdicts.items() if not v.revoke)

    @property
    def recheck_at(self) -> datetime | None:
        """The earliest time a kept Machine's verdict turns by the clock."""
        times = [v.recheck_at for v in self.verdicts.values() if v.recheck_at is not None]
        return min(times, default=None)


def kept_while_deleting(
    machines: Sequence[Mapping[str, Any]], *, now: datetime, max_delay: timedelta
) -> DeletionVerdicts:
    """The verdict of every Machine being deleted (by name)."""
    out: dict[str, Verdict] = {}
    for machine in machines:
        meta = _mapping(machine.get("metadata"))
        if meta.get("deletionTimestamp"):
            out[str(meta.get("name") or "")] = revocation_verdict(
                machine, now=now, max_delay=max_delay
            )
    return DeletionVerdicts(verdicts=out)
