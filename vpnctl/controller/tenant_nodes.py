"""The tenant's Nodes, for the plan: every node's podCIDRs go through that node's own
tunnel (issue 12), so the controller must know them.

openvpn drops a reply whose source is outside the iroutes of the client it comes from.
A pod answers through its own node's tunnel, so each node must iroute its own podCIDRs;
only the tenant cluster knows them (``Node.spec.podCIDRs``). So the tenant side keeps,
per tenant and next to its other watches, a watch on the tenant's Nodes, and the
reconciler passes what it holds to ``plan_tenant`` (which parses it with
``tenant_members.node_facts`` and checks every podCIDR against the cluster's pod CIDRs,
the other nodes' podCIDRs and the node addresses).

Nodes are the tenant's objects, so hostile input, bounded as the CSRs are:

- the cache keeps only what the plan reads (``slim_node``: name, podCIDRs, addresses,
  kubelet port), never a Node's images, conditions or managedFields;
- the listing goes through ``GuardedListing`` and every event through ``check_cache``:
  the Nodes count towards the tenant's cached-objects and bytes budget, and a tenant
  over it is paused like any other (``tenant_lane``);
- a change is reported (``listener(tenant)``, the controller's queue) only when what the
  plan reads of a node *that a Machine names* changed: kubelet heartbeats, taints and
  nodes without a Machine re-plan nothing.

While the tenant is paused, or its lane restarts, the last complete listing stands in
(``TenantState.last_nodes``): dropping the nodes' podCIDRs would move every pod CIDR
back to the elected node and kick every node's client, for a tenant problem that has
nothing to do with routing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from vpnctl.api import Node
from vpnctl.controller.budgets import GuardedListing
from vpnctl.controller.interfaces import TenantRef
from vpnctl.controller.tenant_lane import Lane
from vpnctl.controller.tenant_state import TenantCalls, TenantState, cache_usage, check_cache
from vpnctl.kube import NODE, KubeObject
from vpnctl.reconcile.tenant_members import NodeFacts, node_facts

_log = logging.getLogger(__name__)

# Nodes per list page: a page is held in full before the budget check sees it.
NODE_PAGE_SIZE = 100

NodesListener = Callable[[TenantRef], None]


def _pick(source: object, keys: Sequence[str]) -> dict[str, Any]:
    if not isinstance(source, Mapping):
        return {}
    return {k: source[k] for k in keys if k in source}


def slim_node(obj: KubeObject) -> KubeObject:
    """What the cache keeps of a Node: what the plan reads (``node_facts``) and what the
    watch needs (name, resourceVersion). Idempotent; the object given is not changed."""
    status = _pick(obj.get("status"), ("addresses", "daemonEndpoints"))
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": _pick(obj.get("metadata"), ("name", "uid", "resourceVersion")),
        "spec": _pick(obj.get("spec"), ("podCIDR", "podCIDRs")),
        "status": status,
    }


def _facts_of(obj: KubeObject) -> tuple[str, NodeFacts | None]:
    name = (obj.get("metadata") or {}).get("name")
    name = name if isinstance(name, str) else ""
    return name, node_facts([cast(Node, obj)]).get(name)


def _machine_nodes(machines: Sequence[KubeObject]) -> set[str]:
    """The node names the Machines' ``status.nodeRef`` name."""
    names: set[str] = set()
    for machine in machines:
        status = machine.get("status")
        ref = status.get("nodeRef") if isinstance(status, Mapping) else None
        name = ref.get("name") if isinstance(ref, Mapping) else None
        if isinstance(name, str) and name:
            names.add(name)
    return names


class NodeWatch:
    """The Node watch of every tenant (state in ``TenantState``); ``listener`` is told
    the tenant whose routed nodes changed (``follow``)."""

    def __init__(self, *, calls: TenantCalls) -> None:
        self._calls = calls
        self._listener: NodesListener | None = None

    def follow(self, listener: NodesListener | None) -> None:
        self._listener = listener

    def start(self, state: TenantState, lane: Lane) -> None:
        """Start the tenant's Node watch in its lane."""
        assert state.budget is not None
        state.node_facts = {}
        watcher = self._calls.watcher(
            GuardedListing(
                state.kube, state.budget, others=lambda: cache_usage(state, nodes=False)
            ),
            NODE,
            None,
            on_event=self._handler(state),
            page_size=NODE_PAGE_SIZE,
            transform=slim_node,
        )
        state.node_watcher = watcher
        lane.spawn("watch nodes", watcher.run())

    def nodes(self, state: TenantState) -> list[KubeObject] | None:
        """The tenant's Nodes as cached, or the last complete listing while the watch is
        not synced (paused, restarting); None when never listed."""
        watcher = state.node_watcher
        if watcher is not None and watcher.synced.is_set():
            return watcher.store.list()
        return None if state.last_nodes is None else list(state.last_nodes)

    def keep_last(self, state: TenantState) -> None:
        """Before the caches are dropped: keep the last complete listing (see the module
        docstring)."""
        watcher = state.node_watcher
        if watcher is not None and watcher.synced.is_set():
            state.last_nodes = tuple(watcher.store.list())

    def _handler(self, state: TenantState) -> Callable[[str, KubeObject], None]:
        def on_event(event_type: str, obj: KubeObject) -> None:
            if event_type != "DELETED":
                check_cache(state)
            name, facts = _facts_of(obj)
            if event_type == "DELETED":
                facts = None
            before = state.node_facts.get(name)
            if facts is None:
                state.node_facts.pop(name, None)
            else:
                state.node_facts[name] = facts
            if facts == before or name not in _machine_nodes(state.machines):
                return
            _log.info(
                "event=tenant_node_changed tenant=%s node=%s change=%s pod_cidrs=%s",
                state.ref,
                name,
                event_type.lower(),
                ",".join(str(n) for n in facts.pod_cidrs) if facts is not None else "",
            )
            if self._listener is not None:
                self._listener(state.ref)

        return on_event
