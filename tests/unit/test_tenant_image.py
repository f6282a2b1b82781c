"""ImageRollouts: one plan across the per-tenant passes (vpnctl/controller/tenant_image.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry

from vpnctl.controller.interfaces import TenantRef
from vpnctl.controller.metrics import ControllerMetrics
from vpnctl.controller.tenant_image import ImageRollouts
from vpnctl.kube import KubeObject
from vpnctl.reconcile.image_rollout import RolloutPolicy, TenantImage

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
OLD, NEW = "reg.example/vpnctl:1", "reg.example/vpnctl:2"


def tunnel(name: str, **status: Any) -> KubeObject:
    return {"metadata": {"namespace": "ns", "name": name}, "spec": {}, "status": status}


class Fleet:
    """The Tunnel cache, which lags behind what the passes decided until a test says so."""

    def __init__(self, names: list[str]) -> None:
        self.tunnels = {n: tunnel(n, agentImage=OLD) for n in names}

    async def list(self) -> list[KubeObject]:
        await asyncio.sleep(0)  # a real cache read yields too
        return list(self.tunnels.values())


def rollouts(fleet: Fleet, queued: list[TenantRef]) -> tuple[ImageRollouts, CollectorRegistry]:
    registry = CollectorRegistry()
    images = ImageRollouts(
        target=NEW,
        policy=RolloutPolicy(max_rolling=1, deadline=timedelta(minutes=5)),
        tunnels=fleet.list,
        metrics=ControllerMetrics(registry=registry),
    )
    images.follow(queued.append)
    return images, registry


def own(name: str) -> TenantImage:
    return TenantImage(key=f"ns/{name}", pinned=None, image=OLD, rolling_since=None)


async def test_parallel_passes_never_both_take_the_one_slot() -> None:
    fleet, queued = Fleet(["a", "b", "c"]), list[TenantRef]()
    images, registry = rollouts(fleet, queued)
    verdicts = await asyncio.gather(
        *(images.verdict(TenantRef("ns", n), own(n), now=NOW) for n in ("c", "b", "a"))
    )
    assert [v.image for v, _ in verdicts] == [OLD, OLD, NEW]  # c, b wait; a (first) rolls
    # Whichever pass planned first started "a" and queued it, once.
    assert queued.count(TenantRef("ns", "a")) <= 1
    assert registry.get_sample_value("vpnctl_image_rollout_tenants", {"state": "rolling"}) == 1
    assert registry.get_sample_value("vpnctl_image_rollout_tenants", {"state": "waiting"}) == 2


async def test_a_decision_holds_before_the_cache_shows_it() -> None:
    fleet, queued = Fleet(["a", "b"]), list[TenantRef]()
    images, _ = rollouts(fleet, queued)
    verdict, _ = await images.verdict(TenantRef("ns", "b"), own("b"), now=NOW)
    assert verdict.image == OLD
    assert queued == [TenantRef("ns", "a")]  # started by b's pass, queued for its own
    # a's pass reads its Tunnel before its status is written: still the one rolling.
    verdict, _ = await images.verdict(TenantRef("ns", "a"), own("a"), now=NOW)
    assert (verdict.image, verdict.rolling_since, verdict.state) == (NEW, NOW, "rolling")
    # Later, b's pass again: the slot stays taken.
    verdict, _ = await images.verdict(
        TenantRef("ns", "b"), own("b"), now=NOW + timedelta(seconds=1)
    )
    assert verdict.image == OLD


async def test_a_roll_out_starts_and_queues_the_next_tenant() -> None:
    fleet, queued = Fleet(["a", "b", "c"]), list[TenantRef]()
    images, _ = rollouts(fleet, queued)
    await images.verdict(TenantRef("ns", "a"), own("a"), now=NOW)
    fleet.tunnels["a"] = tunnel("a", agentImage=NEW, agentImageRollingSince="2026-12-03T12:00:00Z")
    queued.clear()
    later = NOW + timedelta(seconds=30)
    await images.rolled_out(TenantRef("ns", "a"), NEW, now=later)
    assert queued == [TenantRef("ns", "b")]
    verdict, _ = await images.verdict(TenantRef("ns", "c"), own("c"), now=later)
    assert verdict.image == OLD


async def test_after_a_restart_the_status_is_the_record() -> None:
    fleet, queued = Fleet(["a", "b"]), list[TenantRef]()
    fleet.tunnels["a"] = tunnel("a", agentImage=NEW, agentImageRollingSince="2026-12-03T11:50:00Z")
    images, _ = rollouts(fleet, queued)  # a new process: nothing in memory
    verdict, halt = await images.verdict(TenantRef("ns", "b"), own("b"), now=NOW)
    assert verdict.image == OLD  # a still rolls, 10 minutes in: past the 5-minute deadline
    assert halt is not None
    assert "ns/a" in halt


async def test_a_deleted_rolling_tenant_frees_its_slot_at_once() -> None:
    fleet, queued = Fleet(["a", "b"]), list[TenantRef]()
    images, _ = rollouts(fleet, queued)
    await images.verdict(TenantRef("ns", "a"), own("a"), now=NOW)
    assert queued == []  # a rolls, b waits
    del fleet.tunnels["a"]
    await images.forget(TenantRef("ns", "a"), now=NOW + timedelta(seconds=5))
    assert queued == [TenantRef("ns", "b")]
