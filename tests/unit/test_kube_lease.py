"""LeaderElector paths that a real apiserver won't produce on demand: an apiserver that
stops answering (renew deadline), a lease stolen while we lead, a write race (409).
A fake of our own ``ObjectApi`` with resourceVersion semantics, and a manual clock."""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable
from typing import Any

import pytest

from vpnctl.kube import (
    LEASE,
    AlreadyExists,
    Conflict,
    KubeObject,
    LeaderElector,
    ManualClock,
    NotFound,
    Resource,
    TransportError,
)


class FakeApi:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], KubeObject] = {}
        self.version = 0
        self.down = False
        self.before_replace: Callable[[], None] | None = None

    def _check(self) -> None:
        if self.down:
            raise TransportError("ConnectionRefusedError: refused", method="GET", path="/")

    async def get(
        self, res: Resource, name: str, namespace: str | None = None
    ) -> KubeObject | None:
        self._check()
        found = self.objects.get((namespace or "", name))
        return copy.deepcopy(found) if found else None

    async def create(self, res: Resource, body: dict[str, Any]) -> KubeObject:
        self._check()
        meta = body["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        if key in self.objects:
            raise AlreadyExists("exists", status=409, reason="AlreadyExists")
        return self._store(key, body)

    async def replace(
        self, res: Resource, body: dict[str, Any], *, subresource: str | None = None
    ) -> KubeObject:
        self._check()
        if self.before_replace:
            hook, self.before_replace = self.before_replace, None
            hook()
        meta = body["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        current = self.objects.get(key)
        if current is None:
            raise NotFound("gone", status=404)
        if meta.get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise Conflict("the object has been modified", status=409, reason="Conflict")
        return self._store(key, body)

    def _store(self, key: tuple[str, str], body: dict[str, Any]) -> KubeObject:
        self.version += 1
        obj = copy.deepcopy(body)
        obj["metadata"]["resourceVersion"] = str(self.version)
        self.objects[key] = obj
        return copy.deepcopy(obj)

    def holder(self) -> str | None:
        lease = self.objects.get(("ns", "lease"))
        return lease["spec"].get("holderIdentity") if lease else None

    def set_holder(self, identity: str) -> None:
        lease = self.objects[("ns", "lease")]
        lease["spec"]["holderIdentity"] = identity
        self.version += 1
        lease["metadata"]["resourceVersion"] = str(self.version)


class Log:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def started(self) -> None:
        self.calls.append("started")

    async def stopped(self) -> None:
        await asyncio.sleep(0)
        self.calls.append("stopped")


def elector(api: FakeApi, clock: ManualClock, log: Log, identity: str = "me") -> LeaderElector:
    return LeaderElector(
        api,
        namespace="ns",
        name="lease",
        identity=identity,
        clock=clock,
        on_started_leading=log.started,
        on_stopped_leading=log.stopped,
        lease_duration=15,
        renew_deadline=10,
        retry_period=2,
    )


def leading(e: LeaderElector) -> bool:
    # A call, not an attribute: mypy would narrow `e.is_leader` across awaits.
    return e.is_leader


def _hook_used(api: FakeApi) -> bool:
    return api.before_replace is None


async def settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


async def test_a_free_lease_is_created_and_held() -> None:
    api, clock, log = FakeApi(), ManualClock(), Log()
    e = elector(api, clock, log)
    task = asyncio.create_task(e.run())
    await settle()
    assert leading(e)
    assert log.calls == ["started"]
    assert api.holder() == "me"
    lease = api.objects[("ns", "lease")]
    assert lease["spec"]["leaseDurationSeconds"] == 15
    assert lease["spec"]["renewTime"] == "2030-01-01T00:00:00.000000Z"
    clock.advance(2)
    await settle()
    assert api.objects[("ns", "lease")]["spec"]["renewTime"] == "2030-01-01T00:00:02.000000Z"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log.calls == ["started", "stopped"]
    assert api.holder() is None  # released
    assert api.objects[("ns", "lease")]["spec"]["leaseDurationSeconds"] == 1


async def test_leadership_ends_when_renewals_fail_for_the_renew_deadline() -> None:
    api, clock, log = FakeApi(), ManualClock(), Log()
    e = elector(api, clock, log)
    task = asyncio.create_task(e.run())
    await settle()
    assert leading(e)
    api.down = True
    for _ in range(4):  # 8 s of failed renewals: still inside the 10 s deadline
        clock.advance(2)
        await settle()
    assert leading(e)
    clock.advance(2)  # 10 s: stop leading before the 15 s lease can pass to another
    await settle()
    assert not leading(e)
    assert log.calls == ["started", "stopped"]
    # It campaigns again and wins once the apiserver answers (the lease is still ours).
    api.down = False
    clock.advance(2)
    await settle()
    assert leading(e)
    assert log.calls == ["started", "stopped", "started"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_lease_taken_by_another_ends_leadership_at_once() -> None:
    api, clock, log = FakeApi(), ManualClock(), Log()
    e = elector(api, clock, log)
    task = asyncio.create_task(e.run())
    await settle()
    api.set_holder("intruder")
    clock.advance(2)
    await settle()
    assert not leading(e)
    assert e.observed_holder == "intruder"
    assert log.calls == ["started", "stopped"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert api.holder() == "intruder"  # not ours to release


async def test_a_held_lease_is_taken_only_after_it_expires() -> None:
    api, clock, log = FakeApi(), ManualClock(), Log()
    other_log = Log()
    holder = elector(api, clock, other_log, identity="other")
    holder_task = asyncio.create_task(holder.run())
    await settle()
    holder_task.cancel()  # dies; with release, so undo that below to simulate a crash
    with pytest.raises(asyncio.CancelledError):
        await holder_task
    api.set_holder("other")
    api.objects[("ns", "lease")]["spec"]["leaseDurationSeconds"] = 15

    e = elector(api, clock, log)
    task = asyncio.create_task(e.run())
    await settle()
    assert not leading(e)
    for _ in range(7):  # 14 s since we first saw this record
        clock.advance(2)
        await settle()
    assert not leading(e)
    clock.advance(2)  # 16 s > 15 s
    await settle()
    assert leading(e)
    assert api.holder() == "me"
    assert api.objects[("ns", "lease")]["spec"]["leaseTransitions"] == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_write_race_is_lost_quietly_and_retried(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="vpnctl.kube")
    api, clock, log = FakeApi(), ManualClock(), Log()
    api.objects[("ns", "lease")] = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "lease", "namespace": "ns", "resourceVersion": "0"},
        "spec": {},
    }
    # Someone writes between our read and our write: 409 on the first try.
    api.before_replace = lambda: api.set_holder("")
    e = elector(api, clock, log)
    task = asyncio.create_task(e.run())
    await settle()
    assert not leading(e)
    assert _hook_used(api), "the race did not happen"
    clock.advance(2)
    await settle()
    assert leading(e)
    assert log.calls == ["started"]
    # Quietly: a lost race is the normal way to lose an election, not a warning.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_timings_must_nest() -> None:
    with pytest.raises(ValueError, match="retry_period < renew_deadline < lease_duration"):
        LeaderElector(
            FakeApi(),
            namespace="ns",
            name="lease",
            identity="me",
            clock=ManualClock(),
            on_started_leading=lambda: None,
            on_stopped_leading=lambda: None,
            lease_duration=10,
            renew_deadline=10,
        )


def test_lease_resource() -> None:
    assert LEASE.path(namespace="ns", name="lease") == (
        "/apis/coordination.k8s.io/v1/namespaces/ns/leases/lease"
    )
