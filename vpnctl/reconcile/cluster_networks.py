"""The tenant's networks from its CAPI Cluster, and the overlaps that must not be.

A tenant whose networks collide (tunnel CIDR over its pods, pods over services, anything
over the service cluster's own networks) cannot be routed: that is a `PermanentError`
for the tenant as a whole, reported on its Tunnel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Any, cast

from vpnctl.api import Cluster
from vpnctl.reconcile.cidr import parse_address, parse_network
from vpnctl.reconcile.errors import PermanentError
from vpnctl.reconcile.tunnel_spec import TunnelSpec
from vpnctl.reconcile.untrusted_json import field_mapping, field_str_list, metadata_of


@dataclass(frozen=True, kw_only=True)
class ClusterNetworks:
    """The tenant's networks, from `Cluster.spec.clusterNetwork` (IPv4 blocks only)."""

    pods: tuple[IPv4Network, ...]
    services: tuple[IPv4Network, ...]
    endpoint_host: str | None
    endpoint_port: int | None


def parse_cluster_networks(cluster: Cluster) -> tuple[ClusterNetworks, tuple[str, ...]]:
    """The Cluster's IPv4 pod and service CIDRs and endpoint, plus warnings.

    PermanentError(MissingClusterNetwork) when there is no clusterNetwork or it names no
    IPv4 pod or service block: without them there is nothing to route.
    """
    raw = cast(Mapping[str, Any], cluster)
    meta = metadata_of(raw)
    where = f"Cluster {meta.get('namespace', '')}/{meta.get('name', '')}"
    spec = field_mapping(raw.get("spec"), field=f"spec of {where}")
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
    network = field_mapping(network, field=f"spec.clusterNetwork of {where}")
    warnings: list[str] = []
    blocks: dict[str, tuple[IPv4Network, ...]] = {}
    for kind in ("pods", "services"):
        field = f"spec.clusterNetwork.{kind}.cidrBlocks"
        texts = field_str_list(
            field_mapping(network.get(kind), field=f"spec.clusterNetwork.{kind}").get("cidrBlocks"),
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

    endpoint = field_mapping(spec.get("controlPlaneEndpoint"), field="spec.controlPlaneEndpoint")
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
