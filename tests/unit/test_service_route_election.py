"""The service-route election does not flap (vpnctl.reconcile.service_route_election;
issue 12 item 4): the rules one by one, then the whole planner against a fake server that
kicks a client whenever its CCD changes, as the server role does."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from tests.support import capi
from vpnctl.api import Tunnel, TunnelStatusBody
from vpnctl.reconcile.routes import ClientRoutes
from vpnctl.reconcile.service_route_election import (
    HOLDER_DISCONNECTED,
    HOLDER_GONE,
    HOLDER_UNHEALTHY,
    NO_HOLDER,
    elect_service_route_node,
)
from vpnctl.reconcile.settings import Settings
from vpnctl.reconcile.status import NodeObservation
from vpnctl.reconcile.tenant_plan import plan_tenant

T0 = datetime(2024, 5, 1, tzinfo=UTC)
GRACE = timedelta(seconds=20)
NODES = ("node-1", "node-2", "node-3")


def elect(
    current: str | None,
    connected: Sequence[str],
    *,
    elected_at: datetime | None = T0,
    now: datetime = T0 + timedelta(minutes=5),
    up: Sequence[str] = (),
    down: Sequence[str] = (),
    members: Sequence[str] = NODES,
) -> tuple[str | None, str | None]:
    e = elect_service_route_node(
        current=current,
        elected_at=elected_at,
        members=members,
        connected=connected,
        kubelet_up=up,
        kubelet_down=down,
        now=now,
        grace=GRACE,
    )
    return e.holder, e.reason


@pytest.mark.parametrize(
    ("current", "connected", "expected"),
    [
        (None, [], (None, None)),
        (None, ["node-3", "node-2"], ("node-2", NO_HOLDER)),
        ("node-3", ["node-1", "node-3"], ("node-3", None)),  # stays while connected
        ("node-3", ["node-2", "node-1"], ("node-1", HOLDER_DISCONNECTED)),
        ("node-3", [], ("node-3", None)),  # nowhere to go: kept
        ("gone", ["node-2"], ("node-2", HOLDER_GONE)),
        ("gone", [], (None, HOLDER_GONE)),
    ],
)
def test_the_rules_after_the_grace(
    current: str | None, connected: Sequence[str], expected: tuple[str | None, str | None]
) -> None:
    assert elect(current, connected) == expected


def test_a_new_holder_is_kept_through_the_kick_its_election_caused() -> None:
    first = elect_service_route_node(
        current=None,
        elected_at=None,
        members=NODES,
        connected=NODES,
        now=T0,
        grace=GRACE,
    )
    assert (first.holder, first.elected_at, first.reason) == ("node-1", T0, NO_HOLDER)
    # Kicked for its new CCD: disconnected on the next observation, within the grace.
    during = elect_service_route_node(
        current="node-1",
        elected_at=T0,
        members=NODES,
        connected=["node-2", "node-3"],
        now=T0 + timedelta(seconds=1),
        grace=GRACE,
    )
    assert (during.holder, during.reason, during.elected_at) == ("node-1", None, T0)
    assert during.recheck_at == T0 + GRACE  # a pass is scheduled for the end of it
    # Still down once the grace is over: this disconnect was not ours, fail over.
    assert elect("node-1", ["node-2", "node-3"], now=T0 + GRACE) == (
        "node-2",
        HOLDER_DISCONNECTED,
    )


def test_the_grace_also_covers_a_stale_kubelet_probe() -> None:
    assert elect(
        "node-1", NODES, down=["node-1"], up=["node-2"], now=T0 + timedelta(seconds=2)
    ) == (
        "node-1",
        None,
    )


def test_an_unhealthy_holder_moves_only_to_a_node_whose_kubelet_answers() -> None:
    assert elect("node-1", NODES, down=["node-1"]) == ("node-1", None)  # nobody better known
    assert elect("node-1", NODES, down=["node-1"], up=["node-3"]) == ("node-3", HOLDER_UNHEALTHY)


def test_a_new_election_prefers_answering_kubelets_then_the_first_name() -> None:
    assert elect("gone", NODES, up=["node-3"], down=["node-1"]) == ("node-3", HOLDER_GONE)
    assert elect("gone", NODES, down=["node-1"]) == ("node-2", HOLDER_GONE)
    assert elect("gone", ["node-1"], down=["node-1"]) == ("node-1", HOLDER_GONE)


def test_a_holder_elected_in_the_future_gets_no_grace() -> None:
    """A clock stepped back (or a hand-written status) must not pin a dead holder."""
    assert elect("node-1", ["node-2"], elected_at=T0 + timedelta(hours=1), now=T0) == (
        "node-2",
        HOLDER_DISCONNECTED,
    )


# --- the planner against a server that kicks on CCD changes ---------------------------------


@dataclass
class KickingServer:
    """A fake of the server role as the planner sees it: a node whose CCD changed is
    kicked and stays disconnected for ``reconnect`` (openvpn's reconnect), then is back."""

    reconnect: timedelta
    ccds: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    down_until: dict[str, datetime] = field(default_factory=dict)
    kicks: int = 0

    def apply(self, clients: Sequence[ClientRoutes], now: datetime) -> None:
        for client in clients:
            ccd = (client.iroutes, client.push_routes)
            old = self.ccds.get(client.common_name)
            self.ccds[client.common_name] = ccd
            if old is not None and old != ccd:
                self.kicks += 1
                self.down_until[client.common_name] = now + self.reconnect

    def observe(self, now: datetime) -> dict[str, NodeObservation]:
        return {
            n: NodeObservation(node=n, connected=now >= self.down_until.get(n, now)) for n in NODES
        }


def run_planner(
    *, grace: timedelta, seconds: int, kill: tuple[str, int] | None = None
) -> tuple[KickingServer, list[str | None]]:
    """Observe every second for SECONDS, as the controller does at --observe-interval 1,
    each pass starting from the status the last one wrote."""
    t = capi.lab_tenant(nodes=3)
    settings = Settings(agent_image="img", service_route_grace=grace)
    server = KickingServer(reconnect=timedelta(seconds=3))
    # The nodes connect after the first pass (which writes their CCDs with no holder).
    server.down_until = {n: T0 + timedelta(seconds=1) for n in NODES}
    status: TunnelStatusBody = {}
    holders: list[str | None] = []
    for second in range(seconds):
        now = T0 + timedelta(seconds=second)
        if kill is not None and second == kill[1]:  # that node's agent dies for good
            server.down_until[kill[0]] = now + timedelta(days=1)
        tunnel = cast(Tunnel, {**t.tunnel, "status": status})
        plan = plan_tenant(
            tunnel=tunnel,
            cluster=t.cluster,
            machines=t.machines,
            nodes=t.nodes,
            observations=server.observe(now),
            settings=settings,
            now=now,
        )
        server.apply(plan.clients, now)
        holders.append(plan.service_route_node)
        status = plan.status(conditions=[], previous=status, now=now)
    return server, holders


def test_the_planner_without_grace_flaps_as_issue_12_measured() -> None:
    """The fake is faithful enough to show the old behaviour: no grace, many kicks."""
    server, holders = run_planner(grace=timedelta(0), seconds=22)
    assert server.kicks > 10
    assert set(NODES) <= set(holders)


def test_the_planner_with_grace_elects_once_and_keeps_the_holder() -> None:
    server, holders = run_planner(grace=GRACE, seconds=60)
    assert holders[0] is None
    assert set(holders[1:]) == {"node-1"}
    # Its election kicked it once; its reconnect did not make another.
    assert server.kicks == 1


def test_a_holder_that_dies_after_its_grace_is_replaced_at_the_next_observation() -> None:
    server, holders = run_planner(grace=GRACE, seconds=40, kill=("node-1", 30))
    assert holders[29] == "node-1"
    assert holders[30] == "node-2"  # the pass that first sees it down
    assert set(holders[30:]) == {"node-2"}
    # node-1's election, node-2's, and node-1's CCD losing the routes (it is down anyway).
    assert server.kicks == 3
