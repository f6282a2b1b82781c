"""The lab's address plan, computed once from a prefix and a node count.

Every name and address the lab uses comes from here, so the underlay, the
openvpn configs, the nodes, the probes and the table all agree, and a test
can check the whole plan without touching the kernel. It is the lab address
plan of DESIGN.md written as code: everything lies in 198.18.0.0/15 (RFC 2544's
benchmarking range) and lives only in namespaces the lab makes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

LAB_RANGE = IPv4Network("198.18.0.0/15")
DEFAULT_PREFIX = "vlab"
MAX_NODES = 40
PREFIX_RE = re.compile(r"[a-z0-9]{1,8}")

# Interface names inside the namespaces. Each namespace has its own set of names,
# so these are short and fixed; none is ever created in the root namespace.
WAN_BRIDGE = "br0"
LAN_BRIDGE = "br-lan"
RTR_WAN_IF = "wan0"
ETH0 = "eth0"
NODE_POD_IF = "pod0"

SERVER_PORT = 1194
KUBELET_PORT = 10250
WEBHOOK_PORT = 8443


class PlanError(ValueError):
    """The prefix or node count cannot make a lab."""


@dataclass(frozen=True, kw_only=True)
class NodePlan:
    """Worker node i and the one pod behind it."""

    index: int
    name: str  # node-<i>, the Kubernetes node name
    ns: str  # P-n<i>
    pod_ns: str  # P-p<i>
    internal_ip: IPv4Address  # 198.19.0.(10+i), eth0 on the tenant LAN
    lan_if: IPv4Interface  # internal_ip/24
    rtr_port: str  # the veth end in P-rtr enslaved to br-lan
    pod_cidr: IPv4Network  # 198.19.(64+i).0/24
    pod_gateway: IPv4Interface  # 198.19.(64+i).1/24 on the node's pod0
    pod_ip: IPv4Address  # 198.19.(64+i).2
    pod_if: IPv4Interface  # pod_ip/24, eth0 in the pod namespace
    tunnel_ip: IPv4Address  # 198.18.8.(10+i)
    kubelet_port: int
    webhook_port: int

    @property
    def kubelet_address(self) -> str:
        """host:port of the node's kubelet."""
        return f"{self.internal_ip}:{self.kubelet_port}"

    @property
    def kubelet_url(self) -> str:
        return f"https://{self.internal_ip}:{self.kubelet_port}"

    @property
    def webhook_address(self) -> str:
        return f"{self.pod_ip}:{self.webhook_port}"

    @property
    def webhook_url(self) -> str:
        return f"https://{self.pod_ip}:{self.webhook_port}"


@dataclass(frozen=True, kw_only=True)
class LabPlan:
    """All namespaces, interfaces and addresses of one lab."""

    prefix: str
    wan_ns: str
    srv_ns: str
    api_ns: str
    rtr_ns: str
    svc_ns: str  # the service cluster (etcd, kube-apiserver, controller-manager) and vpnctl

    wan_cidr: IPv4Network  # 198.18.0.0/24, "the internet"
    srv_if: IPv4Interface  # 198.18.0.1/24
    api_if: IPv4Interface  # 198.18.0.2/24
    rtr_wan_if: IPv4Interface  # 198.18.0.3/24
    svc_if: IPv4Interface  # 198.18.0.4/24
    lan_gateway: IPv4Interface  # 198.19.0.1/24 on br-lan in P-rtr
    server_port: int

    node_cidr: IPv4Network  # 198.19.0.0/24
    pod_cidr: IPv4Network  # 198.19.64.0/18
    service_cidr: IPv4Network  # 198.19.192.0/20

    tunnel_cidr: IPv4Network  # 198.18.8.0/24
    tunnel_server_ip: IPv4Address  # 198.18.8.1
    tunnel_apiserver_ip: IPv4Address  # 198.18.8.2

    nodes: tuple[NodePlan, ...]

    @property
    def server_ip(self) -> IPv4Address:
        return self.srv_if.ip

    @property
    def api_ip(self) -> IPv4Address:
        return self.api_if.ip

    @property
    def svc_ip(self) -> IPv4Address:
        return self.svc_if.ip

    @property
    def nat_ip(self) -> IPv4Address:
        """The source address the tenant's traffic has on the wan, after NAT."""
        return self.rtr_wan_if.ip

    @property
    def tenant_cidrs(self) -> tuple[IPv4Network, IPv4Network, IPv4Network]:
        """Nodes, pods, services: what the apiserver routes into the tunnel."""
        return (self.node_cidr, self.pod_cidr, self.service_cidr)

    @property
    def infra_namespaces(self) -> tuple[str, str, str, str, str]:
        return (self.wan_ns, self.srv_ns, self.api_ns, self.rtr_ns, self.svc_ns)

    @property
    def namespaces(self) -> tuple[str, ...]:
        """Every namespace, in build order (wan first, pods last)."""
        per_node = tuple(n for node in self.nodes for n in (node.ns, node.pod_ns))
        return self.infra_namespaces + per_node

    def node(self, name: str) -> NodePlan:
        """The node called NAME (`node-<i>`)."""
        for node in self.nodes:
            if node.name == name:
                return node
        known = ", ".join(n.name for n in self.nodes)
        raise PlanError(f"no node {name!r} in lab {self.prefix!r}; it has {known}")

    def all_addresses(self) -> list[IPv4Address | IPv4Network]:
        """Every address and network in the plan (for the range check)."""
        out: list[IPv4Address | IPv4Network] = [
            self.wan_cidr,
            self.srv_if.network,
            self.srv_if.ip,
            self.api_if.ip,
            self.rtr_wan_if.ip,
            self.svc_if.ip,
            self.lan_gateway.ip,
            self.lan_gateway.network,
            self.node_cidr,
            self.pod_cidr,
            self.service_cidr,
            self.tunnel_cidr,
            self.tunnel_server_ip,
            self.tunnel_apiserver_ip,
        ]
        for n in self.nodes:
            out += [n.internal_ip, n.pod_cidr, n.pod_gateway.ip, n.pod_ip, n.tunnel_ip]
        return out


def namespace_name(prefix: str, role: str) -> str:
    return f"{prefix}-{role}"


def lab_namespace_re(prefix: str) -> re.Pattern[str]:
    """Matches exactly the namespace names a lab with PREFIX makes, and nothing else.

    Strict on purpose: `destroy` deletes what this matches, and other people's
    namespaces (e.g. `vt-1a2b3c-a` from the test helpers) must never match.
    """
    return re.compile(rf"{re.escape(prefix)}-(?:wan|srv|api|rtr|svc|n[1-9][0-9]?|p[1-9][0-9]?)")


def validate_prefix(prefix: str) -> str:
    if not PREFIX_RE.fullmatch(prefix):
        raise PlanError(
            f"lab prefix {prefix!r} is not 1-8 characters of a-z and 0-9; "
            f"namespaces are named <prefix>-wan, <prefix>-n1, ...; pick e.g. {DEFAULT_PREFIX!r}"
        )
    return prefix


def make_plan(*, prefix: str = DEFAULT_PREFIX, nodes: int) -> LabPlan:
    """Compute the plan for a lab of NODES workers, namespaces named PREFIX-*."""
    validate_prefix(prefix)
    if isinstance(nodes, bool) or not isinstance(nodes, int) or not 1 <= nodes <= MAX_NODES:
        raise PlanError(
            f"lab node count {nodes!r} is out of range; the address plan fits 1 to "
            f"{MAX_NODES} nodes (198.19.0.11-.{10 + MAX_NODES}); pass --nodes in that range"
        )

    def a(text: str) -> IPv4Address:
        return IPv4Address(text)

    node_plans = tuple(
        NodePlan(
            index=i,
            name=f"node-{i}",
            ns=namespace_name(prefix, f"n{i}"),
            pod_ns=namespace_name(prefix, f"p{i}"),
            internal_ip=a(f"198.19.0.{10 + i}"),
            lan_if=IPv4Interface(f"198.19.0.{10 + i}/24"),
            rtr_port=f"n{i}",
            pod_cidr=IPv4Network(f"198.19.{64 + i}.0/24"),
            pod_gateway=IPv4Interface(f"198.19.{64 + i}.1/24"),
            pod_ip=a(f"198.19.{64 + i}.2"),
            pod_if=IPv4Interface(f"198.19.{64 + i}.2/24"),
            tunnel_ip=a(f"198.18.8.{10 + i}"),
            kubelet_port=KUBELET_PORT,
            webhook_port=WEBHOOK_PORT,
        )
        for i in range(1, nodes + 1)
    )
    plan = LabPlan(
        prefix=prefix,
        wan_ns=namespace_name(prefix, "wan"),
        srv_ns=namespace_name(prefix, "srv"),
        api_ns=namespace_name(prefix, "api"),
        rtr_ns=namespace_name(prefix, "rtr"),
        svc_ns=namespace_name(prefix, "svc"),
        wan_cidr=IPv4Network("198.18.0.0/24"),
        srv_if=IPv4Interface("198.18.0.1/24"),
        api_if=IPv4Interface("198.18.0.2/24"),
        rtr_wan_if=IPv4Interface("198.18.0.3/24"),
        svc_if=IPv4Interface("198.18.0.4/24"),
        lan_gateway=IPv4Interface("198.19.0.1/24"),
        server_port=SERVER_PORT,
        node_cidr=IPv4Network("198.19.0.0/24"),
        pod_cidr=IPv4Network("198.19.64.0/18"),
        service_cidr=IPv4Network("198.19.192.0/20"),
        tunnel_cidr=IPv4Network("198.18.8.0/24"),
        tunnel_server_ip=a("198.18.8.1"),
        tunnel_apiserver_ip=a("198.18.8.2"),
        nodes=node_plans,
    )
    _check_plan(plan)
    return plan


def _check_plan(plan: LabPlan) -> None:
    """Invariants: inside the lab range, per-node networks inside the tenant's."""
    for item in plan.all_addresses():
        inside = (
            item.subnet_of(LAB_RANGE) if isinstance(item, IPv4Network) else item in LAB_RANGE
        )
        if not inside:  # a bug in this module, never the user's input
            raise AssertionError(f"lab address {item} is outside {LAB_RANGE}")
    for n in plan.nodes:
        if n.internal_ip not in plan.node_cidr or not n.pod_cidr.subnet_of(plan.pod_cidr):
            raise AssertionError(f"{n.name}: addresses outside the tenant CIDRs")
        if n.tunnel_ip not in plan.tunnel_cidr:
            raise AssertionError(f"{n.name}: tunnel IP {n.tunnel_ip} outside {plan.tunnel_cidr}")
    names = plan.namespaces
    if len(set(names)) != len(names):
        raise AssertionError(f"duplicate namespace names in {names}")
