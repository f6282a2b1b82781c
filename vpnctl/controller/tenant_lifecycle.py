"""The Tunnel's own lifecycle: created for a Cluster (unless it opts out), kept with our
finalizer and an owner reference to its Cluster, and finalized once the tenant side is
clean.

Owner references delete everything in the service cluster when the Cluster goes; the
finalizer (``vpnctl.io/cleanup``) is only for what they can't reach: the agent objects
in the tenant's own cluster (``TenantSide.cleanup``). A Cluster opts out of an automatic
Tunnel with the annotation (or label) ``vpnctl.io/auto-tunnel: "false"``; the controller
as a whole with ``--no-auto-tunnel`` (``TenantSettings.auto_tunnel``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from vpnctl.controller.interfaces import TenantRef, TenantSide
from vpnctl.controller.queue import Outcome
from vpnctl.controller.tenant_api import TenantCalls, meta_of
from vpnctl.controller.tenant_settings import AUTO_TUNNEL_ANNOTATION, FINALIZER
from vpnctl.kube import CLUSTER, SECRET, TUNNEL, AlreadyExists, KubeObject
from vpnctl.reconcile.errors import ReconcileError
from vpnctl.reconcile.names import CLUSTER_LABEL, MANAGED_BY, MANAGED_BY_LABEL
from vpnctl.reconcile.secrets import kubeconfig_secret_name, parse_kubeconfig_secret

_log = logging.getLogger(__name__)


def owner_ref(cluster: Mapping[str, Any]) -> dict[str, Any]:
    meta = meta_of(cluster)
    return {
        "apiVersion": CLUSTER.api_version,
        "kind": CLUSTER.kind,
        "name": meta.get("name"),
        "uid": meta.get("uid"),
    }


# Cluster API's pause: on a Cluster's spec (what `clusterctl move` sets) or as this
# annotation on the Cluster or on one of its objects (ours: the Tunnel).
PAUSED_ANNOTATION = "cluster.x-k8s.io/paused"


def is_paused(cluster: Mapping[str, Any] | None, tunnel: Mapping[str, Any] | None) -> bool:
    """Whether the tenant is paused: `clusterctl move` pauses each Cluster, then copies
    and deletes its objects, and counts on every provider to write nothing meanwhile."""
    spec = cluster.get("spec") if cluster is not None else None
    if isinstance(spec, Mapping) and spec.get("paused") is True:
        return True
    return any(
        PAUSED_ANNOTATION in (meta_of(obj).get("annotations") or {})
        for obj in (cluster, tunnel)
        if obj is not None
    )


def has_cluster_owner(obj: Mapping[str, Any], *, uid: str | None = None) -> bool:
    for ref in meta_of(obj).get("ownerReferences") or []:
        ours = ref.get("kind") == CLUSTER.kind and str(ref.get("apiVersion", "")).startswith(
            CLUSTER.group + "/"
        )
        if ours and (uid is None or ref.get("uid") == uid):
            return True
    return False


class TunnelLifecycle(TenantCalls):
    """Part of ``TenantReconciler``: creating, keeping and finalizing the Tunnel."""

    _side: TenantSide

    async def forget_tenant(self, key: TenantRef) -> None:
        raise NotImplementedError  # TenantReconciler's

    def _wants_tunnel(self, cluster: Mapping[str, Any]) -> bool:
        if not self._settings.auto_tunnel:
            return False
        meta = meta_of(cluster)
        for where in (meta.get("annotations") or {}, meta.get("labels") or {}):
            if str(where.get(AUTO_TUNNEL_ANNOTATION, "")).lower() == "false":
                return False
        return True

    async def _create_tunnel(self, cluster: KubeObject) -> None:
        meta = meta_of(cluster)
        name, namespace = str(meta["name"]), str(meta["namespace"])
        body: KubeObject = {
            "apiVersion": TUNNEL.api_version,
            "kind": TUNNEL.kind,
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {CLUSTER_LABEL: name, MANAGED_BY_LABEL: MANAGED_BY},
                "ownerReferences": [owner_ref(cluster)],
                "finalizers": [FINALIZER],
            },
            "spec": {**self._settings.tunnel_defaults, "clusterName": name},
        }
        try:
            await self._call(lambda: self._api.create(TUNNEL, body))
        except AlreadyExists:
            return
        self._count("create", TUNNEL)
        _log.info("event=tunnel_created tenant=%s/%s", namespace, name)
        await self._event(
            cluster,
            "Normal",
            "TunnelCreated",
            f"created Tunnel {namespace}/{name}; annotate the Cluster with "
            f'{AUTO_TUNNEL_ANNOTATION}: "false" to opt out',
        )

    async def _ensure_metadata(
        self, tunnel: KubeObject, cluster: Mapping[str, Any] | None
    ) -> KubeObject:
        """Our finalizer, and an owner reference to the Cluster (so a hand-made Tunnel
        goes with its Cluster too). One conditional merge patch, only when needed."""
        meta = meta_of(tunnel)
        finalizers = list(meta.get("finalizers") or [])
        patch: dict[str, Any] = {}
        if FINALIZER not in finalizers:
            patch["finalizers"] = [*finalizers, FINALIZER]
        if cluster is not None and not has_cluster_owner(tunnel, uid=meta_of(cluster).get("uid")):
            owners = [
                ref
                for ref in meta.get("ownerReferences") or []
                if not (ref.get("kind") == CLUSTER.kind and ref.get("name") == meta.get("name"))
            ]
            patch["ownerReferences"] = [*owners, owner_ref(cluster)]
        if not patch:
            return tunnel
        patch["resourceVersion"] = meta.get("resourceVersion")
        updated = await self._call(
            lambda: self._api.patch_merge(
                TUNNEL, str(meta["name"]), {"metadata": patch}, namespace=str(meta["namespace"])
            )
        )
        self._count("patch", TUNNEL)
        return updated

    async def _finalize(self, key: TenantRef, tunnel: KubeObject) -> tuple[Outcome, str]:
        meta = meta_of(tunnel)
        finalizers = list(meta.get("finalizers") or [])
        if FINALIZER not in finalizers:
            await self.forget_tenant(key)
            return Outcome(), "ok"
        secret = await self._get(SECRET, kubeconfig_secret_name(key.cluster), key.namespace)
        try:
            text: str | None = parse_kubeconfig_secret(
                secret, namespace=key.namespace, cluster_name=key.cluster
            ).text
        except ReconcileError:
            text = None  # nothing to reach the tenant cluster with; the tenant side decides
        try:
            async with asyncio.timeout(self._settings.tenant_side_timeout):
                done = await self._side.cleanup(tenant=key, kubeconfig_text=text)
        except Exception as exc:  # the tenant's trouble must not stop ours
            _log.warning("event=tenant_cleanup_failed tenant=%s error=%r", key, str(exc))
            done = False
        if not done:
            _log.info("event=tenant_cleanup_pending tenant=%s", key)
            return Outcome(retry=True), "retry"
        await self.forget_tenant(key)
        patch = {
            "metadata": {
                "finalizers": [f for f in finalizers if f != FINALIZER],
                "resourceVersion": meta.get("resourceVersion"),
            }
        }
        await self._call(
            lambda: self._api.patch_merge(TUNNEL, key.cluster, patch, namespace=key.namespace)
        )
        self._count("patch", TUNNEL)
        _log.info("event=tunnel_finalized tenant=%s", key)
        return Outcome(), "ok"
