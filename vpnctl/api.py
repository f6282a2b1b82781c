"""Typed shapes of the raw API bodies vpnctl reads and writes.

The kube layer hands the rest of vpnctl plain JSON dicts (what the apiserver sent), and
takes plain dicts back. These TypedDicts name the fields we use so mypy checks every
access; they are not validation: anything read from the API is checked again where it is
parsed (see `vpnctl.reconcile.tenant_spec`), because a TypedDict is a promise, not a fact.

Only the fields vpnctl uses are listed. Keys are the API's own camelCase names.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

TUNNEL_GROUP = "vpnctl.io"
TUNNEL_VERSION = "v1alpha1"
TUNNEL_API_VERSION = f"{TUNNEL_GROUP}/{TUNNEL_VERSION}"
TUNNEL_KIND = "Tunnel"
TUNNEL_PLURAL = "tunnels"

CAPI_GROUP = "cluster.x-k8s.io"
CAPI_VERSION = "v1beta1"
CAPI_API_VERSION = f"{CAPI_GROUP}/{CAPI_VERSION}"
# The label CAPI puts on every Machine (and MachineSet, ...) of a Cluster.
CAPI_CLUSTER_NAME_LABEL = "cluster.x-k8s.io/cluster-name"

# A Kubernetes object as a generic JSON document (what builders return, what SSA takes).
KubeObject = dict[str, Any]


# --- metav1 -------------------------------------------------------------------------------


class OwnerReference(TypedDict):
    apiVersion: str
    kind: str
    name: str
    uid: str
    controller: NotRequired[bool]
    blockOwnerDeletion: NotRequired[bool]


class ObjectMeta(TypedDict, total=False):
    name: str
    namespace: str
    uid: str
    generation: int
    resourceVersion: str
    creationTimestamp: str
    deletionTimestamp: str
    labels: dict[str, str]
    annotations: dict[str, str]
    ownerReferences: list[OwnerReference]
    finalizers: list[str]


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(TypedDict):
    """metav1.Condition."""

    type: str
    status: ConditionStatus
    observedGeneration: int
    lastTransitionTime: str
    reason: str
    message: str


# --- Cluster API v1beta1 (consumed) -------------------------------------------------------


class NetworkRanges(TypedDict, total=False):
    cidrBlocks: list[str]


class ClusterNetwork(TypedDict, total=False):
    pods: NetworkRanges
    services: NetworkRanges
    serviceDomain: str
    apiServerPort: int


class APIEndpoint(TypedDict, total=False):
    host: str
    port: int


class ClusterSpec(TypedDict, total=False):
    paused: bool
    clusterNetwork: ClusterNetwork
    controlPlaneEndpoint: APIEndpoint


class Cluster(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: ClusterSpec
    status: dict[str, Any]


class MachineAddress(TypedDict):
    type: str  # Hostname, ExternalIP, InternalIP, ExternalDNS, InternalDNS
    address: str


class ObjectReference(TypedDict, total=False):
    apiVersion: str
    kind: str
    name: str
    namespace: str
    uid: str


class MachineSpec(TypedDict, total=False):
    clusterName: str


class MachineStatus(TypedDict, total=False):
    nodeRef: ObjectReference
    addresses: list[MachineAddress]
    phase: str
    # v1beta1 conditions (DrainingSucceeded, ...) and, under v1beta2, the new ones
    # (Deleting): read only by reconcile/machine_deletion.py.
    conditions: list[dict[str, Any]]
    v1beta2: dict[str, Any]


class Machine(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: MachineSpec
    status: MachineStatus


# --- core/v1 Node of the tenant cluster (read for podCIDRs) ---------------------------------


class NodeSpec(TypedDict, total=False):
    podCIDR: str
    podCIDRs: list[str]


class Node(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: NodeSpec


# --- vpnctl.io/v1alpha1 Tunnel (ours) ------------------------------------------------------


class TransportSpec(TypedDict, total=False):
    protocol: Literal["udp", "tcp"]
    port: int
    renegotiateSeconds: int  # openvpn's reneg-sec, on the server and every client


class ExposeSpec(TypedDict, total=False):
    serviceType: Literal["ClusterIP", "NodePort", "LoadBalancer"]
    annotations: dict[str, str]


class CertificatesSpec(TypedDict, total=False):
    caLifetime: str  # a Go duration, e.g. "87600h"
    serverLifetime: str
    clientLifetime: str
    renewFraction: float


class AgentSpec(TypedDict, total=False):
    install: bool
    image: str


class NodeRevocationSpec(TypedDict, total=False):
    maxDelay: str  # Go duration; see reconcile/machine_deletion.py


class TunnelSpecBody(TypedDict, total=False):
    clusterName: str
    transport: TransportSpec
    expose: ExposeSpec
    tunnelCIDR: str
    extraRoutes: list[str]
    replicas: int
    certificates: CertificatesSpec
    agent: AgentSpec
    nodeRevocation: NodeRevocationSpec


class TunnelNodeStatus(TypedDict, total=False):
    """One row of the Tunnel's node table."""

    name: str
    machine: str
    tunnelIP: str
    connected: bool
    since: str  # RFC 3339; when `connected` last changed
    # RFC 3339; openvpn's connect time of the current connection, as the server reports
    # it; only while connected and known.
    connectedSince: str
    rttSeconds: float  # the server's last kubelet probe through the tunnel
    kubeletReachable: bool


class TunnelAllocation(TypedDict):
    """The durable record of a node's tunnel address: what keeps it across restarts."""

    machine: str
    node: str
    tunnelIP: str
    # Hex serials of this node's certificates that may still be valid, oldest first:
    # revoked when the Machine goes.
    serials: NotRequired[list[str]]
    # The node's own podCIDRs the last plan routed through its tunnel: the plan's
    # fallback while the tenant's Nodes are not listed yet (a controller restart), so a
    # restart does not move every node's pods to the elected node and back.
    podCIDRs: NotRequired[list[str]]


class TunnelStatusBody(TypedDict, total=False):
    observedGeneration: int
    conditions: list[Condition]
    nodes: list[TunnelNodeStatus]
    allocations: list[TunnelAllocation]
    # Addresses released by deleted Machines, oldest first; reused only when no
    # never-used address is left (see vpnctl.reconcile.allocation).
    releasedTunnelIPs: list[str]
    serviceRouteNode: str
    # When serviceRouteNode was elected: its grace for the kick the election causes
    # (reconcile/service_route_election.py).
    serviceRouteElectedAt: str
    # The agent image the tenant's objects are built with, and, while a rollout of the
    # controller's --agent-image moves it there and it is not Ready with it yet, since
    # when (reconcile/image_rollout.py).
    agentImage: str
    agentImageRollingSince: str
    nodeCount: int
    connectedCount: int


class Tunnel(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: TunnelSpecBody
    status: TunnelStatusBody
