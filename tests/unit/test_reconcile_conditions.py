"""Status conditions (vpnctl.reconcile.conditions)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from vpnctl.api import Condition
from vpnctl.reconcile.conditions import (
    AGENT_INSTALLED,
    PKI_READY,
    READY,
    SERVER_READY,
    derive_ready,
    find_condition,
    parse_rfc3339,
    rfc3339,
    set_condition,
)

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def cond(conditions: list[Condition], type_: str) -> Condition:
    found = find_condition(conditions, type_)
    assert found is not None
    return found


def test_rfc3339_round_trip_in_whole_seconds() -> None:
    assert rfc3339(T0 + timedelta(microseconds=500)) == "2024-05-01T12:00:00Z"
    assert parse_rfc3339("2024-05-01T12:00:00Z") == T0
    with pytest.raises(ValueError, match="no timezone"):
        rfc3339(datetime(2024, 1, 1))  # naive on purpose


def test_set_condition_adds_with_all_fields() -> None:
    out = set_condition(
        [],
        type=PKI_READY,
        status="True",
        reason="Issued",
        message="CA and server certificate issued",
        observed_generation=3,
        now=T0,
    )
    assert out == [
        {
            "type": PKI_READY,
            "status": "True",
            "observedGeneration": 3,
            "lastTransitionTime": "2024-05-01T12:00:00Z",
            "reason": "Issued",
            "message": "CA and server certificate issued",
        }
    ]


def test_transition_time_moves_only_when_status_changes() -> None:
    def server_ready(
        conditions: list[Condition] | None, status: str, reason: str, generation: int, now: datetime
    ) -> list[Condition]:
        return set_condition(
            conditions,
            type=SERVER_READY,
            status=status,  # type: ignore[arg-type]
            reason=reason,
            message=reason.lower(),
            observed_generation=generation,
            now=now,
        )

    first = server_ready(None, "False", "A", 1, T0)
    same = server_ready(first, "False", "B", 2, T1)
    assert cond(same, SERVER_READY)["lastTransitionTime"] == rfc3339(T0)
    assert cond(same, SERVER_READY)["reason"] == "B"
    assert cond(same, SERVER_READY)["observedGeneration"] == 2
    flipped = server_ready(same, "True", "Up", 2, T1)
    assert cond(flipped, SERVER_READY)["lastTransitionTime"] == rfc3339(T1)


def test_conditions_are_sorted_and_not_mutated() -> None:
    original: list[Condition] = []
    a = set_condition(
        original, type="Zeta", status="True", reason="R", message="m", observed_generation=1, now=T0
    )
    b = set_condition(
        a, type="Alpha", status="True", reason="R", message="m", observed_generation=1, now=T0
    )
    assert [c["type"] for c in b] == ["Alpha", "Zeta"]
    assert original == []
    assert [c["type"] for c in a] == ["Zeta"]


def parts(**statuses: str) -> list[Condition]:
    out: list[Condition] = []
    for type_, status in statuses.items():
        out = set_condition(
            out,
            type=type_,
            status=status,  # type: ignore[arg-type]
            reason=f"{type_}Reason",
            message=f"{type_} says {status}",
            observed_generation=1,
            now=T0,
        )
    return out


def ready_of(**statuses: str) -> Condition:
    """The Ready condition derived from parts of these STATUSES."""
    return cond(derive_ready(parts(**statuses), observed_generation=1, now=T1), READY)


def test_ready_true_when_all_parts_true() -> None:
    ready = ready_of(PKIReady="True", ServerReady="True", AgentInstalled="True")
    assert (ready["status"], ready["reason"]) == ("True", "TunnelReady")


def test_ready_false_takes_the_first_false_parts_reason_and_message() -> None:
    ready = ready_of(PKIReady="True", ServerReady="False", AgentInstalled="False")
    assert (ready["status"], ready["reason"], ready["message"]) == (
        "False",
        "ServerReadyReason",
        "ServerReady says False",
    )


def test_ready_false_beats_unknown_and_unknown_beats_true() -> None:
    assert ready_of(PKIReady="Unknown", ServerReady="False")["status"] == "False"
    ready = ready_of(PKIReady="True", ServerReady="True")
    assert (ready["status"], ready["reason"]) == ("Unknown", "AgentInstalledUnknown")


def test_ready_without_the_agent_part() -> None:
    out = derive_ready(
        parts(PKIReady="True", ServerReady="True"),
        observed_generation=1,
        now=T1,
        parts=(PKI_READY, SERVER_READY),
    )
    assert cond(out, READY)["status"] == "True"
    assert find_condition(out, AGENT_INSTALLED) is None


def test_resync_with_no_change_gives_an_identical_list() -> None:
    base = derive_ready(
        parts(PKIReady="True", ServerReady="True", AgentInstalled="True"),
        observed_generation=1,
        now=T0,
    )
    again = derive_ready(base, observed_generation=1, now=T1)
    assert again == base
