"""The Cluster's Machines and the tenant's Nodes: who gets a tunnel, and who waits.

A problem with *one Machine* (no nodeRef yet, no InternalIP yet, a node name that cannot
be a certificate common name, two Machines claiming one node) does not stop the tenant:
that Machine is a `PendingMachine` with its error and the other nodes carry on.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network
from typing import Any, cast

from vpnctl.api import CAPI_CLUSTER_NAME_LABEL, Machine, Node
from vpnctl.reconcile.cidr import parse_address, parse_network
from vpnctl.reconcile.errors import PermanentError, ReconcileError, TemporaryError
from vpnctl.reconcile.untrusted_json import field_mapping, metadata_of, name_of

DEFAULT_KUBELET_PORT = 10250
# The apiserver sidecar's certificate common name. Node certificates carry the node name,
# so a node with this name is refused (it would collide in the server's CCD directory).
APISERVER_COMMON_NAME = "vpnctl-apiserver"
# openvpn CCD file names and X.509 CNs: DNS-1123 subdomain, at most 64 characters.
_MAX_COMMON_NAME = 64
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@dataclass(frozen=True, kw_only=True)
class Member:
    """A Machine whose node has joined: it gets a tunnel address, a certificate and routes."""

    machine: str
    node: str
    internal_ip: IPv4Address
    # From the tenant's Node object, when known; empty if the CNI does not use
    # Node.spec.podCIDRs (the elected node then carries the cluster's pod CIDR).
    pod_cidrs: tuple[IPv4Network, ...] = ()
    kubelet_port: int = DEFAULT_KUBELET_PORT


@dataclass(frozen=True, kw_only=True)
class PendingMachine:
    """A Machine that gets no tunnel yet, and why. The rest of the tenant is unaffected."""

    machine: str
    node: str | None
    # TemporaryError: will resolve by itself (no nodeRef yet). PermanentError: someone must
    # act (a node name that cannot be a certificate CN).
    error: ReconcileError


@dataclass(frozen=True, kw_only=True)
class NodeFacts:
    """What the tenant cluster's Node object adds to a Machine."""

    pod_cidrs: tuple[IPv4Network, ...] = ()
    kubelet_port: int = DEFAULT_KUBELET_PORT


def node_facts(nodes: Sequence[Node]) -> dict[str, NodeFacts]:
    """Node name -> its IPv4 pod CIDRs and kubelet port, from the tenant's Node objects.

    Unparseable entries are dropped: that node's pods are then not routed per node (the
    elected node may still carry the whole pod CIDR, see routes.py).
    """
    result: dict[str, NodeFacts] = {}
    for node in nodes:
        raw = cast(Mapping[str, Any], node)
        name = name_of(raw)
        if not name:
            continue
        spec = raw.get("spec")
        spec = spec if isinstance(spec, Mapping) else {}
        texts = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
        nets: list[IPv4Network] = []
        for text in texts if isinstance(texts, list) else []:
            try:
                nets.append(parse_network(text, field="podCIDR", fix=""))
            except PermanentError:
                continue
        port: object = None
        status = raw.get("status")
        if isinstance(status, Mapping):
            endpoints = status.get("daemonEndpoints")
            if isinstance(endpoints, Mapping):
                kubelet = endpoints.get("kubeletEndpoint")
                if isinstance(kubelet, Mapping):
                    port = kubelet.get("Port")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            port = DEFAULT_KUBELET_PORT
        result[name] = NodeFacts(pod_cidrs=tuple(sorted(set(nets))), kubelet_port=port)
    return result


def _belongs(machine: Mapping[str, Any], *, namespace: str, cluster_name: str) -> bool:
    meta = metadata_of(machine)
    if meta.get("namespace", namespace) != namespace:
        return False
    spec = machine.get("spec")
    if isinstance(spec, Mapping) and spec.get("clusterName") is not None:
        return bool(spec.get("clusterName") == cluster_name)
    labels = meta.get("labels")
    return isinstance(labels, Mapping) and labels.get(CAPI_CLUSTER_NAME_LABEL) == cluster_name


def _internal_ip(status: Mapping[str, Any]) -> IPv4Address | None:
    addresses = status.get("addresses")
    if not isinstance(addresses, list):
        return None
    for entry in addresses:
        if isinstance(entry, Mapping) and entry.get("type") == "InternalIP":
            addr = parse_address(entry.get("address"))
            if addr is not None:
                return addr
    return None


def _check_node_name(node: str, *, where: str) -> PermanentError | None:
    if len(node) > _MAX_COMMON_NAME or not _DNS1123_SUBDOMAIN.fullmatch(node):
        return PermanentError(
            reason="InvalidNodeName",
            message=(
                f"node name {node!r} of {where} cannot be a certificate common name (a "
                f"DNS-1123 name of at most {_MAX_COMMON_NAME} characters); this node gets "
                "no tunnel until it is renamed"
            ),
        )
    if node == APISERVER_COMMON_NAME:
        return PermanentError(
            reason="InvalidNodeName",
            message=(
                f"node name {node!r} of {where} is reserved for the apiserver's tunnel "
                "client; this node gets no tunnel until it is renamed"
            ),
        )
    return None


def parse_machines(
    machines: Sequence[Machine],
    *,
    namespace: str,
    cluster_name: str,
    facts: Mapping[str, NodeFacts],
    tenant_pods: Sequence[IPv4Network],
    kept: Collection[str] = (),
) -> tuple[tuple[Member, ...], tuple[PendingMachine, ...], tuple[str, ...]]:
    """Split the Cluster's live Machines into members and pending ones, plus warnings.

    Machines of other clusters or namespaces are ignored. A Machine being deleted
    (metadata.deletionTimestamp set) is treated as gone, so its node is revoked, unless
    ``kept`` names it: its node keeps its tunnel until drained (``machine_deletion``).
    Ties (two Machines claiming one node name or InternalIP) go to the Machine whose name
    sorts first; the other is pending with a PermanentError.
    """
    members: list[Member] = []
    pending: list[PendingMachine] = []
    warnings: list[str] = []
    nodes_seen: dict[str, str] = {}
    ips_seen: dict[IPv4Address, str] = {}
    own = [
        cast(Mapping[str, Any], m)
        for m in machines
        if _belongs(cast(Mapping[str, Any], m), namespace=namespace, cluster_name=cluster_name)
        and (
            not metadata_of(cast(Mapping[str, Any], m)).get("deletionTimestamp")
            or name_of(cast(Mapping[str, Any], m)) in kept
        )
    ]
    for machine in sorted(own, key=name_of):
        name = name_of(machine)
        where = f"Machine {namespace}/{name}"
        status = field_mapping(machine.get("status"), field=f"status of {where}")
        node_ref = field_mapping(status.get("nodeRef"), field=f"status.nodeRef of {where}")
        node = node_ref.get("name")
        if not isinstance(node, str) or not node:
            pending.append(
                PendingMachine(
                    machine=name,
                    node=None,
                    error=TemporaryError(
                        reason="WaitingForNodeRef",
                        message=(
                            f"{where} has no status.nodeRef yet; its node gets a tunnel "
                            "address once it has joined the cluster"
                        ),
                    ),
                )
            )
            continue
        bad_name = _check_node_name(node, where=where)
        if bad_name is not None:
            pending.append(PendingMachine(machine=name, node=node, error=bad_name))
            continue
        ip = _internal_ip(status)
        if ip is None:
            pending.append(
                PendingMachine(
                    machine=name,
                    node=node,
                    error=TemporaryError(
                        reason="WaitingForAddresses",
                        message=(
                            f"{where} (node {node}) has no IPv4 InternalIP in "
                            "status.addresses yet; the node is routed once its "
                            "infrastructure provider reports one"
                        ),
                    ),
                )
            )
            continue
        if node in nodes_seen:
            pending.append(
                PendingMachine(
                    machine=name,
                    node=node,
                    error=PermanentError(
                        reason="DuplicateNode",
                        message=(
                            f"{where} and Machine {namespace}/{nodes_seen[node]} both claim "
                            f"node {node}; delete the stale Machine"
                        ),
                    ),
                )
            )
            continue
        if ip in ips_seen:
            pending.append(
                PendingMachine(
                    machine=name,
                    node=node,
                    error=PermanentError(
                        reason="DuplicateInternalIP",
                        message=(
                            f"{where} (node {node}) reports InternalIP {ip}, already used by "
                            f"Machine {namespace}/{ips_seen[ip]}; only one node can be routed "
                            "at an address, delete the stale Machine"
                        ),
                    ),
                )
            )
            continue
        nodes_seen[node] = name
        ips_seen[ip] = name
        port = facts[node].kubelet_port if node in facts else DEFAULT_KUBELET_PORT
        members.append(Member(machine=name, node=node, internal_ip=ip, kubelet_port=port))

    # Pod CIDRs in a second pass, once every member's address is known: each must lie in
    # the cluster's pod CIDRs, overlap no other node's, and contain no node address, or
    # two tunnel clients would claim the same addresses.
    assigned: list[tuple[IPv4Network, str]] = []
    with_pods: list[Member] = []
    for member in members:
        own_pod_cidrs: list[IPv4Network] = []
        for net in facts[member.node].pod_cidrs if member.node in facts else ():
            clash = next((who for other, who in assigned if other.overlaps(net)), None)
            holder = next((m.node for m in members if m.internal_ip in net), None)
            if not any(net.subnet_of(p) for p in tenant_pods):
                warnings.append(
                    f"node {member.node} podCIDR {net} is outside the cluster's pod CIDRs "
                    f"{', '.join(map(str, tenant_pods))}; its pods are not routed to it"
                )
            elif clash is not None:
                warnings.append(
                    f"node {member.node} podCIDR {net} overlaps node {clash}'s; its pods are "
                    "not routed to it"
                )
            elif holder is not None:
                warnings.append(
                    f"node {member.node} podCIDR {net} contains node {holder}'s InternalIP; "
                    "its pods are not routed to it"
                )
            else:
                assigned.append((net, member.node))
                own_pod_cidrs.append(net)
        with_pods.append(replace(member, pod_cidrs=tuple(own_pod_cidrs)))
    return tuple(with_pods), tuple(pending), tuple(warnings)
