"""Rolling a new default agent image over the tenants at a bounded rate (issue 15, item 4).

Changing the controller's --agent-image would otherwise re-apply every tenant's server
Deployment, node DaemonSet and apiserver sidecar in one pass, restarting every hosted
kube-apiserver of the fleet at once; a broken image would break them all. Instead the
controller keeps each tenant on the image it runs and moves them to the new one one
tenant at a time, at most `max_per_minute` starts in any minute, and only once the
tenant rolled before has settled (its objects run the new image and it is Ready). A
rolled tenant that does not settle within `settle_timeout` halts the rollout: no other
tenant is touched, and the decision names the tenant, for a condition and an Event,
until it settles or the default image changes again (a fix, or the old image back).

Pure: the caller passes what it observed and the state returned by the previous call;
nothing here reads a clock or the cluster. Tenants that pin `spec.agent.image` are not
part of a rollout. State is memory only, on purpose: after a controller restart
(`state=None`) every tenant already at the new image but not settled counts as just
rolled, so a broken tenant still halts the rollout, at worst one bound later.

Not wired into the controller yet: `decide` is the design, tested on its own
(tests/unit/test_image_rollout.py). Wiring needs one coordinator across the per-tenant
reconciles and a kube-tier test that rolls real tenants; see the README.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

MINUTE = timedelta(minutes=1)


@dataclass(frozen=True, kw_only=True)
class RolloutPolicy:
    max_per_minute: int = 1  # tenants whose roll may start in any 60 s
    settle_timeout: timedelta = timedelta(minutes=10)  # from the start of a tenant's roll

    def __post_init__(self) -> None:
        if self.max_per_minute < 1:
            raise ValueError(f"max_per_minute must be at least 1, got {self.max_per_minute}")
        if self.settle_timeout <= timedelta(0):
            raise ValueError(f"settle_timeout must be positive, got {self.settle_timeout}")


@dataclass(frozen=True, kw_only=True)
class TenantImage:
    """What the controller observed of one tenant."""

    key: str  # "namespace/cluster"
    pinned: bool  # its Tunnel sets spec.agent.image: not part of any rollout
    image: str | None  # the agent image its objects are built with now; None: none built yet
    settled: bool  # its objects run `image` (rolled out) and its Tunnel is Ready


@dataclass(frozen=True, kw_only=True)
class RolloutState:
    """What `decide` remembers between calls, for one default image."""

    target: str
    started: Mapping[str, datetime] = field(default_factory=dict)  # tenant -> roll start


@dataclass(frozen=True, kw_only=True)
class Halt:
    tenant: str
    since: datetime  # when its roll started
    message: str


@dataclass(frozen=True, kw_only=True)
class RolloutStep:
    images: Mapping[str, str]  # the image each unpinned tenant is to be built with now
    started: str | None  # the tenant whose roll starts in this step
    waiting_for: str | None  # a rolled tenant not settled yet (within its bound)
    halt: Halt | None
    remaining: int  # unpinned tenants still on another image
    wake_at: datetime | None  # when to decide again without any new observation
    state: RolloutState


def decide(
    tenants: Iterable[TenantImage],
    *,
    target: str,
    state: RolloutState | None,
    policy: RolloutPolicy,
    now: datetime,
) -> RolloutStep:
    """One step of the rollout of `target` over TENANTS (see the module docstring)."""
    ordered = sorted((t for t in tenants if not t.pinned), key=lambda t: t.key)
    if state is None or state.target != target:
        # A new image, or a restart: only unsettled tenants at the target are in flight.
        started = {t.key: now for t in ordered if t.image == target and not t.settled}
    else:
        started = dict(state.started)
    live = {t.key for t in ordered}
    started = {k: v for k, v in started.items() if k in live}

    images: dict[str, str] = {}
    behind: list[TenantImage] = []
    for t in ordered:
        if t.image is None or t.image == target:
            images[t.key] = target  # a new tenant has nothing to roll: it starts on target
        else:
            images[t.key] = t.image
            behind.append(t)
    # Tenants already not settled go first: they have nothing to lose, and after a halt the
    # broken tenant is the first to get the image that replaces the broken one.
    behind.sort(key=lambda t: (t.settled, t.key))
    in_flight = [t for t in ordered if t.key in started and t.image == target and not t.settled]

    def step(
        *,
        start: str | None = None,
        waiting: str | None = None,
        halt: Halt | None = None,
        wake: datetime | None = None,
    ) -> RolloutStep:
        if start is not None:
            images[start] = target
            started[start] = now
        # Forget settled rolls once they no longer count against the rate.
        kept = {
            k: v for k, v in started.items() if now - v < MINUTE or not _settled(ordered, k, target)
        }
        return RolloutStep(
            images=images,
            started=start,
            waiting_for=waiting,
            halt=halt,
            remaining=len(behind) - (start is not None),
            wake_at=wake,
            state=RolloutState(target=target, started=kept),
        )

    overdue = [t for t in in_flight if now - started[t.key] >= policy.settle_timeout]
    if overdue:
        first = min(overdue, key=lambda t: (started[t.key], t.key))
        since = started[first.key]
        return step(
            halt=Halt(
                tenant=first.key,
                since=since,
                message=(
                    f"image rollout of {target} halted: tenant {first.key} did not become "
                    f"Ready within {_seconds(policy.settle_timeout)} of being rolled; "
                    f"{len(behind)} tenant(s) stay on their image. Fix the tenant or the "
                    "image, or pin spec.agent.image"
                ),
            )
        )
    if in_flight:
        first = min(in_flight, key=lambda t: (started[t.key], t.key))
        return step(waiting=first.key, wake=started[first.key] + policy.settle_timeout)
    if not behind:
        return step()
    recent = sorted(v for v in started.values() if now - v < MINUTE)
    if len(recent) >= policy.max_per_minute:
        return step(wake=recent[len(recent) - policy.max_per_minute] + MINUTE)
    return step(start=behind[0].key, wake=now + policy.settle_timeout)


def _settled(tenants: list[TenantImage], key: str, target: str) -> bool:
    return any(t.key == key and t.image == target and t.settled for t in tenants)


def _seconds(value: timedelta) -> str:
    return f"{value.total_seconds():g}s"
