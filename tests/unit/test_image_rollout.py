"""The image rollout's decision (vpnctl/reconcile/image_rollout.py): a new default agent
image reaches tenants one at a time, at a bounded rate, and stops at a tenant that does
not become Ready. Driven step by step over a simulated fleet; time is passed in."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from vpnctl.reconcile.image_rollout import (
    RolloutPolicy,
    RolloutState,
    RolloutStep,
    TenantImage,
    decide,
)

OLD = "registry.example/vpnctl:1.0.0"
NEW = "registry.example/vpnctl:1.1.0"
FIX = "registry.example/vpnctl:1.1.1"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Fleet:
    """Tenants that take the image a step gives them (not settled until told)."""

    def __init__(self, *keys: str, image: str | None = OLD) -> None:
        self.tenants = {
            k: TenantImage(key=k, pinned=False, image=image, settled=True) for k in keys
        }
        self.state: RolloutState | None = None
        self.now = T0

    def step(self, target: str, policy: RolloutPolicy) -> RolloutStep:
        got = decide(
            self.tenants.values(), target=target, state=self.state, policy=policy, now=self.now
        )
        self.state = got.state
        for key, image in got.images.items():
            t = self.tenants[key]
            if image != t.image:
                self.tenants[key] = replace(t, image=image, settled=False)
        return got

    def settle(self, key: str) -> None:
        self.tenants[key] = replace(self.tenants[key], settled=True)

    def images(self) -> dict[str, str | None]:
        return {k: t.image for k, t in self.tenants.items()}

    def later(self, **delta: float) -> None:
        self.now += timedelta(**delta)


POLICY = RolloutPolicy(max_per_minute=1, settle_timeout=timedelta(minutes=5))


def test_a_new_image_rolls_one_tenant_at_a_time_and_waits_for_it() -> None:
    fleet = Fleet("ns/a", "ns/b", "ns/c")
    first = fleet.step(NEW, POLICY)
    assert first.started == "ns/a"
    assert fleet.images() == {"ns/a": NEW, "ns/b": OLD, "ns/c": OLD}
    assert first.remaining == 2

    # Not settled yet: nobody else moves, however often we ask (within the bound).
    fleet.later(minutes=2)
    waiting = fleet.step(NEW, POLICY)
    assert (waiting.started, waiting.waiting_for, waiting.halt) == (None, "ns/a", None)
    assert waiting.wake_at == T0 + POLICY.settle_timeout
    assert fleet.images() == {"ns/a": NEW, "ns/b": OLD, "ns/c": OLD}

    fleet.settle("ns/a")
    assert fleet.step(NEW, POLICY).started == "ns/b"
    fleet.settle("ns/b")
    fleet.later(minutes=1)
    assert fleet.step(NEW, POLICY).started == "ns/c"
    fleet.settle("ns/c")
    done = fleet.step(NEW, POLICY)
    assert (done.started, done.remaining, done.wake_at) == (None, 0, None)
    assert set(fleet.images().values()) == {NEW}


def test_the_rate_bounds_starts_even_when_tenants_settle_at_once() -> None:
    fleet = Fleet(*(f"ns/t{i}" for i in range(5)))
    policy = RolloutPolicy(max_per_minute=2, settle_timeout=timedelta(minutes=5))
    starts: list[tuple[str, datetime]] = []
    for _ in range(40):  # 40 steps of 10 s, every rolled tenant settled before the next
        got = fleet.step(NEW, policy)
        if got.started is not None:
            starts.append((got.started, fleet.now))
            fleet.settle(got.started)
        else:
            assert got.remaining == 0 or got.wake_at is not None
        fleet.later(seconds=10)
    assert [k for k, _ in starts] == [f"ns/t{i}" for i in range(5)]
    times = [t for _, t in starts]
    # Never more than 2 starts within any 60 s.
    assert all(times[i + 2] - times[i] >= timedelta(minutes=1) for i in range(len(times) - 2))
    assert times[1] - times[0] == timedelta(seconds=10)  # the 2nd may follow at once


def test_a_tenant_that_does_not_become_ready_halts_the_rollout() -> None:
    fleet = Fleet("ns/a", "ns/b", "ns/c")
    assert fleet.step(NEW, POLICY).started == "ns/a"  # and ns/a never settles: a bad image
    fleet.later(minutes=4, seconds=59)
    assert fleet.step(NEW, POLICY).halt is None
    fleet.later(seconds=1)
    halted = fleet.step(NEW, POLICY)
    assert halted.halt is not None
    assert (halted.halt.tenant, halted.halt.since) == ("ns/a", T0)
    assert "ns/a did not become Ready within 300s" in halted.halt.message
    assert "2 tenant(s) stay on their image" in halted.halt.message
    assert (halted.started, halted.wake_at) == (None, None)
    # It stays halted, however long: the others keep the old image.
    fleet.later(hours=3)
    still = fleet.step(NEW, POLICY)
    assert still.halt is not None
    assert still.halt.tenant == "ns/a"
    assert fleet.images() == {"ns/a": NEW, "ns/b": OLD, "ns/c": OLD}

    # The tenant recovers (someone fixed its nodes): the rollout goes on.
    fleet.settle("ns/a")
    assert fleet.step(NEW, POLICY).started == "ns/b"


def test_a_new_image_after_a_halt_goes_to_the_broken_tenant_first() -> None:
    fleet = Fleet("ns/a", "ns/b", "ns/c")
    fleet.step(NEW, POLICY)
    fleet.later(minutes=6)
    assert fleet.step(NEW, POLICY).halt is not None

    fixed = fleet.step(FIX, POLICY)
    assert fixed.halt is None
    assert fixed.started == "ns/a"  # not settled, so first, though all are behind
    assert fleet.images() == {"ns/a": FIX, "ns/b": OLD, "ns/c": OLD}
    fleet.settle("ns/a")
    fleet.later(minutes=1)
    assert fleet.step(FIX, POLICY).started == "ns/b"


def test_pinned_and_new_tenants_are_not_rolled() -> None:
    tenants = [
        TenantImage(key="ns/pinned", pinned=True, image=OLD, settled=True),
        TenantImage(key="ns/new", pinned=False, image=None, settled=False),
        TenantImage(key="ns/old", pinned=False, image=OLD, settled=True),
    ]
    got = decide(tenants, target=NEW, state=None, policy=POLICY, now=T0)
    assert "ns/pinned" not in got.images  # its spec.agent.image decides
    assert got.images["ns/new"] == NEW  # nothing to roll: built on the default at once
    assert got.started == "ns/old"
    assert got.images["ns/old"] == NEW
    # The new tenant, not Ready yet while it is built, never holds the rollout up.
    assert got.waiting_for is None


def test_after_a_restart_an_unsettled_tenant_at_the_new_image_counts_as_rolled() -> None:
    tenants = [
        TenantImage(key="ns/a", pinned=False, image=NEW, settled=False),
        TenantImage(key="ns/b", pinned=False, image=OLD, settled=True),
    ]
    restarted = decide(tenants, target=NEW, state=None, policy=POLICY, now=T0)
    assert (restarted.started, restarted.waiting_for) == (None, "ns/a")
    later = decide(
        tenants,
        target=NEW,
        state=restarted.state,
        policy=POLICY,
        now=T0 + POLICY.settle_timeout,
    )
    assert later.halt is not None
    assert later.halt.tenant == "ns/a"
    assert later.images["ns/b"] == OLD


def test_a_deleted_tenant_is_forgotten() -> None:
    fleet = Fleet("ns/a", "ns/b")
    fleet.step(NEW, POLICY)  # ns/a rolling, never settles
    del fleet.tenants["ns/a"]
    fleet.later(minutes=1)
    got = fleet.step(NEW, POLICY)
    assert got.started == "ns/b"
    assert got.state.started.keys() == {"ns/b"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_per_minute": 0}, "max_per_minute must be at least 1"),
        ({"settle_timeout": timedelta(0)}, "settle_timeout must be positive"),
    ],
)
def test_the_policy_refuses_bounds_that_mean_nothing(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        RolloutPolicy(**kwargs)  # type: ignore[arg-type]
