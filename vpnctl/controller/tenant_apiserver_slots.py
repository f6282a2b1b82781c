"""Each hosted apiserver pod's own tunnel identity: the slot pass of a tenant reconcile.

The rules are pure (reconcile/apiserver_slots.py); this is their I/O: list the pods of
every Deployment labelled `vpnctl.io/apiserver-for: <cluster>`, write each new pod's slot
on it (annotation `vpnctl.io/apiserver-slot`, which the sidecar reads through a
downward-API file; the pod update also makes kubelet refresh that file now), and keep
one certificate per held slot beyond 0 in its own Secret, issued for the pod that holds
the slot (its uid on the Secret). A slot that passes to another pod gets a new
certificate, so the serial the server admits for it is that pod's alone.

The pods' annotations and the Secrets are the whole record: a restarted controller reads
them back and moves nobody.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import certs
from vpnctl.controller.tenant_api import meta_of
from vpnctl.controller.tenant_pki import PKIIssuance, TenantPKI, client_secret_maker
from vpnctl.kube import DEPLOYMENT, POD, ApiError, KubeObject
from vpnctl.reconcile.allocation import Allocation
from vpnctl.reconcile.apiserver_slots import (
    SLOT_ANNOTATION,
    ApiserverPod,
    ApiserverReplicas,
    Slot,
    parse_slot,
    plan_slots,
    slot_addresses,
)
from vpnctl.reconcile.names import TenantNames
from vpnctl.reconcile.service_objects import (
    SLOT_HOLDER_ANNOTATION,
)
from vpnctl.reconcile.sidecar_objects import (
    ATTACH_SIDECAR_LABEL,
)
from vpnctl.reconcile.tenant_spec import TenantSpec

_log = logging.getLogger(__name__)

_FINISHED = ("Succeeded", "Failed")


class ApiserverSlotPasses(PKIIssuance):
    """Part of ``TenantReconciler``: the apiserver pods' slots and their certificates."""

    async def _apiserver_pods(self, tenant: TenantSpec) -> list[ApiserverPod]:
        """The pods of every labelled apiserver Deployment that may still run: a pod being
        deleted keeps its slot until it is gone (it serves until its grace period ends)."""
        selector = f"{ATTACH_SIDECAR_LABEL}={tenant.cluster_name}"
        deployments, _ = await self._call(
            lambda: self._api.list(DEPLOYMENT, tenant.namespace, label_selector=selector)
        )
        pods: dict[str, ApiserverPod] = {}
        for deployment in deployments:
            match = ((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels")
            if not isinstance(match, dict) or not match:
                continue
            pod_selector = ",".join(f"{k}={v}" for k, v in sorted(match.items()))

            async def list_pods(s: str = pod_selector) -> tuple[list[KubeObject], str]:
                return await self._api.list(POD, tenant.namespace, label_selector=s)

            listed, _ = await self._call(list_pods)
            for pod in listed:
                meta = meta_of(pod)
                phase = (pod.get("status") or {}).get("phase")
                if phase in _FINISHED or not meta.get("name") or not meta.get("uid"):
                    continue
                name = str(meta["name"])
                pods[name] = ApiserverPod(
                    name=name, uid=str(meta["uid"]), slot=parse_slot(meta.get("annotations"))
                )
        return list(pods.values())

    async def _ensure_apiserver_slots(
        self,
        tenant: TenantSpec,
        names: TenantNames,
        keys: TenantPKI,
        *,
        allocations: Sequence[Allocation],
        now: datetime,
    ) -> ApiserverReplicas:
        pods = await self._apiserver_pods(tenant)
        addresses = slot_addresses(
            tenant.spec.tunnel_cidr,
            apiserver_ip=tenant.spec.apiserver_ip,
            taken=[a.tunnel_ip for a in allocations],
        )
        plan = plan_slots(pods, addresses=addresses)
        for pod_name, index in sorted(plan.annotate.items()):
            await self._annotate_slot(tenant.namespace, pod_name, index)
        if plan.waiting:
            _log.warning(
                "event=apiserver_pods_without_slot tenant=%s pods=%s slots=%d action=%r",
                tenant.key,
                ",".join(plan.waiting),
                sum(1 for a in addresses if a is not None),
                "their sidecars wait for a slot; run fewer apiserver replicas",
            )
        serials: dict[str, str] = {}
        renewals: list[datetime] = []
        fraction = tenant.spec.certificates.renew_fraction
        for slot in plan.slots:
            if slot.index == 0:
                continue  # slot 0's certificate is the one _ensure_pki keeps
            leaf = await self._ensure_slot_certificate(tenant, names, keys, slot, now=now)
            serials[slot.common_name] = format(certs.cert_info(leaf.cert_pem).serial, "x")
            renewals.append(certs.renew_at(leaf.cert_pem, renew_fraction=fraction))
        return ApiserverReplicas(
            slots=plan.slots, serials=serials, renew_at=min(renewals, default=None)
        )

    async def _annotate_slot(self, namespace: str, pod_name: str, index: int) -> None:
        patch: dict[str, Any] = {"metadata": {"annotations": {SLOT_ANNOTATION: str(index)}}}

        async def write() -> KubeObject:
            return await self._api.patch_merge(POD, pod_name, patch, namespace=namespace)

        try:
            await self._call(write)
        except ApiError as exc:  # gone meanwhile: the next pass plans without it
            _log.info("event=apiserver_slot_skipped pod=%s error=%r", pod_name, str(exc))
            return
        self._count("patch", POD)
        _log.info("event=apiserver_slot_assigned pod=%s slot=%d", pod_name, index)

    async def _ensure_slot_certificate(
        self,
        tenant: TenantSpec,
        names: TenantNames,
        keys: TenantPKI,
        slot: Slot,
        *,
        now: datetime,
    ) -> certs.Issued:
        ca, tc_key = keys.ca, keys.tls_crypt_server_key

        def new_client() -> certs.Issued:
            return certs.new_client_cert(
                ca, common_name=slot.common_name, now=now, lifetime=tenant.spec.certificates.client
            )

        client_secret = client_secret_maker(
            tenant, ca, tc_key, now=now, slot=slot.index, holder_uid=slot.pod_uid
        )

        def passed_on(live: KubeObject | None) -> str | None:
            holder = (meta_of(live or {}).get("annotations") or {}).get(SLOT_HOLDER_ANNOTATION)
            if live is None or holder == slot.pod_uid:
                return None
            return f"slot {slot.index} passed to pod {slot.pod}"

        return await self._ensure_leaf(
            tenant,
            names.apiserver_slot_secret(slot.index),
            ca,
            "apiserver",
            new_client,
            client_secret,
            now=now,
            reissue=passed_on,
        )
