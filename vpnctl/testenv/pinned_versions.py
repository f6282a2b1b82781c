"""What ``vpnctl.testenv.build`` builds: every pinned version and the Go packages each
wrapper module needs. Bumping a version is an edit here; how it is built stays in
``build``."""

from __future__ import annotations

KUBERNETES_VERSION = "v1.34.4"
# The k8s.io staging modules (api, apimachinery, client-go, ...) are tagged v0.<minor>.<patch>.
STAGING_VERSION = "v0." + KUBERNETES_VERSION.removeprefix("v1.")
ETCD_VERSION = "v3.6.16"
HELM_VERSION = "v3.21.4"
CONTROLLER_TOOLS_VERSION = "v0.23.0"
# The newest Cluster API release the proxy serves whose api/v1beta1 package is the
# storage version: a single-version CRD needs no conversion webhook, and vpnctl
# consumes cluster.x-k8s.io/v1beta1.
CLUSTER_API_VERSION = "v1.8.4"
METRICS_SERVER_VERSION = "v0.8.0"
# Konnectivity (apiserver-network-proxy), the peer path vpnctl is benchmarked against;
# its server and agent share one release tag with the konnectivity-client module.
KONNECTIVITY_VERSION = "v0.33.0"

# Staging modules of k8s.io/kubernetes; the main module replaces them with ./staging/...
# so a wrapper module must pin each one to the matching published version.
STAGING_MODULES = (
    "api",
    "apiextensions-apiserver",
    "apimachinery",
    "apiserver",
    "cli-runtime",
    "client-go",
    "cloud-provider",
    "cluster-bootstrap",
    "code-generator",
    "component-base",
    "component-helpers",
    "controller-manager",
    "cri-api",
    "cri-client",
    "csi-translation-lib",
    "dynamic-resource-allocation",
    "endpointslice",
    "externaljwt",
    "kms",
    "kube-aggregator",
    "kube-controller-manager",
    "kube-proxy",
    "kube-scheduler",
    "kubectl",
    "kubelet",
    "metrics",
    "mount-utils",
    "pod-security-admission",
    "sample-apiserver",
    "sample-cli-plugin",
    "sample-controller",
)

# The Cluster API packages whose types become the cluster.x-k8s.io CRDs: Cluster,
# Machine, MachineSet, MachineDeployment, MachineHealthCheck, ClusterClass and
# MachinePool (still under exp/ in v1.8).
CAPI_PACKAGES = (
    "sigs.k8s.io/cluster-api/api/v1beta1",
    "sigs.k8s.io/cluster-api/exp/api/v1beta1",
)
