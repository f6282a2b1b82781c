"""When a deleted Machine's node loses its tunnel (vpnctl.reconcile.machine_deletion), and
that the plan and the revocation book both follow that one decision."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from tests.support import capi
from vpnctl.api import Machine
from vpnctl.reconcile.errors import PermanentError
from vpnctl.reconcile.machine_deletion import kept_while_deleting, revocation_verdict
from vpnctl.reconcile.revocation_book import LiveMachine, live_machines
from vpnctl.reconcile.settings import Settings
from vpnctl.reconcile.tenant_plan import deletion_verdicts, plan_tenant, revocation_max_delay
from vpnctl.reconcile.tunnel_spec import parse_tunnel_spec

DELETED_AT = datetime(2024, 1, 1, tzinfo=UTC)  # capi.machine(deleting=True)'s stamp
MAX = timedelta(minutes=10)
SOON = DELETED_AT + timedelta(minutes=1)


def deleting(
    *,
    v1beta1: list[dict[str, Any]] | None = None,
    v1beta2: list[dict[str, Any]] | None = None,
    name: str = "m-1",
    node: str = "node-1",
) -> dict[str, Any]:
    """A deleted Machine with the conditions CAPI set so far (as read through v1beta1:
    old conditions in status.conditions, new ones in status.v1beta2.conditions)."""
    body: dict[str, Any] = dict(
        capi.machine(name=name, node=node, internal_ip="10.0.0.11", deleting=True)
    )
    status = dict(body["status"])
    if v1beta1 is not None:
        status["conditions"] = v1beta1
    if v1beta2 is not None:
        status["v1beta2"] = {"conditions": v1beta2}
    body["status"] = status
    return body


def cond(kind: str, status: str, reason: str = "") -> dict[str, Any]:
    return {"type": kind, "status": status, "reason": reason}


def test_a_machine_not_being_deleted_keeps_its_tunnel() -> None:
    m = capi.machine(name="m-1", node="node-1", internal_ip="10.0.0.11")
    verdict = revocation_verdict(m, now=SOON, max_delay=MAX)
    assert (verdict.revoke, verdict.reason) == (False, "NotDeleting")


@pytest.mark.parametrize(
    ("v1beta1", "v1beta2"),
    [
        # CAPI before v1beta2 conditions: DrainingSucceeded False while the drain runs.
        ([cond("DrainingSucceeded", "False", "Draining")], None),
        ([cond("DrainingSucceeded", "False", "DrainingFailed")], None),
        # v1beta2: the Deleting condition's reason.
        (None, [cond("Deleting", "True", "DrainingNode")]),
        (None, [cond("Deleting", "True", "WaitingForPreDrainHook")]),
        # Both, as CAPI 1.9+ writes them.
        (
            [cond("DrainingSucceeded", "False", "Draining")],
            [cond("Deleting", "True", "DrainingNode")],
        ),
    ],
)
def test_a_draining_node_keeps_its_tunnel_until_the_bound(
    v1beta1: list[dict[str, Any]] | None, v1beta2: list[dict[str, Any]] | None
) -> None:
    verdict = revocation_verdict(
        deleting(v1beta1=v1beta1, v1beta2=v1beta2), now=SOON, max_delay=MAX
    )
    assert not verdict.revoke
    assert verdict.reason.startswith("Draining")
    assert verdict.recheck_at == DELETED_AT + MAX


@pytest.mark.parametrize(
    ("v1beta1", "v1beta2", "reason"),
    [
        ([cond("DrainingSucceeded", "True")], None, "Drained (DrainingSucceeded)"),
        # The drain was skipped (no node, exclude annotation): the next steps' conditions.
        ([cond("VolumeDetachSucceeded", "False", "WaitingForVolumeDetach")], None, "Drained"),
        ([cond("PreTerminateDeleteHookSucceeded", "True")], None, "Drained"),
        (None, [cond("Deleting", "True", "WaitingForVolumeDetach")], "Drained"),
        (None, [cond("Deleting", "True", "WaitingForPreTerminateHook")], "Drained"),
        # The v1beta2 DrainingNode is stale next to a v1beta1 success: drained wins.
        (
            [cond("DrainingSucceeded", "True")],
            [cond("Deleting", "True", "DrainingNode")],
            "Drained",
        ),
    ],
)
def test_a_drained_node_is_revoked(
    v1beta1: list[dict[str, Any]] | None, v1beta2: list[dict[str, Any]] | None, reason: str
) -> None:
    verdict = revocation_verdict(
        deleting(v1beta1=v1beta1, v1beta2=v1beta2), now=SOON, max_delay=MAX
    )
    assert verdict.revoke
    assert verdict.reason.startswith(reason)


@pytest.mark.parametrize(
    ("v1beta1", "v1beta2"),
    [
        ([cond("InfrastructureReady", "False", "Deleted")], None),
        (None, [cond("Deleting", "True", "WaitingForInfrastructureDeletion")]),
        (None, [cond("InfrastructureReady", "False", "ObjectDeleted")]),
        (None, [cond("Deleting", "True", "DeletingNode")]),
    ],
)
def test_infrastructure_being_deleted_revokes(
    v1beta1: list[dict[str, Any]] | None, v1beta2: list[dict[str, Any]] | None
) -> None:
    verdict = revocation_verdict(
        deleting(v1beta1=v1beta1, v1beta2=v1beta2), now=SOON, max_delay=MAX
    )
    assert verdict.revoke


def test_past_the_bound_a_draining_node_is_revoked() -> None:
    draining = deleting(v1beta2=[cond("Deleting", "True", "DrainingNode")])
    assert not revocation_verdict(
        draining, now=DELETED_AT + MAX - timedelta(seconds=1), max_delay=MAX
    ).revoke
    verdict = revocation_verdict(draining, now=DELETED_AT + MAX, max_delay=MAX)
    assert (verdict.revoke, verdict.reason) == (True, "Timeout")


def test_no_conditions_at_all_waits_for_the_bound() -> None:
    bare = deleting()
    early = revocation_verdict(bare, now=SOON, max_delay=MAX)
    assert (early.revoke, early.reason, early.recheck_at) == (
        False,
        "WaitingForDrain",
        DELETED_AT + MAX,
    )
    assert revocation_verdict(bare, now=DELETED_AT + MAX, max_delay=MAX).revoke


def test_generic_deleting_reasons_decide_nothing() -> None:
    for reason in ("Deleting", "InternalError"):
        verdict = revocation_verdict(
            deleting(v1beta2=[cond("Deleting", "True", reason)]), now=SOON, max_delay=MAX
        )
        assert not verdict.revoke, reason


def test_a_zero_bound_revokes_when_deletion_starts() -> None:
    draining = deleting(v1beta2=[cond("Deleting", "True", "DrainingNode")])
    assert revocation_verdict(draining, now=DELETED_AT, max_delay=timedelta(0)).revoke


def test_an_unreadable_deletion_timestamp_revokes() -> None:
    m = deleting(v1beta2=[cond("Deleting", "True", "DrainingNode")])
    m["metadata"] = {**m["metadata"], "deletionTimestamp": "yesterday"}
    assert revocation_verdict(m, now=SOON, max_delay=MAX).reason == "NoDeletionTime"


def test_conditions_read_through_v1beta2_count_too() -> None:
    """Read as v1beta2, the new conditions are status.conditions and the old ones sit in
    status.deprecated.v1beta1.conditions."""
    m = deleting(v1beta1=[cond("Deleting", "True", "DrainingNode")])
    assert not revocation_verdict(m, now=SOON, max_delay=MAX).revoke
    m["status"] = {
        **m["status"],
        "deprecated": {"v1beta1": {"conditions": [cond("DrainingSucceeded", "True")]}},
    }
    assert revocation_verdict(m, now=SOON, max_delay=MAX).revoke


def test_verdicts_of_a_pass_name_the_kept_machines_and_the_next_recheck() -> None:
    machines = [
        capi.machine(name="m-0", node="node-0", internal_ip="10.0.0.10"),
        deleting(name="m-1", node="node-1", v1beta2=[cond("Deleting", "True", "DrainingNode")]),
        deleting(name="m-2", node="node-2", v1beta1=[cond("DrainingSucceeded", "True")]),
    ]
    verdicts = kept_while_deleting(machines, now=SOON, max_delay=MAX)
    assert set(verdicts.verdicts) == {"m-1", "m-2"}
    assert verdicts.kept == {"m-1"}
    assert verdicts.recheck_at == DELETED_AT + MAX
    # The revocation book sees the draining Machine as live, the drained one as gone.
    assert live_machines(machines, kept=verdicts.kept) == (
        LiveMachine(name="m-0", node="node-0"),
        LiveMachine(name="m-1", node="node-1"),
    )
    assert live_machines(machines) == (LiveMachine(name="m-0", node="node-0"),)


def test_the_plan_keeps_a_draining_node_routed_and_drops_a_drained_one() -> None:
    tunnel = capi.tunnel()
    machines = [
        capi.machine(name="m-0", node="node-0", internal_ip="10.0.0.10"),
        deleting(name="m-1", node="node-1", v1beta2=[cond("Deleting", "True", "DrainingNode")]),
        deleting(name="m-2", node="node-2", v1beta1=[cond("DrainingSucceeded", "True")]),
    ]
    machines[2]["status"]["addresses"] = [{"type": "InternalIP", "address": "10.0.0.12"}]
    settings = Settings(agent_image="img")
    typed = cast(list[Machine], machines)
    verdicts = deletion_verdicts(tunnel=tunnel, machines=typed, settings=settings, now=SOON)
    plan = plan_tenant(
        tunnel=tunnel,
        cluster=capi.cluster(),
        machines=typed,
        nodes=[],
        observations={},
        settings=settings,
        kept=verdicts.kept,
    )
    assert [c.common_name for c in plan.clients[1:]] == ["node-0", "node-1"]


def test_the_bound_comes_from_the_tunnel_else_the_controller() -> None:
    settings = Settings(agent_image="img", node_revocation_max_delay=timedelta(minutes=3))
    plain = capi.tunnel()
    assert revocation_max_delay(plain, settings=settings) == timedelta(minutes=3)
    own = capi.tunnel(spec={"clusterName": "tenant-a", "nodeRevocation": {"maxDelay": "90s"}})
    assert revocation_max_delay(own, settings=settings) == timedelta(seconds=90)
    assert parse_tunnel_spec(own).node_revocation_max_delay == timedelta(seconds=90)
    # An invalid value is reported by the spec's parse; revocation uses the default.
    bad = capi.tunnel(spec={"clusterName": "tenant-a", "nodeRevocation": {"maxDelay": "2d"}})
    assert revocation_max_delay(bad, settings=settings) == timedelta(minutes=3)
    with pytest.raises(PermanentError, match=r"nodeRevocation\.maxDelay"):
        parse_tunnel_spec(bad)
