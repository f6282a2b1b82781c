"""What the desired-state builders need from the controller's own configuration.

Passed in, never read from a global: the controller builds one `Settings` from its flags
and environment at start, the tests build their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from ipaddress import IPv4Network

from vpnctl.reconcile.container_resources import (
    DEFAULT_AGENT_RESOURCES,
    DEFAULT_SERVER_RESOURCES,
    DEFAULT_SIDECAR_RESOURCES,
    ContainerResources,
)
from vpnctl.reconcile.machine_deletion import DEFAULT_MAX_DELAY
from vpnctl.reconcile.service_route_election import DEFAULT_GRACE


@dataclass(frozen=True, kw_only=True)
class Settings:
    # One image carries the controller and every agent role (see the Dockerfile).
    agent_image: str
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = ()
    # Where the agent lives in each tenant cluster.
    tenant_namespace: str = "vpnctl-system"
    # The server role's one HTTP port: /healthz, /readyz and /metrics.
    server_health_port: int = 9190
    # The node role's HTTP port. It runs with hostNetwork, so it takes a port on the node;
    # pick one no tenant component uses.
    node_health_port: int = 9191
    # The apiserver sidecar's HTTP port, inside the kube-apiserver pod.
    apiserver_health_port: int = 9192
    # Networks of the service cluster itself (its pod and Service CIDRs, the hosts' LAN).
    # The hosted kube-apiserver pod lives there and routes the tunnel and every tenant CIDR
    # into tun, so none of them may overlap these.
    reserved_cidrs: tuple[IPv4Network, ...] = field(default=())
    # Where the kubelet keeps its client certificate on tenant nodes: the node agent asks
    # for its tunnel certificate authenticated as its node, with these credentials.
    kubelet_pki_dir: str = "/var/lib/kubelet/pki"
    # Priority of the node agent's pods; without the tunnel the node is unreachable for
    # logs/exec, so it is as critical as kube-proxy.
    node_priority_class: str = "system-node-critical"
    # A device plugin resource that provides /dev/net/tun (e.g. "squat.ai/tun"). When None,
    # the agent makes the device node itself with CAP_MKNOD (no hostPath, no privileged
    # pod), or, with tun_host_path, pods mount the host's /dev/net/tun as a hostPath.
    tun_resource: str | None = None
    tun_host_path: bool = False
    # Namespaced sysctls for the server pod, e.g. (("net.ipv4.ip_forward", "1"),). Empty by
    # default: a new network namespace copies IPv4 forwarding from the host (see objects.py).
    server_pod_sysctls: tuple[tuple[str, str], ...] = ()
    # Who may reach the server pods' HTTP port (metrics, health) past their NetworkPolicy
    # (reconcile/server_policy.py): the controller's own namespace, and monitoring's.
    controller_namespace: str | None = None
    metrics_namespaces: tuple[str, ...] = ()
    # Addresses of the service cluster's nodes, for spec.expose.serviceType NodePort.
    node_port_addresses: tuple[str, ...] = ()
    # Requests and limits of the server pods, the apiserver sidecar and the node agent,
    # unless a Tunnel's spec.resources says otherwise (container_resources.py).
    server_resources: ContainerResources = DEFAULT_SERVER_RESOURCES
    sidecar_resources: ContainerResources = DEFAULT_SIDECAR_RESOURCES
    agent_resources: ContainerResources = DEFAULT_AGENT_RESOURCES
    # How long a deleted Machine's node keeps its tunnel at most while it drains, for
    # Tunnels without spec.nodeRevocation.maxDelay (reconcile/machine_deletion.py).
    node_revocation_max_delay: timedelta = DEFAULT_MAX_DELAY
    # How long a newly elected service-route holder keeps the role while disconnected
    # (the kick its own election caused): reconcile/service_route_election.py.
    service_route_grace: timedelta = DEFAULT_GRACE
