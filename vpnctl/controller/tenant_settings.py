"""What the reconcile pass is configured with, and the names it writes on objects.

Apart from ``controller/tenant_reconciler.py`` so every part of the pass (``tenant_api``,
``tenant_lifecycle``, ``tenant_pki``, ``tenant_server``, ``tenant_status``,
``tenant_revocations``) can import them without importing the pass itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from vpnctl.controller import pki_decisions as pki
from vpnctl.controller.budgets import DEFAULT_TENANT_SIDE_TIMEOUT
from vpnctl.reconcile.image_rollout import RolloutPolicy
from vpnctl.reconcile.settings import Settings

FINALIZER = "vpnctl.io/cleanup"
# On a Cluster: "false" means no Tunnel is created for it automatically.
AUTO_TUNNEL_ANNOTATION = "vpnctl.io/auto-tunnel"
# On server pods: the server ConfigMap's hash, bumped so kubelet refreshes the volume now.
SERVER_CONFIG_ANNOTATION = "vpnctl.io/server-config"
# The same nudge for the hosted apiserver's pods (the sidecar's routes).
APISERVER_CONFIG_ANNOTATION = "vpnctl.io/apiserver-config"
# How many serials per node status keeps: certificates are renewed at 2/3 of their
# lifetime, so older ones than this have long expired.
MAX_SERIALS_PER_NODE = 8


@dataclass(frozen=True, kw_only=True)
class TenantSettings:
    """What ``TenantReconciler`` needs beyond the object builders' ``Settings``."""

    build: Settings
    # Identity of this controller replica, for Events (e.g. the pod name).
    instance: str
    field_manager: str = "vpnctl"
    # Create a Tunnel for every Cluster (a Cluster still opts out with the annotation).
    auto_tunnel: bool = True
    # spec of auto-created Tunnels, besides clusterName (e.g. {"expose": {...}}).
    tunnel_defaults: Mapping[str, Any] = field(default_factory=dict)
    crl_lifetime: timedelta = pki.DEFAULT_CRL_LIFETIME
    # Upper bounds for the two calls that leave the service cluster.
    tenant_side_timeout: float = DEFAULT_TENANT_SIDE_TIMEOUT
    observe_timeout: float = 5.0
    # How a new --agent-image reaches the tenants (controller/tenant_image.py).
    image_rollout: RolloutPolicy = field(default_factory=RolloutPolicy)
    # Retries of a single API call on transport errors and 429 (Retry-After honoured).
    api_attempts: int = 3
