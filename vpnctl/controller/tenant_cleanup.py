"""Cleaning a tenant cluster: delete every object of ours, found by label.

It deletes our namespaces (which takes the namespaced objects with them), our
cluster-scoped objects, and anything namespaced of ours outside our namespaces. The
desired set is not needed, so it works after a restart. Node CSRs are the nodes', not
ours: they are left alone.
"""

from __future__ import annotations

import logging

from vpnctl.controller.interfaces import TenantRef
from vpnctl.controller.tenant_state import TenantCalls
from vpnctl.kube import NAMESPACE, ApiError, Kube, KubeconfigError, KubeObject, Resource
from vpnctl.reconcile.tenant_refs import KNOWN_RESOURCES, label_selector, live_ref

_log = logging.getLogger(__name__)


async def clean_tenant(calls: TenantCalls, tenant: TenantRef, kubeconfig_text: str) -> bool:
    """Delete our objects in the tenant cluster; True once none is left. Errors are
    logged and give False, so the caller tries again later."""
    try:
        kube = await calls.connect(tenant, kubeconfig_text)
    except KubeconfigError as exc:
        _log.warning("event=tenant_cleanup_failed tenant=%s error=%r", tenant, str(exc))
        return False
    async with kube:
        try:
            remaining = await delete_ours(calls, kube, tenant)
        except ApiError as exc:
            _log.warning("event=tenant_cleanup_failed tenant=%s error=%r", tenant, str(exc))
            return False
    if remaining:
        _log.info("event=tenant_cleanup_pending tenant=%s remaining=%d", tenant, remaining)
        return False
    _log.info("event=tenant_cleanup_done tenant=%s", tenant)
    return True


async def delete_ours(calls: TenantCalls, kube: Kube, tenant: TenantRef) -> int:
    """Delete what carries our labels; returns how many objects still existed."""
    selector = label_selector(tenant.cluster)

    async def listed(res: Resource) -> list[KubeObject]:
        items, _ = await calls.retrying(lambda: kube.list(res, label_selector=selector))
        return items

    async def delete(res: Resource, obj: KubeObject) -> None:
        meta = obj.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return
        name, namespace = str(meta.get("name")), meta.get("namespace")
        await calls.retrying(lambda: kube.delete(res, name, namespace))
        _log.info(
            "event=tenant_object_deleted tenant=%s object=%r", tenant, str(live_ref(res, obj))
        )

    namespaces = await listed(NAMESPACE)
    ours = {str((ns.get("metadata") or {}).get("name")) for ns in namespaces}
    remaining = 0
    for res in KNOWN_RESOURCES:
        if res == NAMESPACE:
            continue
        for obj in await listed(res):
            remaining += 1
            namespace = (obj.get("metadata") or {}).get("namespace")
            if not res.namespaced or namespace not in ours:
                await delete(res, obj)
    for ns in namespaces:
        remaining += 1
        await delete(NAMESPACE, ns)
    return remaining
