"""The Tunnel's spec, parsed and checked with every default applied (`TunnelSpec`).

The defaults here are the CRD's defaults (charts/vpnctl/files/crds/); a test keeps the
two in step. They are applied again here because objects written before a default
existed, and unit tests, do not pass through the apiserver's defaulting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Literal, cast

from vpnctl.api import Tunnel
from vpnctl.reconcile.cidr import parse_network
from vpnctl.reconcile.container_resources import (
    COMPONENTS,
    NO_OVERRIDES,
    ContainerResources,
    ResourceOverrides,
    resources_from_body,
)
from vpnctl.reconcile.durations import parse_duration
from vpnctl.reconcile.errors import PermanentError
from vpnctl.reconcile.untrusted_json import (
    field_choice,
    field_int,
    field_mapping,
    field_str_list,
    metadata_of,
    name_of,
)

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
# Seconds between TLS renegotiations (openvpn's reneg-sec and its default). The bounds
# are the agent's (agent.openvpn.config.MIN_RENEG_SEC/MAX_RENEG_SEC): a role config with
# another value would be refused by every agent at start.
DEFAULT_RENEGOTIATE_SECONDS = 3600
MIN_RENEGOTIATE_SECONDS = 10
MAX_RENEGOTIATE_SECONDS = 86400
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
MIN_TUNNEL_PREFIX = 16
MAX_TUNNEL_PREFIX = 29


@dataclass(frozen=True, kw_only=True)
class Transport:
    protocol: Protocol
    port: int
    renegotiate_seconds: int = DEFAULT_RENEGOTIATE_SECONDS


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
    # spec.agent.image: this tenant's agent image (server, sidecar, node agent), pinned
    # over the controller's --agent-image; None: the controller's.
    agent_image: str | None = None
    resources: ResourceOverrides = NO_OVERRIDES
    # spec.nodeRevocation.maxDelay: how long after a Machine's deletionTimestamp its node
    # keeps its tunnel at most (machine_deletion.py); None: the controller's default.
    node_revocation_max_delay: timedelta | None = None

    @property
    def server_ip(self) -> IPv4Address:
        """The server's tunnel address: the first host (openvpn's `server` helper takes it)."""
        return self.tunnel_cidr.network_address + 1

    @property
    def apiserver_ip(self) -> IPv4Address:
        """The apiserver sidecar's tunnel address: the second host."""
        return self.tunnel_cidr.network_address + 2


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


# --- the Tunnel's spec --------------------------------------------------------------------


def parse_tunnel_spec(tunnel: Tunnel) -> TunnelSpec:
    """The Tunnel's spec with defaults applied; PermanentError(InvalidSpec|InvalidCIDR)."""
    name = name_of(cast(Mapping[str, Any], tunnel))
    where = f"Tunnel {metadata_of(cast(Mapping[str, Any], tunnel)).get('namespace', '')}/{name}"
    spec = field_mapping(tunnel.get("spec"), field=f"spec of {where}")

    cluster_name = spec.get("clusterName") or name
    if not isinstance(cluster_name, str) or not cluster_name:
        raise PermanentError(
            reason="InvalidSpec",
            message=f"spec.clusterName of {where} must be a Cluster name, got {cluster_name!r}",
        )

    transport = field_mapping(spec.get("transport"), field="spec.transport")
    protocol = field_choice(
        transport.get("protocol"),
        field="spec.transport.protocol",
        default=DEFAULT_PROTOCOL,
        choices=PROTOCOLS,
    )
    port = field_int(
        transport.get("port"), field="spec.transport.port", default=DEFAULT_PORT, low=1, high=65535
    )
    renegotiate_seconds = _renegotiate_seconds(transport.get("renegotiateSeconds"), where=where)

    expose = field_mapping(spec.get("expose"), field="spec.expose")
    service_type = field_choice(
        expose.get("serviceType"),
        field="spec.expose.serviceType",
        default=DEFAULT_SERVICE_TYPE,
        choices=SERVICE_TYPES,
    )
    annotations = field_mapping(expose.get("annotations"), field="spec.expose.annotations")
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
        for i, text in enumerate(field_str_list(spec.get("extraRoutes"), field="spec.extraRoutes"))
    )

    replicas = field_int(
        spec.get("replicas"),
        field="spec.replicas",
        default=DEFAULT_REPLICAS,
        low=1,
        high=MAX_REPLICAS,
    )

    certs = field_mapping(spec.get("certificates"), field="spec.certificates")
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

    agent = field_mapping(spec.get("agent"), field="spec.agent")
    install = agent.get("install", True)
    if not isinstance(install, bool):
        raise PermanentError(
            reason="InvalidSpec",
            message=f"spec.agent.install must be true or false, got {install!r}",
        )

    return TunnelSpec(
        agent_image=_agent_image(agent.get("image"), where=where),
        resources=_resources(spec.get("resources"), where=where),
        node_revocation_max_delay=node_revocation_max_delay(spec, where=where),
        cluster_name=cluster_name,
        transport=Transport(
            protocol=cast(Protocol, protocol), port=port, renegotiate_seconds=renegotiate_seconds
        ),
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


def _agent_image(value: object, *, where: str) -> str | None:
    """spec.agent.image: an image reference, as the container runtime takes it."""
    if value is None:
        return None
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise PermanentError(
            reason="InvalidSpec",
            message=(
                f"spec.agent.image of {where} must be an image reference such as "
                f"registry.example/vpnctl:1.2.3, got {value!r}; fix spec.agent.image or remove "
                "it to use the controller's --agent-image"
            ),
        )
    return value


def _resources(value: object, *, where: str) -> ResourceOverrides:
    """spec.resources.{server,sidecar,agent}: each replaces the controller's default."""
    section = field_mapping(value, field="spec.resources")
    parsed: dict[str, ContainerResources] = {}
    for component in COMPONENTS:
        if section.get(component) is None:
            continue
        try:
            parsed[component] = resources_from_body(section[component])
        except ValueError as exc:
            raise PermanentError(
                reason="InvalidSpec",
                message=f"spec.resources.{component} of {where}: {exc}; fix spec.resources",
            ) from None
    return ResourceOverrides(**parsed)


def node_revocation_max_delay(spec: Mapping[str, Any], *, where: str) -> timedelta | None:
    """spec.nodeRevocation.maxDelay, or None when unset; PermanentError(InvalidSpec)."""
    field = "spec.nodeRevocation.maxDelay"
    revocation = field_mapping(spec.get("nodeRevocation"), field="spec.nodeRevocation")
    text = revocation.get("maxDelay")
    if text is None:
        return None
    try:
        return parse_duration(cast(str, text))
    except ValueError as exc:
        raise PermanentError(
            reason="InvalidSpec",
            message=f"{field} of {where}: {exc}; fix {field} (0s revokes when deletion starts)",
        ) from None


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


def _renegotiate_seconds(value: object, *, where: str) -> int:
    field = "spec.transport.renegotiateSeconds"
    if value is None:
        return DEFAULT_RENEGOTIATE_SECONDS
    if isinstance(value, bool) or not isinstance(value, int):
        raise PermanentError(
            reason="InvalidSpec",
            message=f"{field} of {where} must be a whole number of seconds, got {value!r}; "
            f"fix {field}",
        )
    if value < MIN_RENEGOTIATE_SECONDS:
        raise PermanentError(
            reason="InvalidSpec",
            message=(
                f"{field} {value} of {where} is shorter than the minimum of "
                f"{MIN_RENEGOTIATE_SECONDS} s: every node would redo its TLS handshake, and "
                f"the server re-authorise it, that often; set {MIN_RENEGOTIATE_SECONDS} to "
                f"{MAX_RENEGOTIATE_SECONDS} (default {DEFAULT_RENEGOTIATE_SECONDS})"
            ),
        )
    if value > MAX_RENEGOTIATE_SECONDS:
        raise PermanentError(
            reason="InvalidSpec",
            message=(
                f"{field} {value} of {where} is longer than the maximum of "
                f"{MAX_RENEGOTIATE_SECONDS} s (a day): data-channel keys would live longer "
                f"than that; set {MIN_RENEGOTIATE_SECONDS} to {MAX_RENEGOTIATE_SECONDS} "
                f"(default {DEFAULT_RENEGOTIATE_SECONDS})"
            ),
        )
    return value
