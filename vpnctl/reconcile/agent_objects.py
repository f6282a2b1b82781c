"""Desired objects in the tenant's own cluster: the node agent and what it needs.

Applied through CAPI's `<cluster>-kubeconfig` Secret and watched, so a tenant who deletes
or edits one gets it back (diff.needs_update tells which). Owner references cannot point
across clusters, so these carry our labels only; the Cluster's finalizer removes them.

Least privilege: the ServiceAccount gets no Role at all.
- The agent reads its config from a mounted ConfigMap and never calls the API with the
  ServiceAccount; it only uses the ServiceAccount volume's `ca.crt` to check the
  apiserver.
- It asks for its certificate with a CertificateSigningRequest authenticated *as its
  node* (the kubelet's client certificate), which the Node authorizer already allows;
  authenticating with the ServiceAccount instead would let any agent pose as any node.
- The pod gets no host `/proc/sys` (a writable one is a known container escape): the
  node's sysctls are checked and reported by the agent, and set only where the
  container can (`agent/sysctls.py`). `/dev/net/tun` as for the server pod
  (`pod_security.tun_parts`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vpnctl.api import KubeObject
from vpnctl.reconcile.agentdocs import NodePaths, canonical_json
from vpnctl.reconcile.container_resources import ContainerResources
from vpnctl.reconcile.diff import digest, stamp
from vpnctl.reconcile.names import (
    COMPONENT_NODE_AGENT,
    CONFIG_HASH_ANNOTATION,
    NODE_AGENT_NAME,
    labels,
    selector_labels,
)
from vpnctl.reconcile.pod_security import agent_container, container_security, tun_parts
from vpnctl.reconcile.service_objects import CA_CERT, HEALTH_PORT_NAME
from vpnctl.reconcile.settings import Settings

NODE_JSON = "node.json"
NODE_AGENT_CONTAINER = "node-agent"


def _metadata(
    *, cluster_name: str, name: str, namespace: str | None, extra_labels: Mapping[str, str] = {}
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "labels": dict(
            sorted(
                {
                    **labels(cluster_name=cluster_name, component=COMPONENT_NODE_AGENT),
                    **extra_labels,
                }.items()
            )
        ),
    }
    if namespace is not None:
        meta["namespace"] = namespace
    return meta


def _agent_object(
    api_version: str,
    kind: str,
    *,
    cluster_name: str,
    namespace: str | None,
    name: str = NODE_AGENT_NAME,
    extra_labels: Mapping[str, str] = {},
    **fields: Any,
) -> KubeObject:
    """One of our objects in the tenant cluster: our labels, stamped with its hash;
    ``fields`` after the metadata (``data``, ``spec``)."""
    meta = _metadata(
        cluster_name=cluster_name, name=name, namespace=namespace, extra_labels=extra_labels
    )
    return stamp({"apiVersion": api_version, "kind": kind, "metadata": meta, **fields})


def agent_namespace(*, cluster_name: str, settings: Settings) -> KubeObject:
    """The agent's namespace. Pod Security "privileged": the agent needs hostNetwork,
    hostPath and NET_ADMIN, which every other level forbids."""
    return _agent_object(
        "v1",
        "Namespace",
        cluster_name=cluster_name,
        name=settings.tenant_namespace,
        namespace=None,
        extra_labels={
            "pod-security.kubernetes.io/audit": "privileged",
            "pod-security.kubernetes.io/enforce": "privileged",
            "pod-security.kubernetes.io/warn": "privileged",
        },
    )


def agent_service_account(*, cluster_name: str, settings: Settings) -> KubeObject:
    return _agent_object(
        "v1", "ServiceAccount", cluster_name=cluster_name, namespace=settings.tenant_namespace
    )


def agent_config_map(
    *, cluster_name: str, settings: Settings, role_config: Mapping[str, Any], ca_pem: bytes
) -> KubeObject:
    """node.json and the tenant CA certificate (public; no key material here)."""
    return _agent_object(
        "v1",
        "ConfigMap",
        cluster_name=cluster_name,
        namespace=settings.tenant_namespace,
        data={CA_CERT: ca_pem.decode("ascii"), NODE_JSON: canonical_json(role_config)},
    )


def agent_daemon_set(
    *,
    cluster_name: str,
    settings: Settings,
    role_config: Mapping[str, Any],
    resources: ContainerResources | None = None,
    image: str | None = None,
) -> KubeObject:
    """The node role on every node: hostNetwork (the tunnel is the node's), NET_ADMIN and
    /dev/net/tun, tolerating every taint (a tainted node still needs `kubectl logs`).

    Not the host's /proc/sys: with hostNetwork, /proc/sys/net already is the node's, and
    the agent checks its sysctls there (read-only in a container) instead of setting them.
    """
    p = NodePaths
    selector = selector_labels(cluster_name=cluster_name, component=COMPONENT_NODE_AGENT)
    tun_volumes, tun_mounts, tun_limits = tun_parts(settings)
    limits = (resources or settings.agent_resources).body(extra_limits=tun_limits)
    container: dict[str, Any] = {
        **agent_container(NODE_AGENT_CONTAINER, "node", p.role_config, settings, image=image),
        "env": [
            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        ],
        "ports": [
            {
                "containerPort": settings.node_health_port,
                "hostPort": settings.node_health_port,
                "name": HEALTH_PORT_NAME,
                "protocol": "TCP",
            }
        ],
        "livenessProbe": {
            "failureThreshold": 3,
            "httpGet": {"path": "/healthz", "port": HEALTH_PORT_NAME},
            "periodSeconds": 10,
            "timeoutSeconds": 2,
        },
        "readinessProbe": {
            "failureThreshold": 2,
            "httpGet": {"path": "/readyz", "port": HEALTH_PORT_NAME},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
        },
        "securityContext": container_security(settings),
        "volumeMounts": sorted(
            [
                {"mountPath": p.config_dir, "name": "config", "readOnly": True},
                {"mountPath": p.state_dir, "name": "state"},
                {"mountPath": p.run_dir, "name": "run"},
                {"mountPath": settings.kubelet_pki_dir, "name": "kubelet-pki", "readOnly": True},
                {"mountPath": "/tmp", "name": "tmp"},
                *tun_mounts,
            ],
            key=lambda m: str(m["mountPath"]),
        ),
    }
    if limits:
        container["resources"] = limits
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "dnsPolicy": "ClusterFirstWithHostNet",
        "enableServiceLinks": False,
        "hostNetwork": True,
        "priorityClassName": settings.node_priority_class,
        "serviceAccountName": NODE_AGENT_NAME,
        "terminationGracePeriodSeconds": 10,
        "tolerations": [{"operator": "Exists"}],
        "volumes": sorted(
            [
                {
                    "configMap": {
                        "items": [
                            {"key": CA_CERT, "path": "ca.crt"},
                            {"key": NODE_JSON, "path": "node.json"},
                        ],
                        "name": NODE_AGENT_NAME,
                    },
                    "name": "config",
                },
                {
                    "hostPath": {"path": p.state_dir, "type": "DirectoryOrCreate"},
                    "name": "state",
                },
                {"emptyDir": {"medium": "Memory"}, "name": "run"},
                {
                    "hostPath": {"path": settings.kubelet_pki_dir, "type": "Directory"},
                    "name": "kubelet-pki",
                },
                {"emptyDir": {}, "name": "tmp"},
                *tun_volumes,
            ],
            key=lambda v: str(v["name"]),
        ),
    }
    if settings.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in settings.image_pull_secrets]
    return _agent_object(
        "apps/v1",
        "DaemonSet",
        cluster_name=cluster_name,
        namespace=settings.tenant_namespace,
        spec={
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {
                    "annotations": {CONFIG_HASH_ANNOTATION: digest(role_config)},
                    "labels": labels(cluster_name=cluster_name, component=COMPONENT_NODE_AGENT),
                },
                "spec": pod_spec,
            },
            "updateStrategy": {
                "rollingUpdate": {"maxUnavailable": 1},
                "type": "RollingUpdate",
            },
        },
    )


def tenant_objects(
    *,
    cluster_name: str,
    settings: Settings,
    role_config: Mapping[str, Any],
    ca_pem: bytes,
    agent_resources: ContainerResources | None = None,
    agent_image: str | None = None,
) -> tuple[KubeObject, ...]:
    """Everything the tenant cluster gets, in the order to apply it. ``agent_resources``:
    the Tunnel's spec.resources.agent, if it sets one (else the settings' default);
    ``agent_image``: its spec.agent.image, likewise."""
    return (
        agent_namespace(cluster_name=cluster_name, settings=settings),
        agent_service_account(cluster_name=cluster_name, settings=settings),
        agent_config_map(
            cluster_name=cluster_name, settings=settings, role_config=role_config, ca_pem=ca_pem
        ),
        agent_daemon_set(
            cluster_name=cluster_name,
            settings=settings,
            role_config=role_config,
            resources=agent_resources,
            image=agent_image,
        ),
    )
