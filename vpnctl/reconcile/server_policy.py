"""The NetworkPolicy in front of a tenant's openvpn server pods.

The server pod has two ports: the VPN port, which every node of the tenant dials from
the internet (so it is open to anyone: openvpn's tls-crypt-v2 and the tenant CA decide
who gets in), and the HTTP port with /metrics, /healthz and /readyz, which tells
anyone who can reach it the tenant's node names, tunnel addresses and kubelet
reachability. So the HTTP port is open only to:

- the controller's pods (`Settings.controller_namespace`, selected by the labels the
  chart gives them), which scrape the per-node table for the Tunnel's status;
- the monitoring namespaces (`Settings.metrics_namespaces`, e.g. where Prometheus runs).

Everything else towards the pod is dropped by a CNI that enforces NetworkPolicy. The
kubelet's own probes come from the node itself, which the common CNIs (Calico, Cilium)
always admit.

The apiserver sidecar gets no policy of ours: it lives in the tenant's kube-apiserver
pod, whose ingress belongs to the hosted control plane, not to vpnctl.
"""

from __future__ import annotations

from typing import Any

from vpnctl.api import KubeObject
from vpnctl.reconcile.diff import stamp
from vpnctl.reconcile.names import (
    COMPONENT_SERVER,
    TenantNames,
    labels,
    selector_labels,
    tunnel_owner_reference,
)
from vpnctl.reconcile.settings import Settings
from vpnctl.reconcile.tenant_spec import TenantSpec

# Labels every controller pod of the chart carries (charts/vpnctl/templates/_helpers.tpl,
# vpnctl.controller.selectorLabels, less the release instance).
CONTROLLER_POD_LABELS = {
    "app.kubernetes.io/component": "controller",
    "app.kubernetes.io/name": "vpnctl",
}
_NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def _namespace(name: str) -> dict[str, Any]:
    return {"matchLabels": {_NAMESPACE_NAME_LABEL: name}}


def server_network_policy(*, tenant: TenantSpec, settings: Settings) -> KubeObject:
    """VPN port from anywhere; the HTTP port only from the controller and monitoring."""
    names = TenantNames.for_cluster(tenant.cluster_name)
    transport = tenant.spec.transport
    http_from: list[dict[str, Any]] = []
    if settings.controller_namespace:
        http_from.append(
            {
                "namespaceSelector": _namespace(settings.controller_namespace),
                "podSelector": {"matchLabels": dict(sorted(CONTROLLER_POD_LABELS.items()))},
            }
        )
    http_from += [
        {"namespaceSelector": _namespace(ns)} for ns in sorted(set(settings.metrics_namespaces))
    ]
    ingress: list[dict[str, Any]] = [
        {"ports": [{"port": transport.port, "protocol": transport.protocol.upper()}]}
    ]
    if http_from:  # an empty `from` would mean "from anywhere": leave the rule out instead
        ingress.append(
            {"from": http_from, "ports": [{"port": settings.server_health_port, "protocol": "TCP"}]}
        )
    return stamp(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {
                "name": names.deployment,
                "namespace": tenant.namespace,
                "labels": labels(cluster_name=tenant.cluster_name, component=COMPONENT_SERVER),
                "annotations": {},
                "ownerReferences": [
                    tunnel_owner_reference(
                        tunnel_name=tenant.tunnel_name, tunnel_uid=tenant.tunnel_uid
                    )
                ],
            },
            "spec": {
                "ingress": ingress,
                "podSelector": {
                    "matchLabels": selector_labels(
                        cluster_name=tenant.cluster_name, component=COMPONENT_SERVER
                    )
                },
                "policyTypes": ["Ingress"],
            },
        }
    )
