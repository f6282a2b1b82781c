"""Status conditions in the shape of metav1.Condition, and how Ready follows the others.

Conditions are written on every reconcile, so they must not churn: `set_condition` keeps
`lastTransitionTime` unless the status really changes, and the list is kept sorted by
type, so an unchanged world gives a byte-identical status and no write.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from vpnctl.api import Condition, ConditionStatus
from vpnctl.reconcile.errors import ReconcileError

READY = "Ready"
PKI_READY = "PKIReady"
SERVER_READY = "ServerReady"
AGENT_INSTALLED = "AgentInstalled"
# The order Ready looks at its parts, which is also the order a person fixes them in.
READY_PARTS = (PKI_READY, SERVER_READY, AGENT_INSTALLED)


def rfc3339(moment: datetime) -> str:
    """`2024-05-01T12:00:00Z`: whole seconds, UTC, as Kubernetes writes timestamps."""
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {moment!r} has no timezone; pass an aware datetime")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def find_condition(conditions: Sequence[Condition] | None, type_: str) -> Condition | None:
    for condition in conditions or ():
        if condition.get("type") == type_:
            return condition
    return None


def set_condition(
    conditions: Sequence[Condition] | None,
    *,
    type: str,  # the field's own name in metav1.Condition
    status: ConditionStatus,
    reason: str,
    message: str,
    observed_generation: int,
    now: datetime,
) -> list[Condition]:
    """A new list with `type` set; lastTransitionTime moves only when the status changes."""
    previous = find_condition(conditions, type)
    if (
        previous is not None
        and previous.get("status") == status
        and previous.get("lastTransitionTime")
    ):
        transition = previous["lastTransitionTime"]
    else:
        transition = rfc3339(now)
    updated: Condition = {
        "type": type,
        "status": status,
        "observedGeneration": observed_generation,
        "lastTransitionTime": transition,
        "reason": reason,
        # The API caps messages at 32768 bytes; ours are one sentence, this is a guard.
        "message": message[:32768],
    }
    others = [c for c in conditions or () if c.get("type") != type]
    return sorted([*others, updated], key=lambda c: c["type"])


def set_error_condition(
    conditions: Sequence[Condition] | None,
    *,
    type: str,  # the field's own name in metav1.Condition
    error: ReconcileError,
    observed_generation: int,
    now: datetime,
) -> list[Condition]:
    """`type` False with the error's reason and message (temporary or permanent alike:
    the part is not ready either way; the loop decides whether to retry)."""
    return set_condition(
        conditions,
        type=type,
        status="False",
        reason=error.reason,
        message=error.message,
        observed_generation=observed_generation,
        now=now,
    )


def derive_ready(
    conditions: Sequence[Condition] | None,
    *,
    observed_generation: int,
    now: datetime,
    parts: Sequence[str] = READY_PARTS,
) -> list[Condition]:
    """Set Ready from `parts`: True when all are True; else the first False part's reason
    and message; else Unknown (a part is missing or Unknown).

    A tenant that opted out of the agent sets AgentInstalled True with reason `Disabled`,
    or passes `parts` without it.
    """
    first_false: Condition | None = None
    first_unknown: tuple[str, Condition | None] | None = None
    for part in parts:
        condition = find_condition(conditions, part)
        if condition is None or condition.get("status") == "Unknown":
            if first_unknown is None:
                first_unknown = (part, condition)
        elif condition.get("status") == "False" and first_false is None:
            first_false = condition
    if first_false is not None:
        return set_condition(
            conditions,
            type=READY,
            status="False",
            reason=first_false["reason"],
            message=first_false["message"],
            observed_generation=observed_generation,
            now=now,
        )
    if first_unknown is not None:
        part, condition = first_unknown
        return set_condition(
            conditions,
            type=READY,
            status="Unknown",
            reason=condition["reason"] if condition is not None else f"{part}Unknown",
            message=condition["message"] if condition is not None else f"{part} not reported yet",
            observed_generation=observed_generation,
            now=now,
        )
    return set_condition(
        conditions,
        type=READY,
        status="True",
        reason="TunnelReady",
        message="PKI issued, server running, agent installed",
        observed_generation=observed_generation,
        now=now,
    )
