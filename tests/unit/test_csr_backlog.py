"""The CSR loop looks only at CSRs that changed (vpnctl/controller/csr_backlog.py).

Before, every CSR event made the loop walk the whole cache: with thousands of CSRs held by
a tenant, each event cost as much as all of them."""

from __future__ import annotations

from vpnctl.controller.csr_backlog import CsrBacklog
from vpnctl.kube import KubeObject
from vpnctl.kube.watch import Store


def csr(i: int, rv: str = "1") -> KubeObject:
    return {"metadata": {"name": f"csr-{i:04d}", "uid": f"uid-{i}", "resourceVersion": rv}}


def names(csrs: list[KubeObject]) -> list[str]:
    return [c["metadata"]["name"] for c in csrs]


def filled(count: int) -> Store:
    store = Store()
    for i in range(count):
        store.upsert(csr(i))
    return store


def test_first_every_csr_then_only_the_one_that_changed() -> None:
    store, backlog = filled(1000), CsrBacklog()
    first = backlog.take(store)
    assert len(first) == 1000  # a new cache: everything, once
    for c in first:
        backlog.decided(c)
    assert backlog.take(store) == []
    # One CSR changes among a thousand decided ones: the loop gets just that one, and
    # since it was decided, not even that.
    store.upsert(csr(500, rv="2"))
    backlog.changed("MODIFIED", csr(500, rv="2"))
    assert backlog.take(store) == []
    # A new one: only it.
    store.upsert(csr(1000))
    backlog.changed("ADDED", csr(1000))
    assert names(backlog.take(store)) == ["csr-1000"]


def test_a_failed_decision_is_taken_again_and_a_deleted_csr_is_forgotten() -> None:
    store, backlog = filled(3), CsrBacklog()
    taken = backlog.take(store)
    backlog.decided(taken[0])
    backlog.retry(["csr-0001", "csr-0002"])
    assert names(backlog.take(store)) == ["csr-0001", "csr-0002"]
    # A changed CSR that is gone from the cache by the time the loop looks: skipped.
    backlog.changed("MODIFIED", csr(7))
    assert backlog.take(store) == []
    # Deleted, then re-created under the same name with a new uid: decided afresh.
    store.discard(csr(0))
    backlog.changed("DELETED", csr(0))
    again = {"metadata": {"name": "csr-0000", "uid": "uid-new", "resourceVersion": "9"}}
    store.upsert(again)
    backlog.changed("ADDED", again)
    assert backlog.take(store) == [again]


def test_a_rescan_looks_at_every_undecided_csr_once_and_forgets_vanished_ones() -> None:
    store, backlog = filled(5), CsrBacklog()
    for c in backlog.take(store):
        if c["metadata"]["name"] != "csr-0003":
            backlog.decided(c)
    backlog.rescan()  # e.g. the Machines changed: csr-0003 may be signable now
    assert names(backlog.take(store)) == ["csr-0003"]
    assert backlog.take(store) == []
    # While the cache was being rebuilt csr-0001 went away (no DELETED seen); a CSR
    # re-created later with its old uid must not count as decided.
    store.discard(csr(1))
    backlog.rescan()
    backlog.take(store)
    store.upsert(csr(1))
    backlog.changed("ADDED", csr(1))
    assert names(backlog.take(store)) == ["csr-0001"]
