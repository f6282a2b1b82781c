"""A new --agent-image rolls over the tenants one at a time and halts on a broken image.

Real apiserver and kube-controller-manager: the server Deployments roll for real
(ReplicaSets, pods). Nothing runs the pods here, so a small fake kubelet of this test
marks a server pod Ready once it has existed for a moment, unless its image is the
broken one: that is how the Deployment's rollout, which the controller watches, finishes
or never does. The controller is restarted with each new image, as `helm upgrade` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest

from telemetry.tasks import cancel_and_wait
from tests.support.capi import create_tenant
from tests.support.polling import aeventually
from vpnctl.kube import DEPLOYMENT, POD, TUNNEL, Kube
from vpnctl.reconcile.image_rollout import RolloutPolicy
from vpnctl.reconcile.settings import Settings

from .controllerfix import (
    FakeObservations,
    FakeTenantSide,
    condition,
    controller_settings,
    events_for,
    running_controller,
    wait_condition,
    wait_ready,
)
from .kubefix import kube  # noqa: F401

pytestmark = pytest.mark.kube

A, B, BROKEN, FIXED = "vpnctl:a", "vpnctl:b", "vpnctl:broken", "vpnctl:fixed"
TENANTS = ("ra", "rb", "rc")
SERVER = "openvpn-server"
POD_START = 1.0  # seconds a pod takes to become Ready in the fake kubelet


def _image(deployment: Mapping[str, Any] | None) -> str | None:
    for c in ((deployment or {}).get("spec") or {}).get("template", {}).get("spec", {}).get(
        "containers"
    ) or []:
        if c.get("name") == SERVER:
            return str(c.get("image"))
    return None


def _finished(deployment: Mapping[str, Any]) -> bool:
    """Rolled out, checked here independently of the product: every wanted replica is
    of the current template and available, and no other replica is left."""
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    wanted = spec.get("replicas", 1)
    return bool(
        status.get("observedGeneration") == deployment["metadata"].get("generation")
        and status.get("updatedReplicas") == wanted
        and status.get("replicas") == wanted
        and status.get("availableReplicas") == wanted
    )


def _ready(tunnel: Mapping[str, Any] | None) -> bool:
    return (condition(tunnel, "Ready") or {}).get("status") == "True"


async def _fake_kubelet(api: Kube, namespace: str, *, broken: str) -> None:
    """Marks each pod Ready POD_START seconds after first seeing it, unless it runs BROKEN."""
    first_seen: dict[str, float] = {}
    while True:
        pods, _ = await api.list(POD, namespace)
        now = time.monotonic()
        for pod in pods:
            uid = pod["metadata"]["uid"]
            first_seen.setdefault(uid, now)
            images = {c.get("image") for c in pod["spec"].get("containers") or []}
            ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in (pod.get("status") or {}).get("conditions") or [])  # fmt: skip
            if ready or broken in images or now - first_seen[uid] < POD_START:
                continue
            await api.apply_status(
                POD,
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": pod["metadata"]["name"], "namespace": namespace},
                    "status": {
                        "phase": "Running",
                        "conditions": [
                            {"type": "Ready", "status": "True"},
                            {"type": "ContainersReady", "status": "True"},
                        ],
                    },
                },
                field_manager="fake-kubelet",
            )
        await asyncio.sleep(0.1)


@dataclass
class Watch:
    """What the test saw of the rollout of ``target``, sampled every 50 ms."""

    target: str
    moved: list[str] = field(default_factory=list)  # tenants, in the order they got target
    most_unsettled: int = 0  # tenants on target whose Deployment or Tunnel was not Ready
    overlaps: list[str] = field(default_factory=list)


async def _sample(api: Kube, namespace: str, watch: Watch) -> None:
    while True:
        unsettled = []
        for name in TENANTS:
            deployment = await api.get(DEPLOYMENT, f"{name}-vpn-server", namespace)
            if _image(deployment) != watch.target:
                continue
            if name not in watch.moved:
                watch.moved.append(name)
            assert deployment is not None
            if not (_finished(deployment) and _ready(await api.get(TUNNEL, name, namespace))):
                unsettled.append(name)
        watch.most_unsettled = max(watch.most_unsettled, len(unsettled))
        if len(unsettled) > 1:
            watch.overlaps.append(",".join(unsettled))
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def _background(*coros: Any) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(c) for c in coros]
    try:
        yield
    finally:
        # A sampler or kubelet that died on its own re-raises here: a test failure.
        await cancel_and_wait(*tasks)


async def _images(api: Kube, namespace: str) -> dict[str, str | None]:
    return {n: _image(await api.get(DEPLOYMENT, f"{n}-vpn-server", namespace)) for n in TENANTS}


def _settings(namespace: str, image: str, deadline: timedelta) -> Any:
    return controller_settings(
        namespace,
        build=Settings(agent_image=image),
        image_rollout=RolloutPolicy(max_rolling=1, deadline=deadline),
    )


async def _roll(api: Kube, namespace: str, image: str, *, deadline: timedelta) -> Watch:
    """Run the controller with IMAGE until every tenant's server is rolled out with it."""
    watch = Watch(target=image)
    sampler = _sample(api, namespace, watch)
    side, observations = FakeTenantSide(), FakeObservations()
    async with (
        running_controller(
            api, _settings(namespace, image, deadline), side=side, observations=observations
        ) as run,
        _background(sampler),
    ):

        async def all_rolled() -> bool:
            for name in TENANTS:
                tunnel = await api.get(TUNNEL, name, namespace)
                status = (tunnel or {}).get("status") or {}
                if status.get("agentImage") != image or "agentImageRollingSince" in status:
                    return False
            return True

        await aeventually(all_rolled, timeout=90, what=f"every tenant rolled out with {image}")
        assert run.metric("vpnctl_image_rollout_tenants", {"state": "current"}) == 3
    return watch


async def test_a_new_agent_image_rolls_one_tenant_at_a_time_and_halts_when_broken(
    kube: Kube,  # noqa: F811
    namespace: str,
) -> None:
    async with _background(_fake_kubelet(kube, namespace, broken=BROKEN)):
        # Image A: three new tenants start on it directly.
        side, observations = FakeTenantSide(), FakeObservations()
        settings = _settings(namespace, A, timedelta(minutes=5))
        async with running_controller(kube, settings, side=side, observations=observations):
            for name in TENANTS:
                await create_tenant(kube, namespace, name, nodes=1)
            for name in TENANTS:
                tunnel = await wait_ready(kube, namespace, name, timeout=60)
                assert tunnel["status"]["agentImage"] == A
        assert await _images(kube, namespace) == dict.fromkeys(TENANTS, A)

        # helm upgrade to B: a restarted controller moves one tenant at a time.
        started = time.monotonic()
        watch = await _roll(kube, namespace, B, deadline=timedelta(minutes=5))
        took = time.monotonic() - started
        assert watch.moved == list(TENANTS)  # in key order, each once
        assert watch.overlaps == []  # never two on B while one was not Ready
        assert watch.most_unsettled == 1  # and each one was seen rolling
        print(f"\nrolled 3 tenants from {A} to {B} one at a time in {took:.1f}s "
              f"(fake pod start {POD_START}s)")  # fmt: skip
        for name in TENANTS:
            rolled = [e for e in await events_for(kube, namespace, name=name)
                      if e.get("reason") == "AgentImageRolledOut"]  # fmt: skip
            assert rolled, f"no AgentImageRolledOut Event on Tunnel {name}"

        # helm upgrade to a broken image: the first tenant never becomes Ready with it,
        # and nobody else gets it.
        deadline = timedelta(seconds=4)
        side, observations = FakeTenantSide(), FakeObservations()
        async with running_controller(
            kube, _settings(namespace, BROKEN, deadline), side=side, observations=observations
        ) as run:
            halted = await wait_condition(
                kube, namespace, "ra", "ImageRolloutHalted", status="True",
                reason="NotReadyInTime", timeout=60,
            )  # fmt: skip
            message = condition(halted, "ImageRolloutHalted")["message"]  # type: ignore[index]
            assert BROKEN in message
            assert "ra" in message
            # The halted tenant's old server pod still serves: it is Ready, not rolled out.
            assert halted["status"]["agentImage"] == BROKEN
            assert "agentImageRollingSince" in halted["status"]
            # More passes over every tenant change nothing.
            for name in TENANTS:
                await kube.patch_merge(
                    TUNNEL,
                    name,
                    {"metadata": {"annotations": {"test/poke": "1"}}},
                    namespace=namespace,
                )
            await run.wait_reconciles(len(TENANTS), timeout=30)
            assert await _images(kube, namespace) == {"ra": BROKEN, "rb": B, "rc": B}
            assert run.metric("vpnctl_image_rollout_tenants", {"state": "halted"}) == 1
            assert run.metric("vpnctl_image_rollout_tenants", {"state": "waiting"}) == 2
            reasons = {e.get("reason") for e in await events_for(kube, namespace, name="ra")}
            assert "NotReadyInTime" in reasons

        # The fix: a new image resumes the rollout, the halted tenant first.
        watch = await _roll(kube, namespace, FIXED, deadline=timedelta(minutes=5))
        assert watch.moved == list(TENANTS)
        assert watch.overlaps == []
        resumed = await kube.get(TUNNEL, "ra", namespace)
        assert (condition(resumed, "ImageRolloutHalted") or {}).get("status") == "False"
