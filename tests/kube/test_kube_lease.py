"""Leader election on a real Lease: one leader of two, failover after a crash, fast
handover on graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from vpnctl.kube import LEASE, Kube, KubeObject, LeaderElector, SystemClock

from .kubefix import kube  # noqa: F401

pytestmark = pytest.mark.kube

# Short timings keep the test quick; the ratios are the defaults' (15/10/2).
LEASE_DURATION = 3.0
RENEW_DEADLINE = 2.0
RETRY_PERIOD = 0.4


class Replica:
    def __init__(self, client: Kube, namespace: str, identity: str, *, release: bool) -> None:
        self.identity = identity
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()
        self.started_at = 0.0
        self.elector = LeaderElector(
            client,
            namespace=namespace,
            name="vpnctl-controller",
            identity=identity,
            clock=SystemClock(),
            on_started_leading=self._on_started,
            on_stopped_leading=self.stopped.set,
            lease_duration=LEASE_DURATION,
            renew_deadline=RENEW_DEADLINE,
            retry_period=RETRY_PERIOD,
            release_on_cancel=release,
        )
        self.task: asyncio.Task[None] | None = None

    def _on_started(self) -> None:
        self.started_at = time.monotonic()
        self.started.set()

    def start(self) -> None:
        self.task = asyncio.create_task(self.elector.run(), name=self.identity)

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


@contextlib.asynccontextmanager
async def two_replicas(
    client: Kube, namespace: str, *, release: bool
) -> AsyncIterator[tuple[Replica, Replica]]:
    a = Replica(client, namespace, "replica-a", release=release)
    b = Replica(client, namespace, "replica-b", release=release)
    a.start()
    b.start()
    try:
        yield a, b
    finally:
        await a.stop()
        await b.stop()


async def _lease_spec(kube: Kube, namespace: str) -> KubeObject:  # noqa: F811
    """The spec of the controller's Lease, which must exist."""
    lease = await kube.get(LEASE, "vpnctl-controller", namespace)
    assert lease is not None
    spec: KubeObject = lease["spec"]
    return spec


async def _first_leader(a: Replica, b: Replica) -> tuple[Replica, Replica]:
    done, _ = await asyncio.wait(
        [asyncio.create_task(a.started.wait()), asyncio.create_task(b.started.wait())],
        timeout=10,
        return_when=asyncio.FIRST_COMPLETED,
    )
    assert done, "nobody became leader"
    # Give the other a few periods to (wrongly) claim it too.
    await asyncio.sleep(3 * RETRY_PERIOD)
    assert a.elector.is_leader != b.elector.is_leader
    return (a, b) if a.elector.is_leader else (b, a)


async def test_one_leader_and_failover_when_it_dies_without_releasing(
    kube: Kube,  # noqa: F811
    namespace: str,
) -> None:
    async with two_replicas(kube, namespace, release=False) as (a, b):
        leader, follower = await _first_leader(a, b)
        lease = await _lease_spec(kube, namespace)
        assert lease["holderIdentity"] == leader.identity
        assert lease["leaseDurationSeconds"] == 3
        assert not follower.started.is_set()

        died_at = time.monotonic()
        await leader.stop()  # a crash: no release
        await asyncio.wait_for(follower.started.wait(), LEASE_DURATION + 3 * RETRY_PERIOD + 2)
        took = follower.started_at - died_at
        # It had to wait for the lease to run out, but not much longer.
        assert LEASE_DURATION - RETRY_PERIOD - 0.5 <= took <= LEASE_DURATION + 2 * RETRY_PERIOD + 1
        lease = await _lease_spec(kube, namespace)
        assert lease["holderIdentity"] == follower.identity
        assert lease["leaseTransitions"] == 1


async def test_graceful_release_hands_over_within_a_retry_period(
    kube: Kube,  # noqa: F811
    namespace: str,
) -> None:
    async with two_replicas(kube, namespace, release=True) as (a, b):
        leader, follower = await _first_leader(a, b)
        released_at = time.monotonic()
        await leader.stop()
        assert leader.stopped.is_set()  # work stopped before the lease was handed back
        await asyncio.wait_for(follower.started.wait(), LEASE_DURATION)
        # Far sooner than the lease would have run out (3 s); slack for a loaded machine.
        assert follower.started_at - released_at <= RETRY_PERIOD + 1.0
        lease = await _lease_spec(kube, namespace)
        assert lease["holderIdentity"] == follower.identity


async def test_a_leader_keeps_renewing(kube: Kube, namespace: str) -> None:  # noqa: F811
    async with two_replicas(kube, namespace, release=True) as (a, b):
        leader, follower = await _first_leader(a, b)
        first = await _lease_spec(kube, namespace)
        # Well past the lease duration: still the leader, renewTime moved, no transition.
        await asyncio.sleep(LEASE_DURATION + 1)
        lease = await _lease_spec(kube, namespace)
        assert lease["holderIdentity"] == leader.identity
        assert lease["renewTime"] > first["renewTime"]
        assert leader.elector.is_leader
        assert not follower.started.is_set()
        assert not leader.stopped.is_set()
