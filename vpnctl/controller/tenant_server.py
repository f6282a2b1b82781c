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
from vpnctl.controller.tenant_settings import (
    APISERVER_CONFIG_ANNOTATION,
    MAX_SERIALS_PER_NODE,
    SERVER_CONFIG_ANNOTATION,
)
from vpnctl.kube import CONFIG_MAP, DEPLOYMENT, POD, ApiError, KubeObject
from vpnctl.reconcile.allocation import Allocation, record_serial
from vpnctl.reconcile.apiserver_slots import ApiserverReplicas
from vpnctl.reconcile.diff import needs_update
from vpnctl.reconcile.names import COMPONENT_SERVER, DESIRED_HASH_ANNOTATION, selector_labels
from vpnctl.reconcile.service_objects import (
    server_config_map,
)
from vpnctl.reconcile.sidecar_objects import (
    ATTACH_SIDECAR_LABEL,
    apiserver_sidecar,
    sidecar_apply_body,
)
from vpnctl.reconcile.tenant_plan import TenantPlan

_log = logging.getLogger(__name__)


class ServerConfig(TenantCalls):
    """Part of ``TenantReconciler``: the server ConfigMap, pod kicks, the sidecar."""

    async def _attach_sidecar(self, plan: TenantPlan, apiserver_config: KubeObject) -> None:
        """Attach the apiserver sidecar to every Deployment labelled for this Cluster
        (`vpnctl.io/apiserver-for: <cluster>`): the hosted kube-apiserver opts in. Its pods
        are nudged like the server's when APISERVER_CONFIG (their routes: a node with a new
        address) changed, so the sidecar has the new routes in seconds."""
        tenant = plan.tenant
        selector = f"{ATTACH_SIDECAR_LABEL}={tenant.cluster_name}"
        deployments, _ = await self._call(
            lambda: self._api.list(DEPLOYMENT, tenant.namespace, label_selector=selector)
        )
        attachment = apiserver_sidecar(
            tenant=tenant, settings=self._settings.build, role_config=plan.apiserver_role_config
        )
        for deployment in deployments:
            match = ((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels")
            if isinstance(match, dict) and match:
                await self._kick_pods(
                    tenant.namespace,
                    ",".join(f"{k}={v}" for k, v in sorted(match.items())),
                    annotation=APISERVER_CONFIG_ANNOTATION,
                    config_map=apiserver_config,
                )
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
        replicas: ApiserverReplicas | None = None,
    ) -> KubeObject:
        """REPLICAS: the apiserver pods' slots and their serials (tenant_apiserver_slots)."""
        desired = server_config_map(
            tenant=plan.tenant,
            role_config=plan.server_role_config,
            desired=plan.desired_state(
                apiserver_serial=apiserver_serial,
                allocations=allocations,
                apiserver_slots=replicas.slots if replicas is not None else (),
                replica_serials=replicas.serials if replicas is not None else None,
            ),
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
        selector = ",".join(
            f"{k}={v}"
            for k, v in selector_labels(
                cluster_name=tenant.cluster, component=COMPONENT_SERVER
            ).items()
        )
        await self._kick_pods(
            tenant.namespace, selector, annotation=SERVER_CONFIG_ANNOTATION, config_map=config_map
        )

    async def _kick_pods(
        self, namespace: str, selector: str, *, annotation: str, config_map: KubeObject
    ) -> None:
        """Set ANNOTATION to CONFIG_MAP's version on each pod SELECTOR matches that does not
        have it yet: a pod update makes kubelet sync the pod, and with it the ConfigMap
        volume, now rather than on its next periodic sync (up to a minute and more)."""
        version = config_map["metadata"]["annotations"][DESIRED_HASH_ANNOTATION]
        pods, _ = await self._call(lambda: self._api.list(POD, namespace, label_selector=selector))
        for pod in pods:
            meta = meta_of(pod)
            if is_deleting(pod) or (meta.get("annotations") or {}).get(annotation) == version:
                continue
            patch = {"metadata": {"annotations": {annotation: version}}}
            name = str(meta["name"])

            async def kick(name: str = name, patch: dict[str, Any] = patch) -> KubeObject:
                return await self._api.patch_merge(POD, name, patch, namespace=namespace)

            try:
                await self._call(kick)
            except ApiError as exc:  # a pod going away: the next one mounts the new config
                _log.info("event=pod_kick_skipped pod=%s error=%r", meta["name"], str(exc))
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
