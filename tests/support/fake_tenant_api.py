"""An in-memory fake of ``vpnctl.controller.tenant_api.TenantApi``: the service cluster's
apiserver as the reconcile pass sees it, so the pass's order of writes can be unit-tested.

It keeps objects per (resource, namespace, name), hands out copies, bumps
``resourceVersion`` on every change, and raises the same ``vpnctl.kube`` errors as the
real client where the pass depends on them: ``AlreadyExists`` on a create of a taken
name, ``Conflict`` on a stale ``resourceVersion`` or ``uid``, ``NotFound`` on a write to
a missing object. Deleting an object with finalizers only sets its
``deletionTimestamp``, as the apiserver does. Server-side apply is modelled as a
deep merge (maps merged key by key, lists replaced), which is what our one field manager
sees for the objects it owns. A new Service gets a ``spec.clusterIP``. Label selectors:
``k=v`` terms joined by commas.

``writes`` is the journal the tests read: one ``Write`` per successful write, in order.
Reads are not journalled. No garbage collection, no admission, no other defaulting.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vpnctl.controller.tenant_api import TenantApi
from vpnctl.kube import (
    AlreadyExists,
    Conflict,
    KubeObject,
    NotFound,
    Resource,
)

_Key = tuple[str, str, str]  # (resource label, namespace, name)


@dataclass(frozen=True)
class Write:
    verb: str  # create, replace, apply, status, patch, delete
    resource: str  # Resource.label, e.g. "configmaps", "tunnels.vpnctl.io"
    namespace: str
    name: str
    body: KubeObject  # what was sent (a copy)

    @property
    def what(self) -> tuple[str, str, str]:
        return self.verb, self.resource, self.name


def _merge(live: Any, patch: Any, *, delete_none: bool) -> Any:
    if not isinstance(patch, Mapping) or not isinstance(live, Mapping):
        return copy.deepcopy(patch)
    out = dict(live)
    for key, value in patch.items():
        if value is None and delete_none:
            out.pop(key, None)
        else:
            out[key] = _merge(live.get(key), value, delete_none=delete_none)
    return out


def _matches(obj: Mapping[str, Any], selector: str | None) -> bool:
    if not selector:
        return True
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in selector.split(","):
        key, _, value = term.partition("=")
        if labels.get(key.strip()) != value.strip():
            return False
    return True


@dataclass
class FakeTenantApi:
    objects: dict[_Key, KubeObject] = field(default_factory=dict)
    writes: list[Write] = field(default_factory=list)
    _versions: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    # --- helpers for tests ---------------------------------------------------------------

    def seed(self, res: Resource, obj: Mapping[str, Any]) -> KubeObject:
        """Put an object in place without journalling it (the world before the pass)."""
        body = self._stamped(res, dict(copy.deepcopy(obj)))
        meta = body["metadata"]
        self.objects[(res.label, meta.get("namespace", ""), meta["name"])] = body
        return copy.deepcopy(body)

    def peek(self, res: Resource, name: str, namespace: str) -> KubeObject | None:
        obj = self.objects.get((res.label, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def named(self, res: Resource, namespace: str | None = None) -> list[str]:
        return sorted(
            n for (r, ns, n) in self.objects if r == res.label and namespace in (None, ns)
        )

    def journal(self) -> list[tuple[str, str, str]]:
        return [w.what for w in self.writes]

    def clear_journal(self) -> None:
        self.writes.clear()

    # --- TenantApi -----------------------------------------------------------------------

    async def get(
        self, res: Resource, name: str, namespace: str | None = None
    ) -> KubeObject | None:
        return self.peek(res, name, namespace or "")

    async def list(
        self, res: Resource, namespace: str | None = None, *, label_selector: str | None = None
    ) -> tuple[list[KubeObject], str]:
        items = [
            copy.deepcopy(obj)
            for (r, ns, _), obj in sorted(self.objects.items())
            if r == res.label and namespace in (None, ns) and _matches(obj, label_selector)
        ]
        return items, str(next(self._versions))

    async def create(self, res: Resource, body: Mapping[str, Any]) -> KubeObject:
        key = self._key(res, body)
        if key in self.objects:
            raise AlreadyExists(f"{res.describe(key[2], key[1])} already exists", status=409,
                                reason="AlreadyExists", method="POST")  # fmt: skip
        return self._store("create", res, key, dict(copy.deepcopy(body)), sent=body, new=True)

    async def replace(
        self, res: Resource, body: Mapping[str, Any], *, subresource: str | None = None
    ) -> KubeObject:
        key = self._key(res, body)
        live = self._live(res, key, "PUT")
        self._check_version(res, key, live, body.get("metadata") or {})
        updated = dict(copy.deepcopy(body))
        updated["metadata"] = {**live["metadata"], **updated.get("metadata", {})}
        return self._store("replace", res, key, updated, sent=body)

    async def apply(
        self,
        res: Resource,
        body: Mapping[str, Any],
        *,
        field_manager: str = "vpnctl",
        force: bool = True,
    ) -> KubeObject:
        key = self._key(res, body)
        live = self.objects.get(key)
        if live is None:
            return self._store("apply", res, key, dict(copy.deepcopy(body)), sent=body, new=True)
        merged = _merge(live, {k: v for k, v in body.items() if k != "status"}, delete_none=False)
        return self._store("apply", res, key, merged, sent=body)

    async def apply_status(
        self,
        res: Resource,
        body: Mapping[str, Any],
        *,
        field_manager: str = "vpnctl",
        force: bool = True,
    ) -> KubeObject:
        key = self._key(res, body)
        live = self._live(res, key, "PATCH")
        updated = {**live, "status": copy.deepcopy(body.get("status") or {})}
        return self._store("status", res, key, updated, sent=body)

    async def patch_merge(
        self, res: Resource, name: str, patch: Mapping[str, Any], *, namespace: str | None = None
    ) -> KubeObject:
        key = (res.label, namespace or "", name)
        live = self._live(res, key, "PATCH")
        self._check_version(res, key, live, patch.get("metadata") or {})
        updated = _merge(live, patch, delete_none=True)
        updated["metadata"].pop("resourceVersion", None)
        stored = self._store("patch", res, key, updated, sent=patch)
        meta = stored["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            del self.objects[key]  # the last finalizer gone: the object goes
        return stored

    async def delete(
        self, res: Resource, name: str, namespace: str | None = None, *, uid: str | None = None
    ) -> bool:
        key = (res.label, namespace or "", name)
        live = self.objects.get(key)
        if live is None:
            return False
        if uid and live["metadata"].get("uid") != uid:
            raise Conflict(f"{res.describe(name, namespace)}: uid precondition failed",
                           status=409, reason="Conflict", method="DELETE")  # fmt: skip
        self.writes.append(Write("delete", res.label, key[1], name, {}))
        if live["metadata"].get("finalizers"):
            if not live["metadata"].get("deletionTimestamp"):
                live["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
                live["metadata"]["resourceVersion"] = str(next(self._versions))
        else:
            del self.objects[key]
        return True

    # --- internals -----------------------------------------------------------------------

    @staticmethod
    def _key(res: Resource, body: Mapping[str, Any]) -> _Key:
        meta = body.get("metadata") or {}
        return res.label, str(meta.get("namespace") or ""), str(meta["name"])

    def _live(self, res: Resource, key: _Key, method: str) -> KubeObject:
        live = self.objects.get(key)
        if live is None:
            raise NotFound(f"{res.describe(key[2], key[1])} not found", status=404,
                           reason="NotFound", method=method)  # fmt: skip
        return live

    @staticmethod
    def _check_version(
        res: Resource, key: _Key, live: Mapping[str, Any], meta: Mapping[str, Any]
    ) -> None:
        wanted = meta.get("resourceVersion")
        if wanted is not None and wanted != live["metadata"].get("resourceVersion"):
            raise Conflict(f"{res.describe(key[2], key[1])} was modified", status=409,
                           reason="Conflict", method="PUT")  # fmt: skip

    def _stamped(self, res: Resource, body: KubeObject, *, uid: str | None = None) -> KubeObject:
        body.setdefault("apiVersion", res.api_version)
        body.setdefault("kind", res.kind)
        meta = body.setdefault("metadata", {})
        meta.setdefault("uid", uid or f"uid-{meta['name']}-{next(self._versions)}")
        meta.setdefault("generation", 1)
        meta["resourceVersion"] = str(next(self._versions))
        return body

    def _store(
        self,
        verb: str,
        res: Resource,
        key: _Key,
        body: KubeObject,
        *,
        sent: Mapping[str, Any],
        new: bool = False,
    ) -> KubeObject:
        live = self.objects.get(key)
        if not new and live is not None:
            body["metadata"] = {**body.get("metadata", {}), "uid": live["metadata"]["uid"]}
            unchanged = {k: v for k, v in body.items() if k != "metadata"} == {
                k: v for k, v in live.items() if k != "metadata"
            } and {k: v for k, v in body["metadata"].items() if k != "resourceVersion"} == {
                k: v for k, v in live["metadata"].items() if k != "resourceVersion"
            }
            if unchanged:  # the apiserver writes nothing: resourceVersion stays
                self.writes.append(
                    Write(verb, res.label, key[1], key[2], copy.deepcopy(dict(sent)))
                )
                return copy.deepcopy(live)
        stored = self._stamped(res, body)
        if new and res.kind == "Service" and res.group == "":
            # Defaulting the pass depends on: a Service gets its cluster IP on creation.
            stored.setdefault("spec", {}).setdefault("clusterIP", f"10.96.0.{len(self.objects)}")
        self.objects[key] = stored
        self.writes.append(Write(verb, res.label, key[1], key[2], copy.deepcopy(dict(sent))))
        return copy.deepcopy(stored)


def as_tenant_api(fake: FakeTenantApi) -> TenantApi:
    """The fake, typed as what it stands in for (mypy checks that it conforms)."""
    return fake
