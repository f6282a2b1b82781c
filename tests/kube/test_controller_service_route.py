"""The service-route holder does not flap (issue 12 item 4), with the real apiserver: the
election's time survives in the Tunnel's status, a disconnect within the grace keeps the
holder, and a holder still down when the grace ends is replaced by a pass the controller
schedules itself (no observation changes to bring one)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from tests.support.capi import create_tenant
from tests.support.polling import aeventually
from vpnctl.controller.interfaces import TenantRef
from vpnctl.kube import TUNNEL, Kube
from vpnctl.reconcile.settings import Settings

from .controllerfix import (
    FakeObservations,
    FakeTenantSide,
    all_connected,
    controller_settings,
    events_for,
    running_controller,
    wait_ready,
)
from .kubefix import kube  # noqa: F401

pytestmark = pytest.mark.kube


def _settings(namespace: str, grace: timedelta) -> Any:
    return controller_settings(
        namespace, build=Settings(agent_image="vpnctl:test", service_route_grace=grace)
    )


async def _status(kube: Kube, namespace: str, name: str) -> dict[str, Any]:  # noqa: F811
    tunnel = await kube.get(TUNNEL, name, namespace)
    return dict((tunnel or {}).get("status") or {})


async def test_a_holder_is_kept_while_it_reconnects_within_its_grace(
    kube: Kube,  # noqa: F811
    namespace: str,
) -> None:
    ref = TenantRef(namespace, "keep")
    nodes = [f"keep-node-{i}" for i in (1, 2, 3)]
    observations = FakeObservations(default=all_connected(nodes))
    async with running_controller(
        kube,
        _settings(namespace, timedelta(hours=1)),
        side=FakeTenantSide(),
        observations=observations,
    ):
        await create_tenant(kube, namespace, "keep")
        await wait_ready(kube, namespace, "keep", nodes=3, connected=3)
        status = await _status(kube, namespace, "keep")
        assert status["serviceRouteNode"] == "keep-node-1"
        elected_at = status["serviceRouteElectedAt"]

        async def elected_event() -> bool:
            events = await events_for(kube, namespace, name="keep")
            return any(e.get("reason") == "ServiceRouteElected" for e in events)

        await aeventually(elected_event, timeout=10, what="ServiceRouteElected Event")

        # The kick that follows its election: the holder drops, the others stay.
        observations.set(ref, {nodes[0]: False, nodes[1]: True, nodes[2]: True})

        async def seen_down() -> dict[str, Any] | None:
            s = await _status(kube, namespace, "keep")
            rows = {r["name"]: r for r in s.get("nodes", [])}
            return s if rows.get(nodes[0], {}).get("connected") is False else None

        status = await aeventually(seen_down, timeout=10, what="node-1 seen disconnected")
        assert status["serviceRouteNode"] == "keep-node-1"
        assert status["serviceRouteElectedAt"] == elected_at


async def test_a_holder_still_down_when_its_grace_ends_is_replaced(
    kube: Kube,  # noqa: F811
    namespace: str,
) -> None:
    ref = TenantRef(namespace, "move")
    nodes = [f"move-node-{i}" for i in (1, 2, 3)]
    observations = FakeObservations(default=all_connected(nodes))
    async with running_controller(
        kube,
        _settings(namespace, timedelta(seconds=3)),
        side=FakeTenantSide(),
        observations=observations,
    ):
        await create_tenant(kube, namespace, "move")
        await wait_ready(kube, namespace, "move", nodes=3, connected=3)
        assert (await _status(kube, namespace, "move"))["serviceRouteNode"] == "move-node-1"
        observations.set(ref, {nodes[0]: False, nodes[1]: True, nodes[2]: True})

        async def moved() -> str | None:
            holder = (await _status(kube, namespace, "move")).get("serviceRouteNode")
            return holder if holder != "move-node-1" else None

        assert await aeventually(moved, timeout=15, what="holder moved") == "move-node-2"
