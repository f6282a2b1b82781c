"""Parse and validate one tenant's inputs into a `TenantSpec`, before anything is built.

Everything the controller reads (the CAPI Cluster and Machines, our Tunnel, the tenant's
Nodes) is untrusted JSON. This module turns it into typed, checked values once, so the
builders below it never meet a malformed CIDR or a missing field.

Two tiers of trouble, as the loop needs them:

- A problem with the *tenant as a whole* (overlapping CIDRs, a Cluster without
  clusterNetwork, CIDR text that does not parse) raises `PermanentError`: nothing is built,
  a condition is reported, and the loop waits for the spec to change.
- A problem with *one Machine* (no nodeRef yet, no InternalIP yet, a node name that cannot
  be a certificate common name) does not stop the tenant: that Machine is listed in
  `TenantSpec.pending` with its error and the other nodes carry on.

The defaults applied here are the CRD's defaults (charts/vpnctl/crds/); a test keeps the
two in step. They are applied again here because objects written before a default existed,
and unit tests, do not pass through the apiserver's defaulting.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Literal, cast

from vpnctl.api import (
    CAPI_CLUSTER_NAME_LABEL,
    Cluster,
    Machine,
    Node,
    Tunnel,
)
from vpnctl.reconcile.cidr import parse_address, parse_network
from vpnctl.reconcile.durations import parse_duration
from vpnctl.reconcile.errors import PermanentError, ReconcileError, TemporaryError

Protocol = Literal["udp", "tcp"]
ServiceType = Literal["ClusterIP", "NodePort", "LoadBalancer"]

PROTOCOLS: tuple[Protocol, ...] = ("udp", "tcp")
SERVICE_TYPES: tuple[ServiceType, ...] = ("ClusterIP", "NodePort", "LoadBalancer")

# The default tunnel CIDR: the last /24 of the shared address space 100.64.0.0/10
# (RFC 6598, "CGNAT"). Why there:
# - Tenants number their node, pod and service networks from RFC 1918 space (10/8,
#   172.16/12, 192.168/16; kubeadm's 10.96.0.0/12 and the CNIs' 10.244/16, 192.168/16), so
#   a default inside RFC 1918 is the likeliest to collide.
# - 100.64.0.0/10 is never routed on the internet. Its known users start at the bottom:
#   EKS custom pod networking (100.64.0.0/16 and up), OVN-Kubernetes' join and transit
#   switches (100.64.0.0/16, 100.88.0.0/16), ISPs' CGNAT pools. The top /24 is the
#   farthest from all of them.
# - 198.18.0.0/15 (the lab's range) is for benchmarking and must not ship as a default.
# It is still only a default: it is validated against the tenant's CIDRs like any other,
# and a tenant that collides sets spec.tunnelCIDR. A /24 holds 252 nodes; widening it to a
# covering network (/23 = 100.127.254.0/23) keeps every node's address.
DEFAULT_TUNNEL_CIDR = "100.127.255.0/24"
DEFAULT_PROTOCOL: Protocol = "udp"
DEFAULT_PORT = 1194
DEFAULT_SERVICE_TYPE: ServiceType = "LoadBalancer"
DEFAULT_REPLICAS = 1
MAX_REPLICAS = 5
DEFAULT_CA_LIFETIME = "87600h"  # 10 years: rotating a CA means re-issuing every node
DEFAULT_SERVER_LIFETIME = "8760h"  # 1 year
DEFAULT_CLIENT_LIFETIME = "720h"  # 30 days: renewal is hitless, so keep them short
DEFAULT_RENEW_FRACTION = 0.66
MIN_LIFETIME = timedelta(hours=1)
# Tunnel CIDR prefix lengths: /29 is the smallest that leaves a node address after the
# network, the server (.1), the apiserver client (.2) and broadcast; /16 is plenty.
DEFAULT_KUBELET_PORT = 10250
MIN_TUNNEL_PREFIX = 16
MAX_TUNNEL_PREFIX = 29

# The apiserver sidecar's certificate common name. Node certificates carry the node name,
# so a node with this name is refused (it would collide in the server's CCD directory).
APISERVER_COMMON_NAME = "vpnctl-apiserver"
# openvpn CCD file names and X.509 CNs: DNS-1123 subdomain, at most 64 characters.
_MAX_COMMON_NAME = 64
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@dataclass(frozen=True, kw_only=True)
class Transport:
    protocol: Protocol
    port: int


@dataclass(frozen=True, kw_only=True)
class Expose:
    service_type: ServiceType
    # Sorted (key, value) pairs: hashable and deterministic.
    annotations: tuple[tuple[str, str], ...]


@dataclass(frozen=True, kw_only=True)
class CertificateLifetimes:
    ca: timedelta
    server: timedelta
    client: timedelta
    renew_fraction: float


@dataclass(frozen=True, kw_only=True)
class TunnelSpec:
    """A Tunnel's spec with every default applied and every value checked."""

    cluster_name: str
    transport: Transport
    expose: Expose
    tunnel_cidr: IPv4Network
    extra_routes: tuple[IPv4Network, ...]
    replicas: int
    certificates: CertificateLifetimes
    install_agent: bool

    @property
    def server_ip(self) -> IPv4Address:
        """The server's tunnel address: the first host (openvpn's `server` helper takes it)."""
        return self.tunnel_cidr.network_address + 1

    @property
    def apiserver_ip(self) -> IPv4Address:
        """The apiserver sidecar's tunnel address: the second host."""
        return self.tunnel_cidr.network_address + 2


@dataclass(frozen=True, kw_only=True)
class ClusterNetworks:
    """The tenant's networks, from `Cluster.spec.clusterNetwork` (IPv4 blocks only)."""

    pods: tuple[IPv4Network, ...]
    services: tuple[IPv4Network, ...]
    endpoint_host: str | None
    endpoint_port: int | None


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
class TenantSpec:
    namespace: str
    tunnel_name: str
    tunnel_uid: str
    generation: int
    spec: TunnelSpec
    networks: ClusterNetworks
    members: tuple[Member, ...]  # sorted by machine name
    pending: tuple[PendingMachine, ...]  # sorted by machine name
    # Things worth a log line that change nothing (an ignored podCIDR, an IPv6 block).
    warnings: tuple[str, ...]

    @property
    def cluster_name(self) -> str:
        return self.spec.cluster_name

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.tunnel_name}"


# --- small typed readers over untrusted JSON --------------------------------------------


def _mapping(value: object, *, field: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise PermanentError(
            reason="InvalidSpec", message=f"{field} must be an object, got {value!r}"
        )
    return cast(Mapping[str, Any], value)


def _str_list(value: object, *, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PermanentError(
            reason="InvalidSpec", message=f"{field} must be a list of strings, got {value!r}"
        )
    return list(value)


def _int(value: object, *, field: str, default: int, low: int, high: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise PermanentError(
            reason="InvalidSpec",
            message=f"{field} must be an integer in {low}..{high}, got {value!r}; fix {field}",
        )
    return value


def _choice(value: object, *, field: str, default: str, choices: Sequence[str]) -> str:
    if value is None:
        return default
    if value not in choices:
        raise PermanentError(
            reason="InvalidSpec",
            message=f"{field} must be one of {', '.join(choices)}, got {value!r}; fix {field}",
        )
    return cast(str, value)


def _lifetime(value: object, *, field: str, default: str) -> timedelta:
    text = default if value is None else value
    try:
        lifetime = parse_duration(cast(str, text))
    except ValueError as exc:
        raise PermanentError(reason="InvalidSpec", message=f"{field}: {exc}; fix {field}") from None
    if lifetime < MIN_LIFETIME:
        raise PermanentError(
            reason="InvalidSpec",
            message=f"{field} {text} is shorter than the minimum of 1h; fix {field}",
        )
    return lifetime


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return _mapping(obj.get("metadata"), field="metadata")


def _name_of(obj: Mapping[str, Any]) -> str:
    name = _meta(obj).get("name")
    return name if isinstance(name, str) else ""


# --- the Tunnel's spec --------------------------------------------------------------------


def parse_tunnel_spec(tunnel: Tunnel) -> TunnelSpec:
    """The Tunnel's spec with defaults applied; PermanentError(InvalidSpec|InvalidCIDR)."""
    name = _name_of(cast(Mapping[str, Any], tunnel))
    where = f"Tunnel {_meta(cast(Mapping[str, Any], tunnel)).get('namespace', '')}/{name}"
    spec = _mapping(tunnel.get("spec"), field=f"spec of {where}")

    cluster_name = spec.get("clusterName") or name
    if not isinstance(cluster_name, str) or not cluster_name:
        raise PermanentError(
            reason="InvalidSpec",
            message=f"spec.clusterName of {where} must be a Cluster name, got {cluster_name!r}",
        )

    transport = _mapping(spec.get("transport"), field="spec.transport")
    protocol = _choice(
        transport.get("protocol"),
        field="spec.transport.protocol",
        default=DEFAULT_PROTOCOL,
        choices=PROTOCOLS,
    )
    port = _int(
        transport.get("port"), field="spec.transport.port", default=DEFAULT_PORT, low=1, high=65535
    )

    expose = _mapping(spec.get("expose"), field="spec.expose")
    service_type = _choice(
        expose.get("serviceType"),
        field="spec.expose.serviceType",
        default=DEFAULT_SERVICE_TYPE,
        choices=SERVICE_TYPES,
    )
    annotations = _mapping(expose.get("annotations"), field="spec.expose.annotations")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()):
        raise PermanentError(
            reason="InvalidSpec",
            message=f"spec.expose.annotations of {where} must map strings to strings",
        )

    fix = "set spec.tunnelCIDR"
    tunnel_cidr = parse_network(
        spec.get("tunnelCIDR") or DEFAULT_TUNNEL_CIDR, field=f"spec.tunnelCIDR of {where}", fix=fix
    )
    if not MIN_TUNNEL_PREFIX <= tunnel_cidr.prefixlen <= MAX_TUNNEL_PREFIX:
        raise PermanentError(
            reason="InvalidCIDR",
            message=(
                f"spec.tunnelCIDR {tunnel_cidr} of {where} must have a prefix length from "
                f"/{MIN_TUNNEL_PREFIX} to /{MAX_TUNNEL_PREFIX}; {fix}"
            ),
        )
    extra_routes = tuple(
        parse_network(text, field=f"spec.extraRoutes[{i}] of {where}", fix="fix spec.extraRoutes")
        for i, text in enumerate(_str_list(spec.get("extraRoutes"), field="spec.extraRoutes"))
    )

    replicas = _int(
        spec.get("replicas"),
        field="spec.replicas",
        default=DEFAULT_REPLICAS,
        low=1,
        high=MAX_REPLICAS,
    )

    certs = _mapping(spec.get("certificates"), field="spec.certificates")
    lifetimes = CertificateLifetimes(
        ca=_lifetime(
            certs.get("caLifetime"),
            field="spec.certificates.caLifetime",
            default=DEFAULT_CA_LIFETIME,
        ),
        server=_lifetime(
            certs.get("serverLifetime"),
            field="spec.certificates.serverLifetime",
            default=DEFAULT_SERVER_LIFETIME,
        ),
        client=_lifetime(
            certs.get("clientLifetime"),
            field="spec.certificates.clientLifetime",
            default=DEFAULT_CLIENT_LIFETIME,
        ),
        renew_fraction=_renew_fraction(certs.get("renewFraction")),
    )
    for leaf, lifetime in (("server", lifetimes.server), ("client", lifetimes.client)):
        if lifetime >= lifetimes.ca:
            raise PermanentError(
                reason="InvalidSpec",
                message=(
                    f"spec.certificates.{leaf}Lifetime of {where} must be shorter than "
                    f"caLifetime, or every {leaf} certificate is cut short at the CA's "
                    f"expiry; fix spec.certificates"
                ),
            )

    agent = _mapping(spec.get("agent"), field="spec.agent")
    install = agent.get("install", True)
    if not isinstance(install, bool):
        raise PermanentError(
            reason="InvalidSpec",
            message=f"spec.agent.install must be true or false, got {install!r}",
        )

    return TunnelSpec(
        cluster_name=cluster_name,
        transport=Transport(protocol=cast(Protocol, protocol), port=port),
        expose=Expose(
            service_type=cast(ServiceType, service_type),
            annotations=tuple(sorted(annotations.items())),
        ),
        tunnel_cidr=tunnel_cidr,
        extra_routes=extra_routes,
        replicas=replicas,
        certificates=lifetimes,
        install_agent=install,
    )


def _renew_fraction(value: object) -> float:
    if value is None:
        return DEFAULT_RENEW_FRACTION
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.1 <= value <= 0.9:
        raise PermanentError(
            reason="InvalidSpec",
            message=(
                f"spec.certificates.renewFraction must be a number from 0.1 to 0.9, got "
                f"{value!r}; fix spec.certificates.renewFraction"
            ),
        )
    return float(value)


# --- the Cluster ----------------------------------------------------------------------------


def parse_cluster_networks(cluster: Cluster) -> tuple[ClusterNetworks, tuple[str, ...]]:
    """The Cluster's IPv4 pod and service CIDRs and endpoint, plus warnings.

    PermanentError(MissingClusterNetwork) when there is no clusterNetwork or it names no
    IPv4 pod or service block: without them there is nothing to route.
    """
    raw = cast(Mapping[str, Any], cluster)
    meta = _meta(raw)
    where = f"Cluster {meta.get('namespace', '')}/{meta.get('name', '')}"
    spec = _mapping(raw.get("spec"), field=f"spec of {where}")
    network = spec.get("clusterNetwork")
    if not network:
        raise PermanentError(
            reason="MissingClusterNetwork",
            message=(
                f"{where} has no spec.clusterNetwork, so its pod and service CIDRs are "
                "unknown and cannot be routed; set spec.clusterNetwork.pods.cidrBlocks and "
                "spec.clusterNetwork.services.cidrBlocks"
            ),
        )
    network = _mapping(network, field=f"spec.clusterNetwork of {where}")
    warnings: list[str] = []
    blocks: dict[str, tuple[IPv4Network, ...]] = {}
    for kind in ("pods", "services"):
        field = f"spec.clusterNetwork.{kind}.cidrBlocks"
        texts = _str_list(
            _mapping(network.get(kind), field=f"spec.clusterNetwork.{kind}").get("cidrBlocks"),
            field=field,
        )
        nets: list[IPv4Network] = []
        for i, text in enumerate(texts):
            if ":" in text:
                warnings.append(f"{where} {field}[{i}] {text} is IPv6; the tunnel routes IPv4 only")
                continue
            nets.append(parse_network(text, field=f"{field}[{i}] of {where}", fix=f"fix {field}"))
        if not nets:
            raise PermanentError(
                reason="MissingClusterNetwork",
                message=(
                    f"{where} has no IPv4 block in {field}, so its {kind} cannot be routed "
                    f"through the tunnel; set {field}"
                ),
            )
        blocks[kind] = tuple(nets)

    endpoint = _mapping(spec.get("controlPlaneEndpoint"), field="spec.controlPlaneEndpoint")
    host = endpoint.get("host")
    port = endpoint.get("port")
    return (
        ClusterNetworks(
            pods=blocks["pods"],
            services=blocks["services"],
            endpoint_host=host if isinstance(host, str) and host else None,
            endpoint_port=port if isinstance(port, int) and not isinstance(port, bool) else None,
        ),
        tuple(warnings),
    )


# --- overlaps -------------------------------------------------------------------------------


def check_overlaps(
    *,
    spec: TunnelSpec,
    networks: ClusterNetworks,
    reserved: Sequence[IPv4Network] = (),
) -> None:
    """PermanentError(CIDROverlap) naming the first pair of networks that must not overlap.

    - The tunnel CIDR against each tenant network (pods, services, extra routes), the
      control plane endpoint, and the service cluster's own networks (`reserved`).
    - The tenant's pods against its services.
    - Every tenant network against `reserved`: the hosted apiserver pod lives in the
      service cluster and routes all of them into tun.
    """
    tunnel = spec.tunnel_cidr
    fix_tunnel = "set spec.tunnelCIDR"
    named: list[tuple[str, IPv4Network, str]] = []
    named += [("the cluster's pod CIDR", n, "spec.clusterNetwork.pods") for n in networks.pods]
    named += [
        ("the cluster's service CIDR", n, "spec.clusterNetwork.services") for n in networks.services
    ]
    named += [("the extra route", n, "spec.extraRoutes") for n in spec.extra_routes]
    for what, net, _ in named:
        if tunnel.overlaps(net):
            raise PermanentError(
                reason="CIDROverlap",
                message=f"tunnel CIDR {tunnel} overlaps {what} {net}; {fix_tunnel}",
            )
    endpoint = parse_address(networks.endpoint_host)
    if endpoint is not None and endpoint in tunnel:
        raise PermanentError(
            reason="CIDROverlap",
            message=(
                f"tunnel CIDR {tunnel} contains the control plane endpoint {endpoint}, which "
                f"the nodes must reach directly; {fix_tunnel}"
            ),
        )
    for net in reserved:
        if tunnel.overlaps(net):
            raise PermanentError(
                reason="CIDROverlap",
                message=(
                    f"tunnel CIDR {tunnel} overlaps the service cluster's network {net}, "
                    f"where the hosted apiserver runs; {fix_tunnel}"
                ),
            )
    for pods in networks.pods:
        for services in networks.services:
            if pods.overlaps(services):
                raise PermanentError(
                    reason="CIDROverlap",
                    message=(
                        f"the cluster's pod CIDR {pods} overlaps its service CIDR {services}; "
                        "fix spec.clusterNetwork of the Cluster"
                    ),
                )
    for what, net, field in named:
        for res in reserved:
            if net.overlaps(res):
                raise PermanentError(
                    reason="CIDROverlap",
                    message=(
                        f"{what} {net} overlaps the service cluster's network {res}: the "
                        f"hosted apiserver could not tell them apart; change {field}"
                    ),
                )


# --- Machines and Nodes --------------------------------------------------------------------


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
        name = _name_of(raw)
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
    meta = _meta(machine)
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
) -> tuple[tuple[Member, ...], tuple[PendingMachine, ...], tuple[str, ...]]:
    """Split the Cluster's live Machines into members and pending ones, plus warnings.

    Machines of other clusters or namespaces are ignored. A Machine being deleted
    (metadata.deletionTimestamp set) is treated as gone, so its node is revoked at once.
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
        and not _meta(cast(Mapping[str, Any], m)).get("deletionTimestamp")
    ]
    for machine in sorted(own, key=_name_of):
        name = _name_of(machine)
        where = f"Machine {namespace}/{name}"
        status = _mapping(machine.get("status"), field=f"status of {where}")
        node_ref = _mapping(status.get("nodeRef"), field=f"status.nodeRef of {where}")
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


def parse_tenant(
    *,
    tunnel: Tunnel,
    cluster: Cluster,
    machines: Sequence[Machine],
    nodes: Sequence[Node] | None = None,
    reserved: Sequence[IPv4Network] = (),
) -> TenantSpec:
    """Everything the builders need about one tenant, checked.

    `nodes` are the tenant cluster's Node objects when the tenant apiserver is reachable
    (for per-node pod CIDRs); None when it is not, which only loses per-node pod routes.
    `reserved` are the service cluster's own networks (`Settings.reserved_cidrs`).
    Raises PermanentError for a problem with the tenant as a whole; a problem with one
    Machine is in `pending` instead.
    """
    raw_tunnel = cast(Mapping[str, Any], tunnel)
    meta = _meta(raw_tunnel)
    namespace = str(meta.get("namespace", ""))
    spec = parse_tunnel_spec(tunnel)
    cluster_meta = _meta(cast(Mapping[str, Any], cluster))
    if (
        cluster_meta.get("name") != spec.cluster_name
        or cluster_meta.get("namespace", namespace) != namespace
    ):
        raise PermanentError(
            reason="ClusterMismatch",
            message=(
                f"Tunnel {namespace}/{meta.get('name')} is for Cluster {namespace}/"
                f"{spec.cluster_name}, but was given Cluster {cluster_meta.get('namespace')}/"
                f"{cluster_meta.get('name')}"
            ),
        )
    networks, warnings = parse_cluster_networks(cluster)
    check_overlaps(spec=spec, networks=networks, reserved=reserved)
    members, pending, machine_warnings = parse_machines(
        machines,
        namespace=namespace,
        cluster_name=spec.cluster_name,
        facts=node_facts(nodes or ()),
        tenant_pods=networks.pods,
    )
    fix_tunnel = "set spec.tunnelCIDR"
    for member in members:
        if member.internal_ip in spec.tunnel_cidr:
            raise PermanentError(
                reason="CIDROverlap",
                message=(
                    f"tunnel CIDR {spec.tunnel_cidr} contains node {member.node}'s InternalIP "
                    f"{member.internal_ip}; the nodes' own network would be routed into the "
                    f"tunnel; {fix_tunnel}"
                ),
            )
        for res in reserved:
            if member.internal_ip in res:
                raise PermanentError(
                    reason="CIDROverlap",
                    message=(
                        f"node {member.node}'s InternalIP {member.internal_ip} is inside the "
                        f"service cluster's network {res}: the hosted apiserver could not "
                        "reach it through the tunnel; renumber the tenant's nodes or remove "
                        f"{res} from the controller's reserved CIDRs if it is wrong"
                    ),
                )
    generation = meta.get("generation", 0)
    uid = meta.get("uid", "")
    return TenantSpec(
        namespace=namespace,
        tunnel_name=str(meta.get("name", "")),
        tunnel_uid=uid if isinstance(uid, str) else "",
        generation=generation if isinstance(generation, int) else 0,
        spec=spec,
        networks=networks,
        members=members,
        pending=pending,
        warnings=warnings + machine_warnings,
    )
