"""The service-cluster API calls the reconcile pass makes, as one small Protocol, and the
plumbing every part of the pass writes through.

``TenantApi`` is exactly what ``TenantReconciler`` (and the revocation book and Event
recording it drives) calls on the service cluster's apiserver: ``vpnctl.kube.Kube``
satisfies it, and so does the in-memory fake the unit tests of the pass use
(``tests/support/fake_tenant_api.py``), so the order of writes can be tested without an
apiserver.

``TenantCalls`` is the base of the pass's parts (``tenant_lifecycle``, ``tenant_pki``,
``tenant_server``, ``tenant_status``, ``tenant_revocations``): every call goes through
``with_retries`` (transport errors and 429, Retry-After honoured), every write is counted
in the metrics, an object is applied only when ``diff.needs_update`` says the live one is
not already right, and an Event never fails a pass.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

from vpnctl.controller.metrics import ControllerMetrics
from vpnctl.controller.tenant_settings import TenantSettings
from vpnctl.kube import EVENT, ApiError, Clock, KubeObject, Resource, record_event, with_retries
from vpnctl.reconcile.diff import needs_update

_log = logging.getLogger(__name__)

T = TypeVar("T")


class TenantApi(Protocol):
    """The part of ``vpnctl.kube.Kube`` the reconcile pass uses (see the module docstring).

    ``get``, ``create`` and ``replace`` are also what the revocation book and
    ``record_event`` need (``vpnctl.kube.ObjectApi``)."""

    async def get(
        self, res: Resource, name: str, namespace: str | None = None
    ) -> KubeObject | None: ...

    async def list(
        self, res: Resource, namespace: str | None = None, *, label_selector: str | None = None
    ) -> tuple[list[KubeObject], str]: ...

    async def create(self, res: Resource, body: Mapping[str, Any]) -> KubeObject: ...

    async def replace(
        self, res: Resource, body: Mapping[str, Any], *, subresource: str | None = None
    ) -> KubeObject: ...

    async def apply(
        self, res: Resource, body: Mapping[str, Any], *, field_manager: str = ..., force: bool = ...
    ) -> KubeObject: ...

    async def apply_status(
        self, res: Resource, body: Mapping[str, Any], *, field_manager: str = ..., force: bool = ...
    ) -> KubeObject: ...

    async def patch_merge(
        self, res: Resource, name: str, patch: Mapping[str, Any], *, namespace: str | None = None
    ) -> KubeObject: ...

    async def delete(
        self, res: Resource, name: str, namespace: str | None = None, *, uid: str | None = None
    ) -> bool: ...


def meta_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def is_deleting(obj: Mapping[str, Any]) -> bool:
    return bool(meta_of(obj).get("deletionTimestamp"))


class TenantCalls:
    """Reads and writes of the pass, with retries, metrics and the skip-if-unchanged rule."""

    def __init__(
        self,
        *,
        api: TenantApi,
        settings: TenantSettings,
        clock: Clock,
        rng: random.Random,
        metrics: ControllerMetrics,
    ) -> None:
        self._api = api
        self._settings = settings
        self._clock = clock
        self._rng = rng
        self._metrics = metrics

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        return await with_retries(
            fn, rng=self._rng, clock=self._clock, attempts=self._settings.api_attempts
        )

    async def _get(self, res: Resource, name: str, namespace: str) -> KubeObject | None:
        return await self._call(lambda: self._api.get(res, name, namespace))

    def _count(self, kind: str, res: Resource) -> None:
        self._metrics.writes.labels(kind=kind, resource=res.label).inc()

    async def _ensure(
        self,
        res: Resource,
        desired: KubeObject,
        *,
        live: KubeObject | None = None,
        read: bool = True,
    ) -> KubeObject:
        """Apply ``desired`` unless the live object already has it; returns the live one."""
        meta = desired["metadata"]
        if live is None and read:
            live = await self._get(res, meta["name"], meta["namespace"])
        if not needs_update(live, desired):
            assert live is not None
            return live
        applied = await self._call(
            lambda: self._api.apply(res, desired, field_manager=self._settings.field_manager)
        )
        self._count("apply", res)
        _log.info(
            "event=object_applied resource=%s object=%s/%s",
            res.label,
            meta["namespace"],
            meta["name"],
        )
        return applied

    async def _delete(self, res: Resource, obj: Mapping[str, Any]) -> None:
        meta = meta_of(obj)
        await self._call(
            lambda: self._api.delete(
                res, str(meta["name"]), str(meta["namespace"]), uid=str(meta.get("uid") or "")
            )
        )
        self._count("delete", res)

    async def _event(
        self, regarding: Mapping[str, Any], type_: str, reason: str, note: str
    ) -> None:
        try:
            await record_event(
                self._api,
                regarding=dict(regarding),
                type="Normal" if type_ == "Normal" else "Warning",
                reason=reason,
                note=note,
                action="Reconcile",
                clock=self._clock,
                reporting_instance=self._settings.instance,
            )
        except (ApiError, ValueError) as exc:  # an Event is never worth failing a reconcile
            _log.warning("event=k8s_event_failed reason=%s error=%r", reason, str(exc))
            return
        self._count("event", EVENT)
