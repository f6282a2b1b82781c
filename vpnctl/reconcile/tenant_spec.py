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

The defaults applied here are the CRD's defaults (charts/vpnctl/files/crds/); a test
keeps the two in step. They are applied again here because objects written before a
default existed, and unit tests, do not pass through the apiserver's defaulting.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Any, cast

from vpnctl.api import Cluster, Machine, Node, Tunnel
from vpnctl.reconcile.cluster_networks import (
    ClusterNetworks,
    check_overlaps,
    parse_cluster_networks,
)
from vpnctl.reconcile.errors import PermanentError
from vpnctl.reconcile.tenant_members import (
    APISERVER_COMMON_NAME,
    DEFAULT_KUBELET_PORT,
    Member,
    PendingMachine,
    node_facts,
    parse_machines,
)
from vpnctl.reconcile.tunnel_spec import (
    DEFAULT_CA_LIFETIME,
    DEFAULT_CLIENT_LIFETIME,
    DEFAULT_PORT,
    DEFAULT_PROTOCOL,
    DEFAULT_RENEGOTIATE_SECONDS,
    DEFAULT_RENEW_FRACTION,
    DEFAULT_REPLICAS,
    DEFAULT_SERVER_LIFETIME,
    DEFAULT_SERVICE_TYPE,
    DEFAULT_TUNNEL_CIDR,
    MAX_RENEGOTIATE_SECONDS,
    MAX_REPLICAS,
    MIN_RENEGOTIATE_SECONDS,
    PROTOCOLS,
    SERVICE_TYPES,
    TunnelSpec,
    parse_tunnel_spec,
)
from vpnctl.reconcile.untrusted_json import metadata_of

# What the rest of the tree imports from here (parsing lives in the modules above).
__all__ = [
    "APISERVER_COMMON_NAME",
    "DEFAULT_CA_LIFETIME",
    "DEFAULT_CLIENT_LIFETIME",
    "DEFAULT_KUBELET_PORT",
    "DEFAULT_PORT",
    "DEFAULT_PROTOCOL",
    "DEFAULT_RENEGOTIATE_SECONDS",
    "DEFAULT_RENEW_FRACTION",
    "DEFAULT_REPLICAS",
    "DEFAULT_SERVER_LIFETIME",
    "DEFAULT_SERVICE_TYPE",
    "DEFAULT_TUNNEL_CIDR",
    "MAX_RENEGOTIATE_SECONDS",
    "MAX_REPLICAS",
    "MIN_RENEGOTIATE_SECONDS",
    "PROTOCOLS",
    "SERVICE_TYPES",
    "ClusterNetworks",
    "Member",
    "PendingMachine",
    "TenantSpec",
    "TunnelSpec",
    "parse_tenant",
    "parse_tunnel_spec",
]


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


def parse_tenant(
    *,
    tunnel: Tunnel,
    cluster: Cluster,
    machines: Sequence[Machine],
    nodes: Sequence[Node] | None = None,
    reserved: Sequence[IPv4Network] = (),
    kept: Collection[str] = (),
) -> TenantSpec:
    """Everything the builders need about one tenant, checked.

    `nodes` are the tenant cluster's Node objects when the tenant apiserver is reachable
    (for per-node pod CIDRs); None when it is not, which only loses per-node pod routes.
    `reserved` are the service cluster's own networks (`Settings.reserved_cidrs`).
    `kept`: Machines being deleted whose nodes keep their tunnel until drained.
    Raises PermanentError for a problem with the tenant as a whole; a problem with one
    Machine is in `pending` instead.
    """
    raw_tunnel = cast(Mapping[str, Any], tunnel)
    meta = metadata_of(raw_tunnel)
    namespace = str(meta.get("namespace", ""))
    spec = parse_tunnel_spec(tunnel)
    cluster_meta = metadata_of(cast(Mapping[str, Any], cluster))
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
        kept=kept,
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
