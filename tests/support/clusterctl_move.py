"""Which objects `clusterctl move` takes, as its provider contract states the rule.

A test oracle, not a copy of clusterctl: the rule as written in Cluster API's
"clusterctl provider contract" (section Move) and its objectgraph, restated here so the
unit tier can check that every object vpnctl keeps in the management cluster is found:

- Discovery considers the kinds of the CRDs labelled `clusterctl.cluster.x-k8s.io`
  (clusterctl puts it on the CRDs it installs; a provider installed otherwise puts it
  there itself), plus Secrets and ConfigMaps.
- Of those objects, it moves the ones linked to a Cluster through the owner-reference
  chain, the Secrets without owners whose name is `<cluster>-<suffix>` (soft-owned by
  that Cluster), and anything labelled `.../move` or `.../move-hierarchy` (or whose CRD
  is); a `move-hierarchy` object takes its owner-reference descendants along.

Everything else (Deployments, Services, NetworkPolicies; kinds whose CRD lacks the
label) stays behind, to be deleted with the source cluster's objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

CLUSTERCTL_LABEL = "clusterctl.cluster.x-k8s.io"
MOVE_LABEL = "clusterctl.cluster.x-k8s.io/move"
MOVE_HIERARCHY_LABEL = "clusterctl.cluster.x-k8s.io/move-hierarchy"
CAPI_GROUP = "cluster.x-k8s.io"

GroupKind = tuple[str, str]
ObjectKey = tuple[str, str, str]  # (kind, namespace, name)


def _group_kind(obj: Mapping[str, Any]) -> GroupKind:
    api_version = str(obj["apiVersion"])
    group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
    return group, str(obj["kind"])


def key(obj: Mapping[str, Any]) -> ObjectKey:
    meta = obj["metadata"]
    return str(obj["kind"]), str(meta.get("namespace", "")), str(meta["name"])


def moved_objects(
    *, crds: Sequence[Mapping[str, Any]], objects: Iterable[Mapping[str, Any]]
) -> set[ObjectKey]:
    """The keys of OBJECTS (one namespace's) that a move takes, given the CRDs installed.

    CAPI's own Cluster kind counts as discovered, as after `clusterctl init`."""
    discovered: dict[GroupKind, set[str]] = {("", "Secret"): set(), ("", "ConfigMap"): set()}
    discovered[(CAPI_GROUP, "Cluster")] = {MOVE_HIERARCHY_LABEL}
    for crd in crds:
        labels = crd["metadata"].get("labels") or {}
        if CLUSTERCTL_LABEL not in labels:
            continue
        names = crd["spec"]["names"]
        discovered[(str(crd["spec"]["group"]), str(names["kind"]))] = {
            label for label in (MOVE_LABEL, MOVE_HIERARCHY_LABEL) if label in labels
        }
    nodes = [o for o in objects if _group_kind(o) in discovered]
    by_uid = {str(o["metadata"]["uid"]): o for o in nodes if o["metadata"].get("uid")}

    def flags(obj: Mapping[str, Any]) -> set[str]:
        own = set(obj["metadata"].get("labels") or {}) & {MOVE_LABEL, MOVE_HIERARCHY_LABEL}
        return own | discovered[_group_kind(obj)]

    def owners(obj: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        refs = obj["metadata"].get("ownerReferences") or []
        found = [by_uid[str(r["uid"])] for r in refs if str(r.get("uid")) in by_uid]
        if not refs and obj["kind"] == "Secret":
            # Soft ownership: `<cluster>-<suffix>` names a Cluster of the same namespace.
            meta = obj["metadata"]
            found = [
                c
                for c in nodes
                if _group_kind(c) == (CAPI_GROUP, "Cluster")
                and c["metadata"].get("namespace") == meta.get("namespace")
                and str(meta["name"]).startswith(f"{c['metadata']['name']}-")
            ]
        return found

    moved: set[ObjectKey] = set()
    roots = [o for o in nodes if MOVE_HIERARCHY_LABEL in flags(o)]
    moved.update(key(o) for o in nodes if MOVE_LABEL in flags(o))
    reached = {id(o) for o in roots}
    frontier = list(roots)
    while frontier:
        parent = frontier.pop()
        moved.add(key(parent))
        for child in nodes:
            if id(child) not in reached and any(p is parent for p in owners(child)):
                reached.add(id(child))
                frontier.append(child)
    return moved
