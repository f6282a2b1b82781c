"""Which of a tenant's cached node CSRs the CSR loop has to look at next.

A tenant may hold thousands of node CSRs. Looking at every one of them on every CSR
event (as the loop once did) makes each event cost as much as the whole cache, and a
tenant that keeps touching CSRs then keeps the controller busy. So the loop takes from
this backlog only:

- the CSRs whose watch events arrived since it last looked (by name), and
- every cached CSR, once, after ``rescan()``: the Machines or the CA changed (a CSR
  refused before may now be signable), or the cache was rebuilt (a relist after a pause).

The uids decided (or found not ours to decide) are remembered, so an unchanged CSR is
never decided twice; a deleted CSR's uid is forgotten with its DELETED event, and a
rescan forgets the uids of CSRs that went while nobody watched.
"""

from __future__ import annotations

from collections.abc import Iterable

from vpnctl.kube import KubeObject
from vpnctl.kube.watch import Store


def _meta(obj: KubeObject) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("name") or ""), str(meta.get("uid") or "")


class CsrBacklog:
    def __init__(self) -> None:
        self._dirty: set[str] = set()
        self._rescan = True
        self._done: set[str] = set()

    def changed(self, event_type: str, obj: KubeObject) -> None:
        """A watch event about ``obj``."""
        name, uid = _meta(obj)
        if event_type == "DELETED":
            self._done.discard(uid)
            self._dirty.discard(name)
        else:
            self._dirty.add(name)

    def rescan(self) -> None:
        """Look at every cached CSR next time (Machines or CA changed, cache rebuilt)."""
        self._rescan = True
        self._dirty.clear()

    def take(self, store: Store) -> list[KubeObject]:
        """The CSRs to look at now, in name order, without those already decided."""
        if self._rescan:
            self._rescan = False
            self._dirty.clear()
            csrs = sorted(store, key=lambda c: _meta(c)[0])
            self._done &= {_meta(c)[1] for c in csrs}
        else:
            names, self._dirty = self._dirty, set()
            csrs = [c for n in sorted(names) if (c := store.get(n)) is not None]
        return [c for c in csrs if _meta(c)[1] not in self._done]

    def decided(self, obj: KubeObject) -> None:
        self._done.add(_meta(obj)[1])

    def retry(self, names: Iterable[str]) -> None:
        """Look at these again next time (their decision failed)."""
        self._dirty.update(names)
