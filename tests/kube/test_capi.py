"""CAPI objects both ways: written with kubectl, read through kubernetes_asyncio.

vpnctl consumes Cluster and Machine in cluster.x-k8s.io/v1beta1; this pins that the
generated CRDs serve exactly the fields we read, including the status subresource.
"""

from __future__ import annotations

import json

import pytest
from kubernetes_asyncio import client as k8s_client

from vpnctl.testenv import KUBERNETES_VERSION, ServiceCluster

pytestmark = pytest.mark.kube

GROUP, VERSION = "cluster.x-k8s.io", "v1beta1"


def _manifests(namespace: str) -> str:
    return f"""
apiVersion: cluster.x-k8s.io/v1beta1
kind: Cluster
metadata:
  name: acme
  namespace: {namespace}
spec:
  clusterNetwork:
    pods:
      cidrBlocks: ["198.18.128.0/17"]
    services:
      cidrBlocks: ["198.19.0.0/24"]
  controlPlaneEndpoint:
    host: 198.18.0.10
    port: 6443
---
apiVersion: cluster.x-k8s.io/v1beta1
kind: Machine
metadata:
  name: acme-md-0-abcde
  namespace: {namespace}
  labels:
    cluster.x-k8s.io/cluster-name: acme
spec:
  clusterName: acme
  bootstrap:
    dataSecretName: acme-md-0-bootstrap
  infrastructureRef:
    apiVersion: infrastructure.cluster.x-k8s.io/v1beta1
    kind: DockerMachine
    name: acme-md-0-abcde
"""


async def test_server_reports_pinned_version(service_cluster: ServiceCluster) -> None:
    out = json.loads(await service_cluster.kubectl("version", "-o", "json"))
    assert out["serverVersion"]["gitVersion"] == KUBERNETES_VERSION
    assert out["clientVersion"]["gitVersion"] == KUBERNETES_VERSION


async def test_capi_cluster_and_machine_round_trip(
    service_cluster: ServiceCluster, service_api: k8s_client.ApiClient, namespace: str
) -> None:
    await service_cluster.kubectl("apply", "-f", "-", input=_manifests(namespace))
    # What a CAPI infrastructure provider would report once the node joined.
    status = {
        "status": {
            "nodeRef": {"apiVersion": "v1", "kind": "Node", "name": "node-1"},
            "addresses": [{"type": "InternalIP", "address": "198.18.1.11"}],
        }
    }
    await service_cluster.kubectl(
        "patch", "machine", "acme-md-0-abcde", "-n", namespace,
        "--subresource=status", "--type=merge", "-p", json.dumps(status),
    )  # fmt: skip

    api = k8s_client.CustomObjectsApi(service_api)
    cluster = await api.get_namespaced_custom_object(GROUP, VERSION, namespace, "clusters", "acme")
    assert cluster["spec"]["clusterNetwork"]["pods"]["cidrBlocks"] == ["198.18.128.0/17"]
    assert cluster["spec"]["clusterNetwork"]["services"]["cidrBlocks"] == ["198.19.0.0/24"]
    assert cluster["spec"]["controlPlaneEndpoint"] == {"host": "198.18.0.10", "port": 6443}

    machines = await api.list_namespaced_custom_object(
        GROUP, VERSION, namespace, "machines", label_selector="cluster.x-k8s.io/cluster-name=acme"
    )
    [machine] = machines["items"]
    assert machine["spec"]["clusterName"] == "acme"
    assert machine["status"]["nodeRef"]["name"] == "node-1"
    assert machine["status"]["addresses"] == [{"type": "InternalIP", "address": "198.18.1.11"}]


async def test_all_capi_crds_established(service_cluster: ServiceCluster) -> None:
    names = set((await service_cluster.kubectl("get", "crd", "-o", "name")).split())
    for plural in ("clusters", "machines", "machinesets", "machinedeployments",
                   "machinehealthchecks", "clusterclasses", "machinepools"):  # fmt: skip
        assert f"customresourcedefinition.apiextensions.k8s.io/{plural}.{GROUP}" in names
