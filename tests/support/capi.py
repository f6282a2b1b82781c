"""CAPI objects as a provider writes them, for tests and bench; one set of builders.

The pure builders (``cluster``, ``machine``, ``node``, ``tunnel``, ``kubeconfig_secret``,
``lab_tenant``) make one raw object each with the fields vpnctl reads and nothing else, so a
test states only what it varies. The ``create_*`` writers put the same objects into a real
kube-apiserver (tests/kube, bench), stripped of what the apiserver assigns.

``lab_tenant()`` follows the lab's address plan (vpnctl/lab/address_plan.py): nodes 198.19.0.(10+i),
pods 198.19.64.0/18 with 198.19.(64+i).0/24 per node, services 198.19.192.0/20, tunnel
198.18.8.0/24. The lab writes its own Machines (vpnctl/lab/lab_objects.py): it cannot import
from tests/.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import yaml

from vpnctl.api import (
    CAPI_API_VERSION,
    CAPI_CLUSTER_NAME_LABEL,
    TUNNEL_API_VERSION,
    TUNNEL_KIND,
    Cluster,
    Machine,
    Node,
    Tunnel,
    TunnelSpecBody,
)
from vpnctl.kube import CLUSTER, MACHINE, SECRET, Kube, KubeObject
from vpnctl.reconcile.tenant_spec import TenantSpec, parse_tenant

LAB_NODES_CIDR = "198.19.0.0/24"
LAB_PODS_CIDR = "198.19.64.0/18"
LAB_SERVICES_CIDR = "198.19.192.0/20"
LAB_TUNNEL_CIDR = "198.18.8.0/24"


def cluster(
    *,
    name: str = "tenant-a",
    namespace: str = "tenant-a",
    pods: Sequence[str] | None = (LAB_PODS_CIDR,),
    services: Sequence[str] | None = (LAB_SERVICES_CIDR,),
    endpoint: tuple[str, int] | None = ("198.18.0.2", 6443),
) -> Cluster:
    """A Cluster; `pods=None, services=None` gives one without clusterNetwork."""
    spec: dict[str, Any] = {}
    if pods is not None or services is not None:
        network: dict[str, Any] = {}
        if pods is not None:
            network["pods"] = {"cidrBlocks": list(pods)}
        if services is not None:
            network["services"] = {"cidrBlocks": list(services)}
        spec["clusterNetwork"] = network
    if endpoint is not None:
        spec["controlPlaneEndpoint"] = {"host": endpoint[0], "port": endpoint[1]}
    body: dict[str, Any] = {
        "apiVersion": CAPI_API_VERSION,
        "kind": "Cluster",
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-cluster-{name}"},
        "spec": spec,
    }
    return cast(Cluster, body)


def machine(
    *,
    name: str,
    cluster_name: str = "tenant-a",
    namespace: str = "tenant-a",
    node: str | None = None,
    internal_ip: str | None = None,
    addresses: Sequence[tuple[str, str]] | None = None,
    deleting: bool = False,
) -> Machine:
    """A Machine; `node`/`internal_ip` None leave nodeRef/addresses out (not joined yet)."""
    status: dict[str, Any] = {}
    if node is not None:
        status["nodeRef"] = {"apiVersion": "v1", "kind": "Node", "name": node}
    if addresses is None and internal_ip is not None:
        addresses = [("InternalIP", internal_ip), ("Hostname", node or name)]
    if addresses is not None:
        status["addresses"] = [{"type": t, "address": a} for t, a in addresses]
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {CAPI_CLUSTER_NAME_LABEL: cluster_name},
        "uid": f"uid-machine-{name}",
    }
    if deleting:
        meta["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    body: dict[str, Any] = {
        "apiVersion": CAPI_API_VERSION,
        "kind": "Machine",
        "metadata": meta,
        "spec": {
            "clusterName": cluster_name,
            "bootstrap": {"dataSecretName": f"{name}-bootstrap"},
            "infrastructureRef": {
                "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1",
                "kind": "DockerMachine",
                "name": name,
            },
        },
        "status": status,
    }
    return cast(Machine, body)


def node(*, name: str, pod_cidrs: Sequence[str] = (), kubelet_port: int | None = None) -> Node:
    """A tenant cluster's Node, with only what vpnctl reads."""
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "spec": {"podCIDRs": list(pod_cidrs)} if pod_cidrs else {},
    }
    if pod_cidrs:
        body["spec"]["podCIDR"] = pod_cidrs[0]
    if kubelet_port is not None:
        body["status"] = {"daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}}}
    return cast(Node, body)


def tunnel(
    *,
    name: str = "tenant-a",
    namespace: str = "tenant-a",
    spec: TunnelSpecBody | None = None,
    generation: int = 1,
    uid: str | None = None,
    status: dict[str, Any] | None = None,
) -> Tunnel:
    """A Tunnel; `spec` defaults to `{clusterName: name}` (the apiserver fills the rest)."""
    body: dict[str, Any] = {
        "apiVersion": TUNNEL_API_VERSION,
        "kind": TUNNEL_KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid or f"uid-tunnel-{namespace}-{name}",
            "generation": generation,
            "creationTimestamp": "2024-01-01T00:00:00Z",
        },
        "spec": dict(spec) if spec is not None else {"clusterName": name},
    }
    if status is not None:
        body["status"] = status
    return cast(Tunnel, body)


@dataclass(frozen=True, kw_only=True)
class SampleTenant:
    tunnel: Tunnel
    cluster: Cluster
    machines: tuple[Machine, ...]
    nodes: tuple[Node, ...]


def lab_tenant(
    *, nodes: int = 3, name: str = "tenant-a", namespace: str = "tenant-a"
) -> SampleTenant:
    """The lab's tenant: machine `<name>-md-<i>`, node `node-<i>`, i = 1..nodes."""
    if not 1 <= nodes <= 50:
        raise ValueError(f"the lab plan numbers 1 to 50 nodes, got {nodes}")
    machines = tuple(
        machine(
            name=f"{name}-md-{i}",
            cluster_name=name,
            namespace=namespace,
            node=f"node-{i}",
            internal_ip=f"198.19.0.{10 + i}",
        )
        for i in range(1, nodes + 1)
    )
    tenant_nodes = tuple(
        node(name=f"node-{i}", pod_cidrs=[f"198.19.{64 + i}.0/24"]) for i in range(1, nodes + 1)
    )
    return SampleTenant(
        tunnel=tunnel(
            name=name,
            namespace=namespace,
            spec={"clusterName": name, "tunnelCIDR": LAB_TUNNEL_CIDR},
        ),
        cluster=cluster(name=name, namespace=namespace),
        machines=machines,
        nodes=tenant_nodes,
    )


def parsed_lab_tenant(
    spec: Mapping[str, Any] | None = None, *, nodes: int = 3, with_nodes: bool = True
) -> TenantSpec:
    """The lab's tenant as the controller reads it, with SPEC over the lab's Tunnel spec;
    without `with_nodes`, as if the tenant's Node list could not be read."""
    t = lab_tenant(nodes=nodes)
    body: dict[str, Any] = {"clusterName": "tenant-a", "tunnelCIDR": LAB_TUNNEL_CIDR}
    body.update(spec or {})
    return parse_tenant(
        tunnel=tunnel(spec=body),  # type: ignore[arg-type]
        cluster=t.cluster,
        machines=t.machines,
        nodes=t.nodes if with_nodes else None,
    )


# --- the same objects in a real kube-apiserver ---------------------------------------------


def kubeconfig_text(cluster: str, server: str = "https://198.18.0.2:6443") -> str:
    """A kubeconfig with a stand-in token, as CAPI's ``<cluster>-kubeconfig`` holds one."""
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": {"server": server}}],
        "users": [{"name": "admin", "user": {"token": "not-a-real-token"}}],
        "contexts": [
            {"name": "admin@" + cluster, "context": {"cluster": cluster, "user": "admin"}}
        ],
        "current-context": "admin@" + cluster,
    }
    return yaml.safe_dump(doc)


def kubeconfig_secret(
    *, cluster: str, namespace: str = "tenant-a", text: str | None = None
) -> dict[str, Any]:
    """The Secret ``<cluster>-kubeconfig`` as CAPI writes it (key ``value``)."""
    value = text if text is not None else kubeconfig_text(cluster)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": f"{cluster}-kubeconfig",
            "namespace": namespace,
            "labels": {CAPI_CLUSTER_NAME_LABEL: cluster},
        },
        "type": "cluster.x-k8s.io/secret",
        "data": {"value": base64.b64encode(value.encode()).decode()},
    }


def _for_create(obj: Mapping[str, Any]) -> dict[str, Any]:
    """OBJ without what the apiserver assigns (uid) or takes only on /status."""
    body = {k: v for k, v in obj.items() if k != "status"}
    body["metadata"] = {k: v for k, v in obj["metadata"].items() if k != "uid"}
    return body


async def create_cluster(
    kube: Kube,
    namespace: str,
    name: str,
    *,
    pods: Sequence[str] | None = (LAB_PODS_CIDR,),
    services: Sequence[str] | None = (LAB_SERVICES_CIDR,),
    annotations: Mapping[str, str] | None = None,
    kubeconfig: bool = True,
) -> KubeObject:
    """A Cluster (and, unless ``kubeconfig=False``, its kubeconfig Secret)."""
    body = _for_create(cluster(name=name, namespace=namespace, pods=pods, services=services))
    if annotations:
        body["metadata"]["annotations"] = dict(annotations)
    created = await kube.create(CLUSTER, body)
    if kubeconfig:
        await create_kubeconfig_secret(kube, namespace, name)
    return created


async def create_kubeconfig_secret(
    kube: Kube, namespace: str, cluster: str, *, text: str | None = None
) -> KubeObject:
    return await kube.apply(
        SECRET,
        kubeconfig_secret(cluster=cluster, namespace=namespace, text=text),
        field_manager="capi-fake",
    )


async def create_machine(
    kube: Kube,
    namespace: str,
    name: str,
    *,
    cluster: str,
    node: str | None,
    internal_ip: str | None,
) -> KubeObject:
    """A Machine, then its status (``node``/``internal_ip`` None: not joined yet)."""
    await kube.create(
        MACHINE, _for_create(machine(name=name, cluster_name=cluster, namespace=namespace))
    )
    return await set_machine_status(kube, namespace, name, node=node, internal_ip=internal_ip)


async def set_machine_status(
    kube: Kube, namespace: str, name: str, *, node: str | None, internal_ip: str | None
) -> KubeObject:
    built = machine(name=name, namespace=namespace, node=node, internal_ip=internal_ip)
    return await kube.apply_status(
        MACHINE,
        {"metadata": {"name": name, "namespace": namespace}, "status": built["status"]},
        field_manager="capi-fake",
    )


async def create_tenant(
    kube: Kube, namespace: str, name: str, *, nodes: int = 3, **cluster_options: Any
) -> list[str]:
    """A Cluster with ``nodes`` joined Machines (node-<i> at 198.19.0.(10+i)); node names."""
    await create_cluster(kube, namespace, name, **cluster_options)
    names = []
    for i in range(1, nodes + 1):
        node = f"{name}-node-{i}"
        await create_machine(
            kube,
            namespace,
            f"{name}-md-{i}",
            cluster=name,
            node=node,
            internal_ip=f"198.19.0.{10 + i}",
        )
        names.append(node)
    return names
