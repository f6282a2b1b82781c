"""The lab's underlay: the networks as they are before any tunnel exists.

This is the situation vpnctl exists for. The tenant's nodes sit on a private LAN
behind a NAT gateway and can only dial out; the hosted apiserver sits on "the
internet" next to the OpenVPN server and has no route at all towards the
tenant's networks. Whatever later reaches a node from the apiserver namespace
must therefore have crossed the tunnel. The topology is in lab-plan.md:

    P-srv 198.18.0.1 ─┐
    P-api 198.18.0.2 ─┼─ br0 in P-wan
    P-rtr 198.18.0.3 ─┤  (NAT; br-lan 198.19.0.1/24)
    P-svc 198.18.0.4 ─┘  (the service cluster and vpnctl)
      └─ br-lan ── P-n<i> eth0 198.19.0.(10+i)
                     └─ pod0 198.19.(64+i).1 ── P-p<i> eth0 198.19.(64+i).2

Building is idempotent (re-running repairs a half-built lab) and destroying is
tolerant (it removes whatever exists and kills what still runs inside).
"""

from __future__ import annotations

import logging

from vpnctl.lab import netns
from vpnctl.lab.address_plan import (
    ETH0,
    LAN_BRIDGE,
    NODE_POD_IF,
    RTR_WAN_IF,
    WAN_BRIDGE,
    LabPlan,
    NodePlan,
)

log = logging.getLogger(__name__)


async def build_underlay(plan: LabPlan, *, pod_namespaces: bool = True) -> None:
    """Create every namespace, link, address, route, sysctl and NAT rule of PLAN.

    Without POD_NAMESPACES there is no P-p<i>: real nodes make their pods' namespaces
    themselves (CNI), and each node routes the others' podCIDRs on the LAN.
    """
    log.info("event=underlay_build prefix=%s nodes=%d", plan.prefix, len(plan.nodes))
    pod_ns = {n.pod_ns for n in plan.nodes}
    for name in plan.namespaces:
        if pod_namespaces or name not in pod_ns:
            await netns.add_netns(name)

    # "The internet": a bridge in P-wan with srv, api and rtr attached.
    await netns.add_bridge(WAN_BRIDGE, ns=plan.wan_ns)
    for ns, port, dev, addr in (
        (plan.srv_ns, "srv", ETH0, plan.srv_if),
        (plan.api_ns, "api", ETH0, plan.api_if),
        (plan.rtr_ns, "rtr", RTR_WAN_IF, plan.rtr_wan_if),
        (plan.svc_ns, "svc", ETH0, plan.svc_if),
    ):
        await netns.add_veth(ns_a=plan.wan_ns, name_a=port, ns_b=ns, name_b=dev)
        await netns.set_master(port, bridge=WAN_BRIDGE, ns=plan.wan_ns)
        await netns.replace_address(dev, str(addr), ns=ns)

    # The tenant's NAT gateway: LAN bridge, forwarding, masquerade out of wan0.
    await netns.add_bridge(LAN_BRIDGE, ns=plan.rtr_ns)
    await netns.replace_address(LAN_BRIDGE, str(plan.lan_gateway), ns=plan.rtr_ns)
    await netns.set_sysctl("net.ipv4.ip_forward", "1", ns=plan.rtr_ns)
    await _ensure_masquerade(plan)

    for node in plan.nodes:
        await _build_node(plan, node, pod_namespace=pod_namespaces)
    log.info("event=underlay_ready prefix=%s nodes=%d", plan.prefix, len(plan.nodes))


async def _build_node(plan: LabPlan, node: NodePlan, *, pod_namespace: bool) -> None:
    await netns.add_veth(ns_a=plan.rtr_ns, name_a=node.rtr_port, ns_b=node.ns, name_b=ETH0)
    await netns.set_master(node.rtr_port, bridge=LAN_BRIDGE, ns=plan.rtr_ns)
    await netns.replace_address(ETH0, str(node.lan_if), ns=node.ns)
    await netns.replace_route("default", via=str(plan.lan_gateway.ip), ns=node.ns)
    await netns.set_sysctl("net.ipv4.ip_forward", "1", ns=node.ns)
    # The gateway knows where each node's pods are (as a cloud VPC route table
    # would), so a pod's egress through the NAT gets its answers back.
    await netns.replace_route(str(node.pod_cidr), via=str(node.internal_ip), ns=plan.rtr_ns)
    if not pod_namespace:
        # The CNI's pods: every other node's podCIDR is one hop away on the LAN.
        for other in plan.nodes:
            if other is not node:
                await netns.replace_route(str(other.pod_cidr), via=str(other.internal_ip),
                                          ns=node.ns)  # fmt: skip
        return

    await netns.add_veth(ns_a=node.ns, name_a=NODE_POD_IF, ns_b=node.pod_ns, name_b=ETH0)
    await netns.replace_address(NODE_POD_IF, str(node.pod_gateway), ns=node.ns)
    await netns.replace_address(ETH0, str(node.pod_if), ns=node.pod_ns)
    await netns.replace_route("default", via=str(node.pod_gateway.ip), ns=node.pod_ns)


async def _ensure_masquerade(plan: LabPlan) -> None:
    rule = ["-s", str(plan.node_cidr.supernet(new_prefix=16)), "-o", RTR_WAN_IF,
            "-j", "MASQUERADE"]  # fmt: skip
    try:  # -C answers by exit code: non-zero means the rule is not there yet
        await netns.run("iptables", "-w", "-t", "nat", "-C", "POSTROUTING", *rule,
                        ns=plan.rtr_ns)  # fmt: skip
    except netns.LabError:
        await netns.run("iptables", "-w", "-t", "nat", "-A", "POSTROUTING", *rule,
                        ns=plan.rtr_ns)  # fmt: skip


async def destroy_underlay(plan: LabPlan) -> None:
    """Remove every namespace of the lab with PLAN's prefix, and what runs inside.

    Also catches namespaces of the same prefix that PLAN doesn't list (a lab built
    earlier with more nodes). Safe to call on a lab that is half built or gone.
    """
    present = set(await netns.list_lab_namespaces(plan.prefix))
    ordered = [n for n in reversed(plan.namespaces) if n in present]
    ordered += sorted(present - set(ordered))
    if not ordered:
        log.info("event=underlay_destroy prefix=%s namespaces=0", plan.prefix)
        return
    log.info("event=underlay_destroy prefix=%s namespaces=%d", plan.prefix, len(ordered))
    errors: list[str] = []
    for name in ordered:
        try:
            await netns.kill_netns_processes(name)
        except netns.LabError as e:
            errors.append(str(e))
    for name in ordered:
        try:
            await netns.delete_netns(name)
        except netns.LabError as e:
            errors.append(str(e))
    if errors:
        raise netns.LabError(
            f"lab {plan.prefix!r} was not fully removed:\n" + "\n".join(errors)
            + f"\nsee `ip netns list | grep ^{plan.prefix}-` and run the removal again"
        )
