"""The per-tenant budget accounting (vpnctl/controller/budgets.py) with a manual clock,
and what the CSR cache keeps of a CSR. Against real apiservers, the whole thing is in
tests/kube/test_tenant_budgets.py."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from typing import Any, cast

import pytest

from vpnctl.controller.budgets import (
    DEGRADED,
    DROPPED_BYTES,
    REASON_CACHE,
    REASON_CSR_RATE,
    REASON_REPAIR_RATE,
    REASON_SLOW,
    REASON_WITHIN,
    WINDOW,
    Budgets,
    GuardedListing,
    OverBudget,
    RateWindow,
    TenantBudget,
    dropped_bytes,
    object_bytes,
    slim_csr,
    with_degraded,
)
from vpnctl.kube import CERTIFICATE_SIGNING_REQUEST, KubeObject, ManualClock
from vpnctl.kube.watch import Store
from vpnctl.reconcile.conditions import find_condition

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def budget(**limits: float) -> tuple[TenantBudget, ManualClock]:
    clock = ManualClock(wall=NOW)
    b = Budgets(**limits)  # type: ignore[arg-type]
    return TenantBudget(b, tenant="tenant-a/tenant-a", clock=clock, rng=random.Random(3)), clock


def refused(take: Callable[[], object], reason: str, *phrases: str) -> None:
    """TAKE raises OverBudget for REASON, with a message that names every PHRASE."""
    with pytest.raises(OverBudget) as over:
        take()
    assert over.value.reason == reason
    for phrase in phrases:
        assert phrase in over.value.message


def test_a_rate_window_slides() -> None:
    window = RateWindow(3, window=60.0)
    assert [window.take(t) for t in (0.0, 1.0, 2.0, 3.0)] == [True, True, True, False]
    assert not window.take(59.9)
    assert window.take(60.0)  # the take at 0.0 left the window
    assert not window.take(60.5)
    assert window.take(61.0)


def test_budgets_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="max_objects must be at least 1"):
        Budgets(max_objects=0)
    with pytest.raises(ValueError, match="max_call_seconds must be positive"):
        Budgets(max_call_seconds=0)
    with pytest.raises(ValueError, match="pause"):
        Budgets(pause_base=60.0, pause_cap=30.0)


def test_the_cache_budget_names_the_numbers_and_the_flags() -> None:
    b, _ = budget(max_objects=10, max_bytes=1000)
    b.check_cache(objects=10, size=1000)  # at the limit is within
    refused(
        lambda: b.check_cache(objects=11, size=5),
        REASON_CACHE,
        "tenant-a/tenant-a holds 11 objects",
        "--tenant-max-objects",
    )
    with pytest.raises(OverBudget):
        b.check_cache(objects=1, size=1001)


def test_csr_decisions_and_repairs_are_counted_per_minute_each() -> None:
    b, clock = budget(csr_decisions_per_minute=5, repairs_per_minute=2)
    for _ in range(5):
        b.take_csr_decision()
    refused(b.take_csr_decision, REASON_CSR_RATE, "--tenant-csr-decisions-per-minute")
    b.take_repair()
    b.take_repair()
    refused(b.take_repair, REASON_REPAIR_RATE, "webhook")
    clock.advance(WINDOW)
    b.take_csr_decision()
    b.take_repair()


def test_slow_installs_are_counted_per_minute() -> None:
    b, clock = budget(slow_calls_per_minute=2, max_call_seconds=4.0)
    b.take_slow_call()
    b.take_slow_call()
    refused(b.take_slow_call, REASON_SLOW, "longer than 4s", "--tenant-max-call-seconds")
    clock.advance(WINDOW)
    b.take_slow_call()


def test_a_trip_pauses_with_doubling_backoff_and_degraded_clears_after_a_calm_window() -> None:
    b, clock = budget(csr_decisions_per_minute=1, pause_base=30.0, pause_cap=100.0)
    assert b.degraded() is None
    assert not b.paused()
    over = OverBudget(REASON_CSR_RATE, "too many CSRs")
    first = b.trip(over)
    assert first == 30.0  # the first pause is the base (jitter never shortens it)
    assert b.paused()
    reason, message = b.degraded() or ("", "")
    assert reason == REASON_CSR_RATE
    assert "too many CSRs" in message
    assert "are paused until 2030-01-01T00:00" in message
    assert "other tenants are not affected" in message
    clock.advance(first)
    assert not b.paused()
    assert "resumed at" in (b.degraded() or ("", ""))[1]
    # Over again right after resuming: a longer pause (until the cap).
    pauses = [first]
    for _ in range(4):
        pauses.append(b.trip(over))
        clock.advance(pauses[-1])
    assert b.trips == 5
    assert b.total_trips == 5
    # Doubling, jittered to 50-100 % of the doubled value, never below the base and
    # never above the cap: 30, [30, 60], then [50, 100].
    assert 30.0 <= pauses[1] <= 60.0
    assert all(50.0 <= p <= 100.0 for p in pauses[2:])
    # The trip emptied the rate windows: the tenant starts afresh after a pause.
    b.take_csr_decision()
    # One full window within budget clears Degraded and the backoff.
    clock.advance(WINDOW)
    assert b.degraded() is None
    assert b.trips == 0
    assert b.total_trips == 5


def test_degraded_appears_only_for_a_tenant_that_went_over_and_then_turns_false() -> None:
    kw: dict[str, Any] = {"observed_generation": 3, "now": NOW}
    assert with_degraded([], None, **kw) == []
    over = with_degraded([], (REASON_CACHE, "too much"), **kw)
    condition = find_condition(over, DEGRADED)
    assert condition is not None
    assert (condition["status"], condition["reason"], condition["message"]) == (
        "True",
        REASON_CACHE,
        "too much",
    )
    calm = with_degraded(over, None, **kw)
    condition = find_condition(calm, DEGRADED)
    assert condition is not None
    assert (condition["status"], condition["reason"]) == ("False", REASON_WITHIN)
    assert with_degraded(calm, None, **kw) == calm


def csr(request: str, *, managed: bool = False) -> KubeObject:
    meta: dict[str, object] = {"name": "c1", "uid": "u1", "resourceVersion": "7"}
    if managed:
        meta["managedFields"] = [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]
    return {
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": meta,
        "spec": {"signerName": "vpnctl.io/node", "request": request, "usages": ["client auth"]},
    }


def test_slim_csr_drops_an_oversize_request_and_managed_fields_only() -> None:
    small = csr("A" * 1000)
    assert slim_csr(small, max_request_bytes=8192) is small
    assert dropped_bytes(small) == 0

    big = csr("B" * 600_000, managed=True)
    slim = slim_csr(big, max_request_bytes=8192)
    assert slim["spec"]["request"] == ""
    assert slim["spec"]["signerName"] == "vpnctl.io/node"
    assert "managedFields" not in slim["metadata"]
    assert slim[DROPPED_BYTES] == 600_000 == dropped_bytes(slim)
    assert object_bytes(slim) < 1000
    # The object given is untouched, and slimming twice changes nothing.
    assert len(big["spec"]["request"]) == 600_000
    assert "managedFields" in big["metadata"]
    assert slim_csr(slim, max_request_bytes=8192) == slim


def test_a_store_counts_the_bytes_it_holds() -> None:
    store = Store(object_bytes)
    one, two = csr("A" * 100), {**csr("B" * 300), "metadata": {"name": "c2"}}
    store.upsert(one)
    store.upsert(two)
    assert store.bytes == object_bytes(one) + object_bytes(two)
    bigger = csr("A" * 500)
    store.upsert(bigger)  # same name as ``one``: replaces it
    assert store.bytes == object_bytes(bigger) + object_bytes(two)
    store.discard(two)
    assert store.bytes == object_bytes(bigger)
    store.replace_all({("", "c2"): two})
    assert store.bytes == object_bytes(two)
    store.clear()
    assert (store.bytes, len(store)) == (0, 0)
    assert Store().bytes == 0  # no sizer: nothing counted


class PagedSource:
    """A fake of the listing interface: ``count`` objects in pages of ``page_size``,
    each passed through ``transform`` as a page arrives (as ``Kube.list`` does)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.produced = 0
        self.watched: list[dict[str, object]] = []

    async def list(
        self, res: object, namespace: object = None, *, page_size: int = 500,
        transform: object = None, **_: object,
    ) -> tuple[list[KubeObject], str]:  # fmt: skip
        items = []
        for i in range(self.count):
            self.produced += 1
            obj = csr("C" * 100)
            obj["metadata"] = {"name": f"c{i}"}
            items.append(transform(obj) if callable(transform) else obj)
        return items, "1"

    def watch(self, res: object, namespace: object = None, **options: object) -> object:
        self.watched.append(options)
        return "stream"


async def test_a_listing_stops_as_soon_as_it_alone_is_over_budget() -> None:
    b, _ = budget(max_objects=100)
    source = PagedSource(10_000)
    guarded = GuardedListing(source, b, others=lambda: (7, 5000))  # type: ignore[arg-type]
    with pytest.raises(OverBudget) as over:
        await guarded.list(
            CERTIFICATE_SIGNING_REQUEST,
            transform=lambda o: slim_csr(o, max_request_bytes=50),
            page_size=25,
        )
    assert "holds 101 objects" in over.value.message
    assert source.produced == 94  # 7 elsewhere + 94 listed: one over, then it stopped
    # Within budget, the listing comes back whole and transformed.
    small = PagedSource(50)
    items, _ = await GuardedListing(small, b, others=lambda: (0, 0)).list(  # type: ignore[arg-type]
        CERTIFICATE_SIGNING_REQUEST, transform=lambda o: slim_csr(o, max_request_bytes=50)
    )
    assert len(items) == 50
    assert all(dropped_bytes(i) == 100 for i in items)
    # Watches pass through, field selector included.
    stream = GuardedListing(small, b, others=lambda: (0, 0)).watch(  # type: ignore[arg-type]
        CERTIFICATE_SIGNING_REQUEST,
        resource_version="1",
        timeout_seconds=5,
        field_selector="spec.signerName=x",
    )
    assert cast(object, stream) == "stream"  # the fake's stand-in for a stream
    assert small.watched[0]["field_selector"] == "spec.signerName=x"
