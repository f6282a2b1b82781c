"""Part of ``TenantReconciler``: the tenant cluster's side of a pass, through
``TenantSide`` with CAPI's kubeconfig (the agent objects installed, the nodes' CSRs
signed, what was signed reported back). Split from tenant_reconciler.py by job."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from vpnctl.api import ConditionStatus
from vpnctl.controller.interfaces import (
    TenantRef,
    TenantSide,
    TenantSideResult,
)
from vpnctl.controller.revocation_store import reported_certificates
from vpnctl.controller.tenant_api import TenantCalls
from vpnctl.controller.tenant_pki import TenantPKI
from vpnctl.kube import (
    SECRET,
    KubeObject,
)
from vpnctl.reconcile.agent_objects import tenant_objects
from vpnctl.reconcile.agentdocs import node_role_config, service_remotes
from vpnctl.reconcile.errors import ReconcileError
from vpnctl.reconcile.revocation_book import IssuedCert
from vpnctl.reconcile.secrets import kubeconfig_secret_name, parse_kubeconfig_secret
from vpnctl.reconcile.tenant_plan import TenantPlan

_log = logging.getLogger(__name__)


class TenantSidePass(TenantCalls):
    """``_ensure_tenant_side`` and what it reads of the reconciler."""

    _side: TenantSide
    _side_degraded: dict[TenantRef, tuple[str, str] | None]

    async def _ensure_tenant_side(
        self,
        key: TenantRef,
        plan: TenantPlan,
        keys: TenantPKI,
        *,
        service: Mapping[str, Any],
        machines: Sequence[KubeObject],
    ) -> tuple[tuple[ConditionStatus, str, str], bool, tuple[IssuedCert, ...]]:
        """AgentInstalled as (status, reason, message), whether to retry with backoff, and
        the node certificates the tenant side reported.

        With spec.agent.install false (the agent installed by charts/agent, or by hand)
        nothing is installed, but the tenant side still runs: its CSR loop signs the nodes'
        certificates and seals their tls-crypt-v2 keys, which such an agent needs as much
        as ours, and reports what it signed so revocation covers it."""
        tenant = plan.tenant
        install = tenant.spec.install_agent
        secret = await self._get(SECRET, kubeconfig_secret_name(key.cluster), key.namespace)
        try:
            kubeconfig = parse_kubeconfig_secret(
                secret, namespace=key.namespace, cluster_name=key.cluster
            )
            desired: Sequence[dict[str, Any]] = ()
            if install:
                role_config = node_role_config(
                    tenant=tenant,
                    settings=self._settings.build,
                    remotes=service_remotes(
                        service, node_addresses=self._settings.build.node_port_addresses
                    ),
                    # The nodes ask this apiserver for their certificates (agent/bootstrap.py).
                    bootstrap_server=kubeconfig.server,
                )
                desired = tenant_objects(
                    cluster_name=tenant.cluster_name,
                    settings=self._settings.build,
                    role_config=role_config,
                    ca_pem=keys.ca.cert_pem,
                    agent_resources=tenant.spec.resources.agent,
                    agent_image=tenant.spec.agent_image,
                )
        except ReconcileError as exc:
            if not install:
                return (
                    _agent_disabled(f"nodes' certificates cannot be signed: {exc.message}"),
                    True,
                    (),
                )
            return ("False", exc.reason, exc.message), False, ()
        try:
            async with asyncio.timeout(self._settings.tenant_side_timeout):
                result: TenantSideResult = await self._side.ensure(
                    tenant=key,
                    kubeconfig_text=kubeconfig.text,
                    desired_objects=desired,
                    ca=keys.ca,
                    machines=machines,
                    tls_crypt_server_key=keys.tls_crypt_server_key,
                )
            self._side_degraded[key] = result.degraded
        except TimeoutError:
            result = TenantSideResult(
                installed=False,
                reason="TenantUnreachable",
                message=(
                    f"the tenant apiserver {kubeconfig.server} did not answer within "
                    f"{self._settings.tenant_side_timeout:g}s; retrying with backoff"
                ),
            )
        except Exception as exc:  # the tenant's trouble must not stop the service side
            _log.warning("event=tenant_side_failed tenant=%s error=%r", key, str(exc))
            result = TenantSideResult(
                installed=False,
                reason="TenantSideError",
                message=f"installing the agent in the tenant cluster failed: {exc}",
            )
        signed = reported_certificates(result, ca=keys.ca)
        if not install:
            if result.installed:
                return _agent_disabled("the nodes' certificate requests are signed"), False, signed
            return (
                _agent_disabled(f"nodes' certificates cannot be signed: {result.message}"),
                True,
                signed,
            )
        if result.installed:
            return ("True", result.reason or "Installed", result.message), False, signed
        return ("False", result.reason or "NotInstalled", result.message), True, signed


def _agent_disabled(detail: str) -> tuple[ConditionStatus, str, str]:
    """AgentInstalled while spec.agent.install is false: not ours to install."""
    return (
        "True",
        "Disabled",
        f"spec.agent.install is false: the node agent is not managed; {detail}",
    )
