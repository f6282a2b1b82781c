"""The openvpn server's config and its pods, and the apiserver sidecar attachment.

The server ConfigMap (server.json, desired.json, crl.pem) is applied only when it
changed, and *then* every server pod gets the ConfigMap's hash in an annotation
(``vpnctl.io/server-config``): kubelet refreshes a ConfigMap volume only on its periodic
pod sync (up to a minute plus its cache TTL), while a pod update makes it sync that pod
now. That is what makes a revocation take about two seconds. The pod template is not
touched: that would roll the Deployment.

The hosted kube-apiserver opts in to the tunnel with the label
``vpnctl.io/apiserver-for: <cluster>`` on its Deployment; the sidecar is applied onto
every such Deployment with our field manager.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

from vpnctl.controller import pki_decisions as pki
from vpnctl.controller.interfaces import TenantRef
from vpnctl.controller.tenant_api import TenantCalls, is_deleting, meta_of
from vpnctl.controller.tenant_settings import MAX_SERIALS_PER_NODE, SERVER_CONFIG_ANNOTATION
from vpnctl.kube import CONFIG_MAP, DEPLOYMENT, POD, ApiError, KubeObject
from vpnctl.reconcile.allocation import Allocation, record_serial
from vpnctl.reconcile.diff import needs_update
from vpnctl.reconcile.names import COMPONENT_SERVER, DESIRED_HASH_ANNOTATION, selector_labels
from vpnctl.reconcile.service_objects import (
    ATTACH_SIDECAR_LABEL,
    apiserver_sidecar,
    server_config_map,
    sidecar_apply_body,
)
from vpnctl.reconcile.tenant_plan import TenantPlan

_log = logging.getLogger(__name__)


class ServerConfig(TenantCalls):
    """Part of ``TenantReconciler``: the server ConfigMap, pod kicks, the sidecar."""

    async def _attach_sidecar(self, plan: TenantPlan) -> None:
        """Attach the apiserver sidecar to every Deployment labelled for this Cluster
        (`vpnctl.io/apiserver-for: <cluster>`): the hosted kube-apiserver opts in."""
        tenant = plan.tenant
        selector = f"{ATTACH_SIDECAR_LABEL}={tenant.cluster_name}"
        deployments, _ = await self._call(
            lambda: self._api.list(DEPLOYMENT, tenant.namespace, label_selector=selector)
        )
        attachment = apiserver_sidecar(
            tenant=tenant, settings=self._settings.build, role_config=plan.apiserver_role_config
        )
        for deployment in deployments:
            body = sidecar_apply_body(deployment, attachment=attachment)
            if body is None:
                continue

            async def apply(body: KubeObject = body) -> KubeObject:
                return await self._api.apply(
                    DEPLOYMENT, body, field_manager=self._settings.field_manager
                )

            await self._call(apply)
            self._count("apply", DEPLOYMENT)
            _log.info(
                "event=apiserver_sidecar_attached tenant=%s/%s deployment=%s",
                tenant.namespace,
                tenant.cluster_name,
                body["metadata"]["name"],
            )

    async def _apply_server_config(
        self,
        plan: TenantPlan,
        apiserver_serial: str,
        crl: pki.CRLPlan,
        *,
        allocations: Sequence[Allocation],
        live: KubeObject | None,
    ) -> KubeObject:
        desired = server_config_map(
            tenant=plan.tenant,
            role_config=plan.server_role_config,
            desired=plan.desired_state(apiserver_serial=apiserver_serial, allocations=allocations),
            crl_pem=crl.pem,
        )
        if not needs_update(live, desired):
            assert live is not None
            return live
        applied = await self._ensure(CONFIG_MAP, desired, live=live, read=False)
        await self._kick_server_pods(
            TenantRef(namespace=plan.tenant.namespace, cluster=plan.tenant.cluster_name), desired
        )
        return applied

    async def _kick_server_pods(self, tenant: TenantRef, config_map: KubeObject) -> None:
        """Make kubelet refresh the server pods' ConfigMap volume now (see step 4)."""
        version = config_map["metadata"]["annotations"][DESIRED_HASH_ANNOTATION]
        selector = ",".join(
            f"{k}={v}"
            for k, v in selector_labels(
                cluster_name=tenant.cluster, component=COMPONENT_SERVER
            ).items()
        )
        pods, _ = await self._call(
            lambda: self._api.list(POD, tenant.namespace, label_selector=selector)
        )
        for pod in pods:
            meta = meta_of(pod)
            if (
                is_deleting(pod)
                or (meta.get("annotations") or {}).get(SERVER_CONFIG_ANNOTATION) == version
            ):
                continue
            patch = {"metadata": {"annotations": {SERVER_CONFIG_ANNOTATION: version}}}
            name = str(meta["name"])

            async def kick(name: str = name, patch: dict[str, Any] = patch) -> KubeObject:
                return await self._api.patch_merge(POD, name, patch, namespace=tenant.namespace)

            try:
                await self._call(kick)
            except ApiError as exc:  # a pod going away: the next one mounts the new config
                _log.info("event=server_pod_kick_skipped pod=%s error=%r", meta["name"], str(exc))
                continue
            self._count("patch", POD)


def record_signed(
    allocations: Sequence[Allocation], signed: Sequence[tuple[str, str]]
) -> tuple[Allocation, ...]:
    """``allocations`` with the serials the tenant side signed, newest last, at most
    MAX_SERIALS_PER_NODE per node."""
    machine_of = {a.node: a.machine for a in allocations}
    out = tuple(allocations)
    for node, serial in signed:
        machine = machine_of.get(node)
        if machine is None or pki.parse_serial(serial) is None:
            continue
        out = record_serial(out, machine=machine, serial=serial)
    return tuple(
        dataclasses.replace(a, serials=a.serials[-MAX_SERIALS_PER_NODE:])
        if len(a.serials) > MAX_SERIALS_PER_NODE
        else a
        for a in out
    )
