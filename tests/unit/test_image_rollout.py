"""The pure rollout of a new default agent image (vpnctl/reconcile/image_rollout.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from vpnctl.reconcile.conditions import find_condition
from vpnctl.reconcile.image_rollout import (
    IMAGE_ROLLOUT_HALTED,
    RolloutPolicy,
    TenantImage,
    TenantVerdict,
    deployment_rolled_out,
    observed_tenant,
    plan_rollout,
    rolled_out,
    tenant_image_of,
    with_rollout_halt,
)

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
OLD, NEW, FIX = "reg.example/vpnctl:1", "reg.example/vpnctl:2", "reg.example/vpnctl:3"
ONE = RolloutPolicy(max_rolling=1, deadline=timedelta(minutes=10))


def tenant(
    key: str, image: str | None = OLD, since: datetime | None = None, pinned: str | None = None
) -> TenantImage:
    return TenantImage(key=key, pinned=pinned, image=image, rolling_since=since)


def states(tenants: list[TenantImage], **kw: object) -> dict[str, str]:
    plan = plan_rollout(tenants, target=NEW, policy=kw.pop("policy", ONE), now=NOW)  # type: ignore[arg-type]
    return {k: v.state for k, v in plan.tenants.items()}


def test_a_new_default_image_moves_one_tenant_and_the_others_keep_theirs() -> None:
    plan = plan_rollout([tenant("ns/c"), tenant("ns/a"), tenant("ns/b")], target=NEW, policy=ONE,
                        now=NOW)  # fmt: skip
    assert plan.tenants["ns/a"] == TenantVerdict(image=NEW, rolling_since=NOW, state="rolling")
    assert plan.tenants["ns/b"] == TenantVerdict(image=OLD, rolling_since=None, state="waiting")
    assert plan.tenants["ns/c"].image == OLD
    assert plan.wake_at == NOW + ONE.deadline
    assert plan.counts() == {"pinned": 0, "current": 0, "rolling": 1, "halted": 0, "waiting": 2}
    assert plan.halt_message(deadline=ONE.deadline) is None


def test_no_second_tenant_starts_while_one_rolls() -> None:
    rolling = tenant("ns/a", NEW, since=NOW - timedelta(minutes=3))
    assert states([rolling, tenant("ns/b"), tenant("ns/c")]) == {
        "ns/a": "rolling", "ns/b": "waiting", "ns/c": "waiting",
    }  # fmt: skip


def test_the_next_tenant_starts_once_the_rolling_one_is_rolled_out() -> None:
    done = tenant("ns/a", NEW, since=None)
    plan = plan_rollout([done, tenant("ns/b"), tenant("ns/c")], target=NEW, policy=ONE, now=NOW)
    assert {k: v.state for k, v in plan.tenants.items()} == {
        "ns/a": "current", "ns/b": "rolling", "ns/c": "waiting",
    }  # fmt: skip
    assert plan.tenants["ns/b"].rolling_since == NOW


def test_max_rolling_bounds_the_tenants_in_flight() -> None:
    three = RolloutPolicy(max_rolling=3, deadline=timedelta(minutes=10))
    fleet = [tenant("ns/a", NEW, since=NOW)] + [tenant(f"ns/t{i}") for i in range(5)]
    got = states(fleet, policy=three)
    assert sum(1 for s in got.values() if s == "rolling") == 3
    assert got["ns/a"] == "rolling"


def test_a_tenant_not_ready_by_the_deadline_halts_the_rollout() -> None:
    late = tenant("ns/a", NEW, since=NOW - ONE.deadline)
    two = RolloutPolicy(max_rolling=2, deadline=ONE.deadline)
    plan = plan_rollout([late, tenant("ns/b"), tenant("ns/c")], target=NEW, policy=two, now=NOW)
    assert plan.halted_by == ("ns/a",)
    assert plan.tenants["ns/a"] == TenantVerdict(image=NEW, rolling_since=late.rolling_since,
                                                 state="halted")  # fmt: skip
    # A free slot does not matter: nobody else gets the image.
    assert plan.tenants["ns/b"].image == OLD
    assert plan.tenants["ns/c"].image == OLD
    message = plan.halt_message(deadline=ONE.deadline)
    assert message is not None
    assert "ns/a" in message
    assert "600s" in message
    assert "2 tenant(s)" in message
    assert "spec.agent.image" in message


def test_just_before_its_deadline_a_tenant_still_rolls_and_wakes_the_planner_then() -> None:
    since = NOW - ONE.deadline + timedelta(seconds=1)
    plan = plan_rollout([tenant("ns/a", NEW, since=since), tenant("ns/b")], target=NEW, policy=ONE,
                        now=NOW)  # fmt: skip
    assert plan.halted_by == ()
    assert plan.wake_at == since + ONE.deadline


def test_a_fixed_image_goes_first_to_the_tenant_that_halted() -> None:
    # The halted tenant runs NEW (broken); the operator publishes FIX.
    halted = tenant("ns/z", NEW, since=NOW - timedelta(hours=1))
    plan = plan_rollout([tenant("ns/a"), tenant("ns/b"), halted], target=FIX, policy=ONE, now=NOW)
    assert plan.tenants["ns/z"] == TenantVerdict(image=FIX, rolling_since=NOW, state="rolling")
    assert plan.tenants["ns/a"].state == "waiting"
    assert plan.tenants["ns/a"].image == OLD
    assert plan.halted_by == ()


def test_the_old_image_back_is_a_rollout_too() -> None:
    halted = tenant("ns/a", NEW, since=NOW - timedelta(hours=1))
    plan = plan_rollout([halted, tenant("ns/b")], target=OLD, policy=ONE, now=NOW)
    assert plan.tenants["ns/a"] == TenantVerdict(image=OLD, rolling_since=NOW, state="rolling")
    assert plan.tenants["ns/b"] == TenantVerdict(image=OLD, rolling_since=None, state="current")


def test_pinned_tenants_run_their_pin_and_take_no_slot() -> None:
    plan = plan_rollout([tenant("ns/a", OLD, pinned=OLD), tenant("ns/b")], target=NEW, policy=ONE,
                        now=NOW)  # fmt: skip
    assert plan.tenants["ns/a"] == TenantVerdict(image=OLD, rolling_since=None, state="pinned")
    assert plan.tenants["ns/b"].state == "rolling"


def test_pinning_the_halted_tenant_resumes_the_rollout() -> None:
    halted = tenant("ns/a", NEW, since=NOW - timedelta(hours=1), pinned=OLD)
    assert states([halted, tenant("ns/b")]) == {"ns/a": "pinned", "ns/b": "rolling"}


def test_new_tenants_start_on_the_new_image_and_are_no_roll() -> None:
    plan = plan_rollout([tenant("ns/new", None), tenant("ns/a", NEW, since=NOW)], target=NEW,
                        policy=ONE, now=NOW)  # fmt: skip
    assert plan.tenants["ns/new"] == TenantVerdict(image=NEW, rolling_since=None, state="current")
    # ... also while the rollout is halted.
    late = tenant("ns/a", NEW, since=NOW - timedelta(hours=1))
    plan = plan_rollout([tenant("ns/new", None), late], target=NEW, policy=ONE, now=NOW)
    assert plan.tenants["ns/new"].image == NEW
    assert plan.halted_by == ("ns/a",)


def test_an_unchanged_image_rolls_nobody() -> None:
    plan = plan_rollout([tenant("ns/a", NEW), tenant("ns/b", NEW)], target=NEW, policy=ONE, now=NOW)
    assert plan.counts()["current"] == 2
    assert plan.wake_at is None


@pytest.mark.parametrize("kw", [{"max_rolling": 0}, {"deadline": timedelta(0)}])
def test_policy_refuses_nonsense(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must be"):
        RolloutPolicy(**kw)  # type: ignore[arg-type]


def test_the_tunnel_record_is_read_back() -> None:
    tunnel = {
        "spec": {"agent": {"image": OLD}},
        "status": {"agentImage": NEW, "agentImageRollingSince": "2026-12-03T11:58:00Z"},
    }
    assert tenant_image_of("ns/a", tunnel) == TenantImage(
        key="ns/a", pinned=OLD, image=NEW, rolling_since=NOW - timedelta(minutes=2)
    )
    assert tenant_image_of("ns/a", {"status": {"agentImageRollingSince": "garbage"}}) == tenant(
        "ns/a", None
    )


def test_the_live_deployment_corrects_the_record() -> None:
    # A tenant from before the record: it keeps what it runs, it is not rolling.
    legacy = observed_tenant("ns/a", {}, pinned=None, live_image=OLD, now=NOW)
    assert legacy == tenant("ns/a", OLD)
    # Applied but not recorded (a pass that stopped in between): moved now.
    moved = observed_tenant("ns/a", {"status": {"agentImage": OLD}}, pinned=None, live_image=NEW,
                            now=NOW)  # fmt: skip
    assert moved == tenant("ns/a", NEW, since=NOW)
    agreeing = {"status": {"agentImage": NEW, "agentImageRollingSince": "2026-12-03T11:00:00Z"}}
    assert observed_tenant("ns/a", agreeing, pinned=None, live_image=NEW, now=NOW).rolling_since \
        == NOW - timedelta(hours=1)  # fmt: skip


def deployment(**status: int) -> dict[str, object]:
    return {
        "metadata": {"generation": 2},
        "spec": {"replicas": 2},
        "status": {"observedGeneration": 2, **status},
    }


def test_a_deployment_is_rolled_out_by_kubectl_rollout_status_rule() -> None:
    assert deployment_rolled_out(deployment(replicas=2, updatedReplicas=2, availableReplicas=2))
    # An old replica still running (a new pod that crashes keeps the old one up).
    assert not deployment_rolled_out(deployment(replicas=3, updatedReplicas=2, availableReplicas=2))
    assert not deployment_rolled_out(deployment(replicas=2, updatedReplicas=2, availableReplicas=1))
    assert not deployment_rolled_out(deployment(replicas=2, updatedReplicas=1, availableReplicas=2))
    stale = deployment(replicas=2, updatedReplicas=2, availableReplicas=2)
    stale["status"] = {**stale["status"], "observedGeneration": 1}  # type: ignore[dict-item]
    assert not deployment_rolled_out(stale)
    assert not deployment_rolled_out(None)


def test_rolled_out_needs_the_image_the_rollout_and_ready() -> None:
    rolling = TenantVerdict(image=NEW, rolling_since=NOW, state="rolling")
    assert rolled_out(rolling, live_image=NEW, deployment_done=True, ready=True)
    assert not rolled_out(rolling, live_image=OLD, deployment_done=True, ready=True)
    assert not rolled_out(rolling, live_image=NEW, deployment_done=False, ready=True)
    assert not rolled_out(rolling, live_image=NEW, deployment_done=True, ready=False)
    current = TenantVerdict(image=NEW, rolling_since=None, state="current")
    assert not rolled_out(current, live_image=NEW, deployment_done=True, ready=True)


def test_the_halt_condition_is_set_then_cleared_and_absent_elsewhere() -> None:
    assert with_rollout_halt([], None, observed_generation=1, now=NOW) == []
    halted = with_rollout_halt([], "halted: fix it", observed_generation=1, now=NOW)
    condition = find_condition(halted, IMAGE_ROLLOUT_HALTED)
    assert condition is not None
    assert condition["status"] == "True"
    assert condition["reason"] == "NotReadyInTime"
    assert condition["message"] == "halted: fix it"
    resumed = with_rollout_halt(halted, None, observed_generation=1, now=NOW)
    condition = find_condition(resumed, IMAGE_ROLLOUT_HALTED)
    assert condition is not None
    assert condition["status"] == "False"
    assert condition["reason"] == "Resumed"
