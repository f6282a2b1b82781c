"""Rolling a new default agent image over the tenants a few at a time (issue 15, item 4).

Changing the controller's ``--agent-image`` (a ``helm upgrade`` with a new image) would
otherwise re-apply every tenant's server Deployment, node DaemonSet and apiserver sidecar
in one pass: every hosted kube-apiserver of the fleet restarts at once, and a broken
image breaks them all. Instead each tenant keeps the image it runs, and at most
``max_rolling`` tenants at a time are moved to the new one ("rolling"). A rolling tenant
is rolled out once its server Deployment has finished rolling out with the new image and
its Tunnel is Ready; the caller observes that and clears ``rolling_since``. A rolling
tenant that is not rolled out ``deadline`` after it was moved halts the rollout: no
other tenant gets the new image until it is rolled out after all, is pinned
(``spec.agent.image``), or the default image changes again (the fix, or the old image
back); the halted tenant is then the first to get that image.

Pure: what each tenant runs and since when it rolls comes in from the Tunnels' status
(``status.agentImage``, ``status.agentImageRollingSince``), so a restarted controller
carries on where the last one stopped; nothing here reads a clock or the cluster.
Tenants that pin ``spec.agent.image`` run their pin and take no part. A new tenant (no
image yet) starts on the new image and is not a roll.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from vpnctl.api import Condition
from vpnctl.reconcile.conditions import find_condition, parse_rfc3339, set_condition

# On the tenant that halts a rollout (negative polarity, like Degraded).
IMAGE_ROLLOUT_HALTED = "ImageRolloutHalted"

State = Literal["pinned", "current", "rolling", "halted", "waiting"]
STATES: tuple[State, ...] = ("pinned", "current", "rolling", "halted", "waiting")


@dataclass(frozen=True, kw_only=True)
class RolloutPolicy:
    max_rolling: int = 1  # tenants moved to a new image and not rolled out yet, at most
    deadline: timedelta = timedelta(minutes=10)  # from a tenant's move to its roll-out

    def __post_init__(self) -> None:
        if self.max_rolling < 1:
            raise ValueError(f"max_rolling must be at least 1, got {self.max_rolling}")
        if self.deadline <= timedelta(0):
            raise ValueError(f"deadline must be positive, got {self.deadline}")


@dataclass(frozen=True, kw_only=True)
class TenantImage:
    """What is known of one tenant."""

    key: str  # "namespace/cluster"
    pinned: str | None  # its spec.agent.image
    image: str | None  # the agent image its objects are built with now; None: none yet
    # When a rollout moved it to `image`, while that is not rolled out; None: not rolling.
    rolling_since: datetime | None


@dataclass(frozen=True, kw_only=True)
class TenantVerdict:
    image: str  # the image to build its objects with now
    rolling_since: datetime | None  # to record in its status
    state: State


@dataclass(frozen=True, kw_only=True)
class RolloutPlan:
    target: str
    tenants: Mapping[str, TenantVerdict]
    halted_by: tuple[str, ...]  # rolling tenants past the deadline, by key
    wake_at: datetime | None  # the earliest deadline of a rolling tenant: decide again then

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {state: 0 for state in STATES}
        for verdict in self.tenants.values():
            out[verdict.state] += 1
        return out

    def halt_message(self, *, deadline: timedelta) -> str | None:
        """Why no tenant gets the target, for a condition, an Event and a log line."""
        if not self.halted_by:
            return None
        waiting = self.counts()["waiting"]
        return (
            f"the rollout of agent image {self.target} is halted: tenant "
            f"{', '.join(self.halted_by)} did not become Ready with it within "
            f"{deadline.total_seconds():g}s; {waiting} tenant(s) keep the image they run. "
            "Fix the tenant or publish a fixed image (helm upgrade), or pin the tenant's "
            "spec.agent.image to take it out of the rollout"
        )


def plan_rollout(
    tenants: Iterable[TenantImage],
    *,
    target: str,
    policy: RolloutPolicy,
    now: datetime,
) -> RolloutPlan:
    """Which image every tenant is built with now (see the module docstring)."""
    verdicts: dict[str, TenantVerdict] = {}
    behind: list[TenantImage] = []
    rolling = 0
    halted: list[str] = []
    deadlines: list[datetime] = []
    for t in sorted(tenants, key=lambda t: t.key):
        if t.pinned is not None:
            verdicts[t.key] = TenantVerdict(image=t.pinned, rolling_since=None, state="pinned")
        elif t.image is None or (t.image == target and t.rolling_since is None):
            verdicts[t.key] = TenantVerdict(image=target, rolling_since=None, state="current")
        elif t.image == target:
            assert t.rolling_since is not None
            due = t.rolling_since + policy.deadline
            late = now >= due
            if late:
                halted.append(t.key)
            else:
                deadlines.append(due)
            rolling += 1
            verdicts[t.key] = TenantVerdict(
                image=target, rolling_since=t.rolling_since, state="halted" if late else "rolling"
            )
        else:
            behind.append(t)
    # A tenant that was still rolling to another image goes first: it has not shown that
    # image to work, and after a halt the broken tenant is the first to get the fix.
    behind.sort(key=lambda t: (t.rolling_since is None, t.key))
    free = 0 if halted else max(0, policy.max_rolling - rolling)
    for t in behind:
        assert t.image is not None
        if free > 0:
            free -= 1
            deadlines.append(now + policy.deadline)
            verdicts[t.key] = TenantVerdict(image=target, rolling_since=now, state="rolling")
        else:
            # Not rolling to `target`: whatever roll it was in is over.
            verdicts[t.key] = TenantVerdict(image=t.image, rolling_since=None, state="waiting")
    return RolloutPlan(
        target=target,
        tenants=verdicts,
        halted_by=tuple(halted),
        wake_at=min(deadlines) if deadlines else None,
    )


def container_image(deployment: Mapping[str, Any] | None, container: str) -> str | None:
    """The image CONTAINER of a live Deployment's pod template names, if any."""
    spec = ((deployment or {}).get("spec") or {}).get("template", {}).get("spec") or {}
    for c in spec.get("containers") or []:
        if isinstance(c, Mapping) and c.get("name") == container:
            image = c.get("image")
            return image if isinstance(image, str) else None
    return None


def deployment_rolled_out(deployment: Mapping[str, Any] | None) -> bool:
    """The live Deployment has finished rolling out its current template, by the rule of
    ``kubectl rollout status``: the Deployment controller has seen this generation, every
    replica runs the new template, no old replica is left, and all of them are available."""
    if deployment is None:
        return False
    meta = deployment.get("metadata") or {}
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    wanted = spec.get("replicas", 1)
    return bool(
        int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
        and int(status.get("updatedReplicas") or 0) >= wanted
        and int(status.get("replicas") or 0) <= int(status.get("updatedReplicas") or 0)
        and int(status.get("availableReplicas") or 0) >= int(status.get("updatedReplicas") or 0)
    )


def tenant_image_of(key: str, tunnel: Mapping[str, Any]) -> TenantImage:
    """What a Tunnel says of its tenant's image: its pin, and its status's record."""
    agent = (tunnel.get("spec") or {}).get("agent") or {}
    status = tunnel.get("status") or {}
    pinned = agent.get("image") if isinstance(agent, Mapping) else None
    image = status.get("agentImage")
    since: datetime | None = None
    if isinstance(status.get("agentImageRollingSince"), str):
        try:
            since = parse_rfc3339(status["agentImageRollingSince"])
        except ValueError:
            since = None
    return TenantImage(
        key=key,
        pinned=pinned if isinstance(pinned, str) and pinned else None,
        image=image if isinstance(image, str) and image else None,
        rolling_since=since,
    )


def observed_tenant(
    key: str,
    tunnel: Mapping[str, Any],
    *,
    pinned: str | None,
    live_image: str | None,
    now: datetime,
) -> TenantImage:
    """A tenant as its own pass sees it: the Tunnel's record, corrected by the image its
    live server Deployment runs. They differ after a pass that stopped between applying
    and recording (counted as moved now), and for a tenant made by a controller from
    before the record (it keeps what it runs: an upgrade of vpnctl rolls nobody at once)."""
    recorded = tenant_image_of(key, tunnel)
    image, since = recorded.image, recorded.rolling_since
    if live_image is not None and live_image != image:
        since = now if image is not None else None
        image = live_image
    return TenantImage(key=key, pinned=pinned, image=image, rolling_since=since)


def rolled_out(
    verdict: TenantVerdict, *, live_image: str | None, deployment_done: bool, ready: bool
) -> bool:
    """A rolling tenant is rolled out: its server Deployment runs the image, has finished
    rolling out, and its Tunnel is Ready."""
    return (
        verdict.rolling_since is not None
        and live_image == verdict.image
        and deployment_done
        and ready
    )


def with_rollout_halt(
    conditions: list[Condition],
    halt: str | None,
    *,
    observed_generation: int,
    now: datetime,
) -> list[Condition]:
    """``conditions`` with ImageRolloutHalted: True with HALT's message on a tenant that
    halts the rollout; False once it no longer does; absent on every other tenant."""
    if halt is None:
        present = find_condition(conditions, IMAGE_ROLLOUT_HALTED)
        if present is None or present.get("status") == "False":
            return conditions
        return set_condition(
            conditions,
            type=IMAGE_ROLLOUT_HALTED,
            status="False",
            reason="Resumed",
            message="this tenant no longer halts the rollout of the default agent image",
            observed_generation=observed_generation,
            now=now,
        )
    return set_condition(
        conditions,
        type=IMAGE_ROLLOUT_HALTED,
        status="True",
        reason="NotReadyInTime",
        message=halt,
        observed_generation=observed_generation,
        now=now,
    )
