"""Which objects the controller installs in a tenant cluster, and how it follows them.

Pure: a desired object becomes an ``ObjectRef`` (its kind's ``Resource``, namespace,
name); the refs give one ``WatchSpec`` per kind, and the live objects known from those
watches say which desired objects ``drifted``. The tenant side
(``vpnctl.controller.tenant_side``) does the I/O.

``Resource`` comes from ``vpnctl.kube.resources``: a plain dataclass of names, no client.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from vpnctl.api import KubeObject
from vpnctl.kube.resources import (
    CLUSTER_ROLE,
    CLUSTER_ROLE_BINDING,
    CONFIG_MAP,
    DAEMON_SET,
    DEPLOYMENT,
    NAMESPACE,
    ROLE,
    ROLE_BINDING,
    SECRET,
    SERVICE,
    SERVICE_ACCOUNT,
    Resource,
)
from vpnctl.reconcile.diff import needs_update
from vpnctl.reconcile.names import CLUSTER_LABEL, NAME_LABEL, PRODUCT_NAME

# The kinds we know how to install, watch and clean up in a tenant cluster.
KNOWN_RESOURCES: tuple[Resource, ...] = (
    NAMESPACE,
    SERVICE_ACCOUNT,
    ROLE,
    ROLE_BINDING,
    CLUSTER_ROLE,
    CLUSTER_ROLE_BINDING,
    CONFIG_MAP,
    SECRET,
    SERVICE,
    DAEMON_SET,
    DEPLOYMENT,
)
_BY_TYPE = {(r.api_version, r.kind): r for r in KNOWN_RESOURCES}


@dataclass(frozen=True)
class ObjectRef:
    """Which object: its resource, namespace ("" when cluster-scoped) and name."""

    res: Resource
    namespace: str
    name: str

    def __str__(self) -> str:
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{self.res.kind} {where}"


@dataclass(frozen=True)
class WatchSpec:
    """One watch: a resource, in one namespace or (None) all of them / cluster-scoped."""

    res: Resource
    namespace: str | None


def resource_for(obj: Mapping[str, Any]) -> Resource:
    """The Resource of a desired object, from its apiVersion and kind.

    Raises ValueError for a kind this module doesn't know: a desired-state builder
    produced something new, and ``KNOWN_RESOURCES`` needs it too.
    """
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    res = _BY_TYPE.get((str(api_version), str(kind)))
    if res is None:
        known = ", ".join(f"{r.api_version}/{r.kind}" for r in KNOWN_RESOURCES)
        raise ValueError(
            f"tenant_side can't install {api_version}/{kind} (known: {known}); "
            "add its Resource to KNOWN_RESOURCES in vpnctl/reconcile/tenant_refs.py"
        )
    return res


def object_ref(obj: Mapping[str, Any]) -> ObjectRef:
    res = resource_for(obj)
    meta = obj.get("metadata") or {}
    name = str(meta.get("name") or "")
    namespace = str(meta.get("namespace") or "")
    if not name:
        raise ValueError(f"desired {res.kind} has no metadata.name")
    if res.namespaced != bool(namespace):
        scope = "needs metadata.namespace" if res.namespaced else "is cluster-scoped"
        raise ValueError(f"desired {res.kind} {name!r} {scope}")
    return ObjectRef(res, namespace, name)


def live_ref(res: Resource, obj: Mapping[str, Any]) -> ObjectRef:
    """The ref of an object a watch or a listing of ``res`` brought (no checks: the
    apiserver's objects have a name, and a namespace when namespaced)."""
    meta = obj.get("metadata") or {}
    return ObjectRef(res, str(meta.get("namespace") or ""), str(meta.get("name")))


def desired_by_ref(objects: Iterable[Mapping[str, Any]]) -> dict[ObjectRef, KubeObject]:
    """The desired objects by ref, in the order given (the order to apply them)."""
    out: dict[ObjectRef, KubeObject] = {}
    for obj in objects:
        ref = object_ref(obj)
        if ref in out:
            raise ValueError(f"desired objects name {ref} twice")
        out[ref] = dict(obj)
    return out


def label_selector(cluster: str) -> str:
    """What selects our objects in a tenant cluster: the builders and the agent chart
    set both labels. Not app.kubernetes.io/managed-by: `helm install` of the agent chart
    sets it to "Helm" on every object it creates, whatever the template says, and the
    controller must still find (repair, clean up) an agent installed that way."""
    return f"{NAME_LABEL}={PRODUCT_NAME},{CLUSTER_LABEL}={cluster}"


def watch_specs(refs: Iterable[ObjectRef]) -> tuple[WatchSpec, ...]:
    """One watch per kind: in the kind's one namespace, or in all when there are several."""
    namespaces: dict[Resource, set[str]] = {}
    for ref in refs:
        namespaces.setdefault(ref.res, set()).add(ref.namespace)
    specs = []
    for res, found in namespaces.items():
        only = next(iter(found)) if len(found) == 1 else ""
        specs.append(WatchSpec(res, only if res.namespaced and only else None))
    return tuple(specs)


def covers(spec: WatchSpec, ref: ObjectRef) -> bool:
    return spec.res == ref.res and (spec.namespace is None or spec.namespace == ref.namespace)


def drifted(
    desired: Mapping[ObjectRef, KubeObject], live: Mapping[ObjectRef, KubeObject | None]
) -> list[ObjectRef]:
    """Desired objects whose live state (``live``: only what is known; None = absent)
    needs a write, in the desired order."""
    return [ref for ref, obj in desired.items() if ref in live and needs_update(live[ref], obj)]
