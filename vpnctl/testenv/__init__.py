"""Real Kubernetes for the tests and the lab: built from Go modules, run as processes.

- ``build``: ``ensure_binaries()`` builds (or finds) kube-apiserver, etcd, kubectl,
  kube-controller-manager, helm, controller-gen and the Cluster API CRDs; with
  ``with_nodes`` also kubelet, kube-proxy, kube-scheduler and metrics-server; with
  ``with_konnectivity`` the Konnectivity server and agent (``pinned_versions`` has every
  version).
- ``konnectivity``: ``KonnectivityServer`` / ``KonnectivityAgent``, the benchmark's
  peer path, and the apiserver's egress selector for them.
- ``cluster``: ``ServiceCluster`` / ``TenantCluster`` start etcd + kube-apiserver
  (+ kube-controller-manager, + kube-scheduler) with client-certificate auth and tear
  them down.
- ``helm``: ``helm_template_dry_run()`` checks a chart against a real apiserver.

Nothing here imports kubernetes_asyncio (only ``vpnctl.kube`` may); it drives kubectl.

The names below are imported lazily, so ``python -m vpnctl.testenv.build`` doesn't
import its own module twice.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vpnctl.testenv.build import Binaries, BuildError, ensure_binaries
    from vpnctl.testenv.cluster import (
        ClusterStartError,
        KubeCluster,
        ServiceCluster,
        TenantCluster,
    )
    from vpnctl.testenv.cluster_options import KubectlError, LaunchOptions
    from vpnctl.testenv.helm import helm_template, helm_template_dry_run, server_dry_run
    from vpnctl.testenv.pinned_versions import (
        CLUSTER_API_VERSION,
        ETCD_VERSION,
        HELM_VERSION,
        KONNECTIVITY_VERSION,
        KUBERNETES_VERSION,
    )

_EXPORTS = {
    "CLUSTER_API_VERSION": "pinned_versions",
    "ETCD_VERSION": "pinned_versions",
    "HELM_VERSION": "pinned_versions",
    "KONNECTIVITY_VERSION": "pinned_versions",
    "KUBERNETES_VERSION": "pinned_versions",
    "Binaries": "build",
    "BuildError": "build",
    "ensure_binaries": "build",
    "ClusterStartError": "cluster",
    "KubeCluster": "cluster",
    "KubectlError": "cluster_options",
    "LaunchOptions": "cluster_options",
    "ServiceCluster": "cluster",
    "TenantCluster": "cluster",
    "helm_template": "helm",
    "helm_template_dry_run": "helm",
    "server_dry_run": "helm",
}

__all__ = [
    "CLUSTER_API_VERSION",
    "ETCD_VERSION",
    "HELM_VERSION",
    "KONNECTIVITY_VERSION",
    "KUBERNETES_VERSION",
    "Binaries",
    "BuildError",
    "ClusterStartError",
    "KubeCluster",
    "KubectlError",
    "LaunchOptions",
    "ServiceCluster",
    "TenantCluster",
    "ensure_binaries",
    "helm_template",
    "helm_template_dry_run",
    "server_dry_run",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vpnctl.testenv' has no attribute {name!r}")
    return getattr(importlib.import_module(f"vpnctl.testenv.{module}"), name)
