"""The service cluster's own networks, found at start, so that no tenant can claim them.

The hosted kube-apiserver pod lives in the service cluster and routes every tenant CIDR
into its tunnel. A tenant whose Service CIDR is the service cluster's would capture the
apiserver's own DNS and etcd traffic; one whose pod CIDR covers the service nodes would
cut the apiserver off its etcd. So the controller reserves:

- the Nodes' `spec.podCIDRs` (the pod network, as far as the node IPAM hands it out);
- the Nodes' InternalIPs (each a /32: the node network itself is not published);
- the Service CIDRs, from the ServiceCIDR objects (networking.k8s.io/v1, GA in 1.33).
  The `kubernetes` Service's ClusterIP names one address, not the range, so it is not
  used: where the ServiceCIDR API is missing, the Service CIDR is *unknown*, and the
  controller refuses to start unless `--reserved-cidr` names it.

What `--reserved-cidr` names is always added. IPv6 ranges are left out: tenant networks
are IPv4 (Settings.reserved_cidrs).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network, ip_network
from typing import Any, Protocol

from vpnctl.kube import NODE, SERVICE_CIDR, ApiError, Forbidden, KubeObject, NotFound, Resource

_log = logging.getLogger(__name__)


class Lister(Protocol):
    async def list(
        self, res: Resource, namespace: str | None = None, *, label_selector: str | None = None
    ) -> tuple[list[KubeObject], str]: ...


class NetworkDetectionError(Exception):
    """The reserved networks are incomplete; the message says what to set."""


@dataclass(frozen=True, kw_only=True)
class ServiceClusterNetworks:
    pods: tuple[IPv4Network, ...] = ()
    nodes: tuple[IPv4Network, ...] = ()
    services: tuple[IPv4Network, ...] = ()
    # What could not be read, one readable line each (the reason and what to do).
    problems: tuple[str, ...] = field(default=())

    @property
    def all(self) -> tuple[IPv4Network, ...]:
        return tuple(sorted({*self.pods, *self.nodes, *self.services}))


def _ipv4(texts: Iterable[object], *, host: bool = False) -> list[IPv4Network]:
    out: list[IPv4Network] = []
    for text in texts:
        if not isinstance(text, str) or not text:
            continue
        try:
            net = ip_network(f"{text}/32" if host and "/" not in text else text, strict=False)
        except ValueError:
            continue  # a malformed value on a Node is the Node's problem, not a range
        if isinstance(net, IPv4Network):
            out.append(net)
    return out


def _node_networks(node: KubeObject) -> tuple[list[IPv4Network], list[IPv4Network]]:
    spec = node.get("spec") or {}
    pod_cidrs: list[Any] = list(spec.get("podCIDRs") or [])
    if not pod_cidrs and spec.get("podCIDR"):
        pod_cidrs = [spec["podCIDR"]]
    addresses = (node.get("status") or {}).get("addresses") or []
    internal = [a.get("address") for a in addresses if a.get("type") == "InternalIP"]
    return _ipv4(pod_cidrs), _ipv4(internal, host=True)


async def detect(kube: Lister) -> ServiceClusterNetworks:
    """Read the service cluster's networks; what cannot be read is in `problems`."""
    problems: list[str] = []
    pods: list[IPv4Network] = []
    nodes: list[IPv4Network] = []
    services: list[IPv4Network] = []
    try:
        items, _ = await kube.list(NODE)
        for node in items:
            p, n = _node_networks(node)
            pods += p
            nodes += n
    except Forbidden as exc:
        problems.append(f"cannot list Nodes ({exc}); grant list on nodes")
    try:
        items, _ = await kube.list(SERVICE_CIDR)
        for obj in items:
            services += _ipv4((obj.get("spec") or {}).get("cidrs") or [])
        if not services:
            problems.append("no ServiceCIDR object names an IPv4 range")
    except NotFound:
        problems.append(
            "the ServiceCIDR API (networking.k8s.io/v1, Kubernetes 1.33+) is not served"
        )
    except Forbidden as exc:
        problems.append(f"cannot list ServiceCIDRs ({exc}); grant list on servicecidrs")
    return ServiceClusterNetworks(
        pods=tuple(sorted(set(pods))),
        nodes=tuple(sorted(set(nodes))),
        services=tuple(sorted(set(services))),
        problems=tuple(problems),
    )


async def reserved_networks(
    kube: Lister, *, flags: Sequence[IPv4Network], detect_networks: bool = True
) -> tuple[IPv4Network, ...]:
    """What the controller reserves: `flags` plus what `detect` finds.

    Raises NetworkDetectionError when, without any `--reserved-cidr`, the Service CIDR
    could not be found: running then would let a tenant claim it."""
    if not detect_networks:
        return tuple(flags)
    try:
        found = await detect(kube)
    except ApiError as exc:  # the apiserver itself is in trouble: say so, don't guess
        found = ServiceClusterNetworks(problems=(f"cannot read the service cluster: {exc}",))
    for problem in found.problems:
        _log.warning("event=reserved_cidr_detection_incomplete problem=%r", problem)
    if not found.services and not flags:
        raise NetworkDetectionError(
            "could not detect the service cluster's Service CIDR ("
            + "; ".join(found.problems)
            + "); name it (and the pod and node networks) with --reserved-cidr, "
            "or reservedCIDRs in the chart, so that no tenant can claim it"
        )
    reserved = tuple(sorted({*flags, *found.all}))
    _log.info(
        "event=reserved_cidrs pods=%s nodes=%d services=%s flags=%s",
        ",".join(map(str, found.pods)) or "-",
        len(found.nodes),
        ",".join(map(str, found.services)) or "-",
        ",".join(map(str, flags)) or "-",
    )
    return reserved
