"""The Kubernetes objects the lab creates, as plain dicts: what the providers would make.

Two clusters, two sets:

- **Service cluster** (what Cluster API and its providers would create): the tenant's
  namespace, its `Cluster` with `clusterNetwork` from the lab plan, one `Machine` per
  node with `status.nodeRef` and `status.addresses` (CAPI's machine controller sets them
  once the node joined), the `<cluster>-kubeconfig` Secret (key `value`) pointing at the
  hosted tenant apiserver, and a `Tunnel` with the lab's tunnel CIDR (the default,
  100.127.255.0/24, lies outside 198.18.0.0/15, where the lab must stay).
- **Tenant cluster** (what the kubelets and the tenant's own workloads would create):
  a `Node` per node with its InternalIP, podCIDR and kubelet port; a Pod bound to each
  node whose logs the kubelet stand-in serves; and per node a webhook: a Service whose
  Endpoints are the webhook stand-in in the pod behind that node, and a
  ValidatingWebhookConfiguration that sends it ConfigMaps labelled for that node.

Pure builders, so the lab's shape is tested without a cluster.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import yaml

from vpnctl.api import CAPI_API_VERSION, CAPI_CLUSTER_NAME_LABEL, TUNNEL_API_VERSION, TUNNEL_KIND
from vpnctl.lab.address_plan import LabPlan, NodePlan
from vpnctl.reconcile.secrets import kubeconfig_secret_name
from vpnctl.reconcile.sidecar_objects import (
    ATTACH_SIDECAR_LABEL,
)

CLUSTER_NAME = "tenant-a"
CLUSTER_NAMESPACE = "tenant-a"
TENANT_APISERVER_PORT = 6443
SERVICE_APISERVER_PORT = 6443
# The namespace vpnctl's leader election Lease lives in (ControllerSettings' default).
CONTROLLER_NAMESPACE = "vpnctl-system"
APISERVER_DEPLOYMENT = f"{CLUSTER_NAME}-kube-apiserver"

# In the tenant cluster.
WORKLOAD_NAMESPACE = "lab"
LOG_CONTAINER = "app"
WEBHOOK_LABEL = "lab.vpnctl.io/webhook"
WEBHOOK_SERVICE_PORT = 443
KUBELET_CLIENT_GROUP = "system:nodes"
# The full lab's Tunnel renegotiates often, so that every e2e test runs across TLS
# renegotiations and `kubectl logs -f` is shown to survive them.
LAB_RENEGOTIATE_SECONDS = 30
DEFAULT_LOG_LINES = 100_000  # what each node's log pod prints (realnode.workloads.log_pod)


def machine_name(node: NodePlan, *, generation: int = 1) -> str:
    """`tenant-a-md-<i>`; a Machine made again for the same node gets a new name."""
    base = f"{CLUSTER_NAME}-md-{node.index}"
    return base if generation == 1 else f"{base}-{generation}"


def kubeconfig_text(*, name: str, server: str, ca_pem: bytes, cert_pem: bytes,
                    key_pem: bytes) -> str:  # fmt: skip
    """A kubeconfig with everything embedded, as CAPI writes `<cluster>-kubeconfig`."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server,
                                                "certificate-authority-data": b64(ca_pem)}}],
        "users": [{"name": f"{name}-admin", "user": {"client-certificate-data": b64(cert_pem),
                                                      "client-key-data": b64(key_pem)}}],
        "contexts": [{"name": f"{name}-admin@{name}",
                      "context": {"cluster": name, "user": f"{name}-admin"}}],
        "current-context": f"{name}-admin@{name}",
    }  # fmt: skip
    return yaml.safe_dump(doc, sort_keys=False)


# --- the service cluster ----------------------------------------------------------------------


def service_objects(
    plan: LabPlan,
    *,
    tenant_kubeconfig: str,
    protocol: str = "udp",
    renegotiate_seconds: int | None = None,
) -> list[dict[str, Any]]:
    """Namespaces, Tunnel, Cluster, kubeconfig Secret and the hosted apiserver's
    Deployment, in the order to create them.

    The Tunnel comes before its Cluster: vpnctl would otherwise create one with the
    default tunnel CIDR first. Machines are separate (`machine`, `machine_status`): CAPI
    creates them, and sets their status only once the node has joined.
    """
    meta = {"namespace": CLUSTER_NAMESPACE}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": CONTROLLER_NAMESPACE}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": CLUSTER_NAMESPACE}},
        {
            "apiVersion": TUNNEL_API_VERSION,
            "kind": TUNNEL_KIND,
            "metadata": {"name": CLUSTER_NAME, **meta},
            "spec": {
                "clusterName": CLUSTER_NAME,
                "tunnelCIDR": str(plan.tunnel_cidr),
                # The service node's kube-proxy forwards its node port to the server
                # pod; vpnctl tells the nodes that address (its --node-port-address).
                "expose": {"serviceType": "NodePort"},
                "transport": {
                    "protocol": protocol,
                    **(
                        {"renegotiateSeconds": renegotiate_seconds}
                        if renegotiate_seconds is not None
                        else {}
                    ),
                },
            },
        },
        {
            "apiVersion": CAPI_API_VERSION,
            "kind": "Cluster",
            "metadata": {"name": CLUSTER_NAME, **meta},
            "spec": {
                "clusterNetwork": {
                    "pods": {"cidrBlocks": [str(plan.pod_cidr)]},
                    "services": {"cidrBlocks": [str(plan.service_cidr)]},
                },
                "controlPlaneEndpoint": {
                    "host": str(plan.api_ip),
                    "port": TENANT_APISERVER_PORT,
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": kubeconfig_secret_name(CLUSTER_NAME),
                **meta,
                "labels": {CAPI_CLUSTER_NAME_LABEL: CLUSTER_NAME},
            },
            "type": "cluster.x-k8s.io/secret",
            "data": {"value": base64.b64encode(tenant_kubeconfig.encode()).decode("ascii")},
        },
        apiserver_deployment(plan),
    ]


def apiserver_deployment(plan: LabPlan) -> dict[str, Any]:
    """The hosted tenant kube-apiserver, as a control-plane provider would deploy it.

    Labelled `vpnctl.io/apiserver-for`, so vpnctl attaches its apiserver sidecar. The
    lab kubelet runs only that sidecar from its pods: the kube-apiserver container is
    the `TenantCluster` process the lab started in P-api. The pods are bound to the lab
    kubelet's node by name, so the scheduler never places them on the real service node.
    """
    labels = {"app.kubernetes.io/name": "kube-apiserver", "lab.vpnctl.io/cluster": CLUSTER_NAME}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": APISERVER_DEPLOYMENT,
            "namespace": CLUSTER_NAMESPACE,
            "labels": {ATTACH_SIDECAR_LABEL: CLUSTER_NAME, **labels},
        },
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "nodeName": plan.api_ns,
                    "containers": [
                        {
                            "name": "kube-apiserver",
                            "image": "registry.k8s.io/kube-apiserver:v1.34.4",
                            "command": ["kube-apiserver", f"--bind-address={plan.api_ip}"],
                            "ports": [{"containerPort": TENANT_APISERVER_PORT, "name": "https"}],
                        }
                    ],
                },
            },
        },
    }


def apiserver_pod_selector() -> str:
    return f"app.kubernetes.io/name=kube-apiserver,lab.vpnctl.io/cluster={CLUSTER_NAME}"


def machine(node: NodePlan, *, generation: int = 1) -> dict[str, Any]:
    """A worker Machine as a MachineDeployment's MachineSet creates it (no status yet)."""
    return {
        "apiVersion": CAPI_API_VERSION,
        "kind": "Machine",
        "metadata": {
            "name": machine_name(node, generation=generation),
            "namespace": CLUSTER_NAMESPACE,
            "labels": {CAPI_CLUSTER_NAME_LABEL: CLUSTER_NAME},
        },
        "spec": {
            "clusterName": CLUSTER_NAME,
            "bootstrap": {"dataSecretName": f"{machine_name(node, generation=generation)}-boot"},
            "infrastructureRef": {
                "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1",
                "kind": "LabMachine",
                "name": machine_name(node, generation=generation),
            },
        },
    }


def machine_status(node: NodePlan) -> dict[str, Any]:
    """What CAPI's machine controller sets once the node joined (a status merge patch)."""
    return {
        "status": {
            "nodeRef": {"apiVersion": "v1", "kind": "Node", "name": node.name},
            "addresses": [
                {"type": "InternalIP", "address": str(node.internal_ip)},
                {"type": "Hostname", "address": node.name},
            ],
            "phase": "Running",
        }
    }


# --- the tenant cluster -------------------------------------------------------------------------


def labels_of(obj: Mapping[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})
