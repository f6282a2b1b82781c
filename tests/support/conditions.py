"""Status conditions as a reconcile that succeeded writes them, for tests of what reads
them back (the tenant plan, the status table)."""

from __future__ import annotations

from datetime import datetime

from vpnctl.api import Condition
from vpnctl.reconcile.conditions import (
    AGENT_INSTALLED,
    PKI_READY,
    SERVER_READY,
    derive_ready,
    set_condition,
)


def all_parts_done(
    conditions: list[Condition], *, generation: int, now: datetime
) -> list[Condition]:
    """CONDITIONS with PKIReady, ServerReady and AgentInstalled True (reason Done) at
    NOW for GENERATION, and Ready derived from them."""
    for type_ in (PKI_READY, SERVER_READY, AGENT_INSTALLED):
        conditions = set_condition(
            conditions,
            type=type_,
            status="True",
            reason="Done",
            message="done",
            observed_generation=generation,
            now=now,
        )
    return derive_ready(conditions, observed_generation=generation, now=now)
