"""Real Kubernetes for the tests and the lab: built from Go modules, run as processes.

- ``build``: ``ensure_binaries()`` builds (or finds) kube-apiserver, etcd, kubectl,
  kube-controller-manager, helm, controller-gen and the Cluster API CRDs.
- ``cluster``: ``ServiceCluster`` / ``TenantCluster`` start etcd + kube-apiserver
  (+ kube-controller-manager) with client-certificate auth and tear them down.
- ``helm``: ``helm_template_dry_run()`` checks a chart against a real apiserver.

Nothing here imports kubernetes_asyncio (only ``vpnctl.kube`` may); it drives kubectl.
"""

from vpnctl.testenv.build import (
    CLUSTER_API_VERSION,
    ETCD_VERSION,
    HELM_VERSION,
    KUBERNETES_VERSION,
    Binaries,
    BuildError,
    ensure_binaries,
)
from vpnctl.testenv.cluster import (
    ClusterStartError,
    KubeCluster,
    KubectlError,
    ServiceCluster,
    TenantCluster,
)
from vpnctl.testenv.helm import helm_template, helm_template_dry_run, server_dry_run

__all__ = [
    "CLUSTER_API_VERSION",
    "ETCD_VERSION",
    "HELM_VERSION",
    "KUBERNETES_VERSION",
    "Binaries",
    "BuildError",
    "ClusterStartError",
    "KubeCluster",
    "KubectlError",
    "ServiceCluster",
    "TenantCluster",
    "ensure_binaries",
    "helm_template",
    "helm_template_dry_run",
    "server_dry_run",
]
