"""The netns tier's tenant, planned by the controller's own pure planner.

The netns tier proves the agents under the configuration the controller emits, not one
written for the test: the role configs and the server's desired state come from
`vpnctl.reconcile.tenant_plan.plan_tenant` and `agentdocs`, the functions
`vpnctl/controller/tenant_reconciler.py` calls, given what the controller would give
them for the lab's address plan:

* the Tunnel and the Cluster as the lab creates them (`vpnctl.lab.lab_objects`), and one
  Machine per tunnel client, with the nodeRef and InternalIP CAPI reports;
* the tenant's Nodes, as the controller reads them through the tenant side: one per
  lab node among the Machines, with its podCIDR and InternalIP, so each node carries its
  own pods (the tests' ad-hoc clients have no Node: the elected node carries the pod
  CIDR's rest, as for a node without a podCIDR);
* observations: every agent node connected, the server's report once they have joined
  (the controller's steady state; its first pass, before any node connected, elects
  nobody to carry the service and pod CIDRs);
* the serials the lab issued, recorded on the allocations as the tenant side records
  the serials it signed (`record_serial`);
* the server Service as the service cluster has it: type LoadBalancer (the default),
  its ingress at the server's address.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from ipaddress import IPv4Address
from typing import Any, cast

from vpnctl.api import TUNNEL_KIND, Cluster, Machine, Node, Tunnel
from vpnctl.lab import lab_objects
from vpnctl.lab.address_plan import LabPlan, NodePlan
from vpnctl.reconcile.agentdocs import node_role_config, service_remotes
from vpnctl.reconcile.allocation import Allocation, record_serial
from vpnctl.reconcile.service_objects import server_service
from vpnctl.reconcile.settings import Settings
from vpnctl.reconcile.status import NodeObservation
from vpnctl.reconcile.tenant_plan import TenantPlan, plan_tenant

# The role configs do not name the image; the netns tier runs the agents from the tree.
SETTINGS = Settings(agent_image="vpnctl:netns-tier")


def tenant_objects(
    plan: LabPlan, *, proto: str, machines: Sequence[NodePlan], reneg_sec: int | None = None
) -> tuple[Tunnel, Cluster, list[Machine]]:
    """The Tunnel (with the uid and generation the apiserver gives it; RENEG_SEC as its
    `spec.transport.renegotiateSeconds`), the Cluster and a joined Machine per entry of
    MACHINES."""
    objects = lab_objects.service_objects(plan, tenant_kubeconfig="", protocol=proto)
    (created,) = (o for o in objects if o["kind"] == TUNNEL_KIND)
    if reneg_sec is not None:
        spec = created["spec"]
        created = {**created, "spec": {**spec, "transport": {
            **spec["transport"], "renegotiateSeconds": reneg_sec}}}  # fmt: skip
    tunnel = {**created, "metadata": {**created["metadata"], "uid": f"netns-{plan.prefix}",
                                      "generation": 1}}  # fmt: skip
    (cluster,) = (o for o in objects if o["kind"] == "Cluster")
    joined = [{**lab_objects.machine(m), **lab_objects.machine_status(m)} for m in machines]
    return cast(Tunnel, tunnel), cast(Cluster, cluster), cast(list[Machine], joined)


def client_machine(plan: LabPlan, *, number: int, name: str, internal_ip: IPv4Address) -> NodePlan:
    """A tunnel client that is no lab node (the tests' ad-hoc clients): a Machine of its
    own named NAME at INTERNAL_IP, numbered past the lab's nodes."""
    return replace(plan.nodes[-1], index=100 + number, name=name, internal_ip=internal_ip)


def node_objects(plan: LabPlan, machines: Sequence[NodePlan]) -> list[Node]:
    """The tenant's Node of each lab node among MACHINES: spec.podCIDR(s), its
    InternalIP and kubelet port, as the kubelet and the node IPAM controller write them."""
    lab_nodes = {n.name: n for n in plan.nodes}
    nodes: list[Node] = []
    for m in machines:
        if lab_nodes.get(m.name) != m:
            continue
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": m.name},
            "spec": {"podCIDR": str(m.pod_cidr), "podCIDRs": [str(m.pod_cidr)]},
            "status": {
                "addresses": [{"type": "InternalIP", "address": str(m.internal_ip)}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": m.kubelet_port}},
            },
        }
        nodes.append(cast(Node, node))
    return nodes


def plan_netns_tenant(
    plan: LabPlan,
    *,
    proto: str,
    machines: Sequence[NodePlan],
    connected: Collection[str],
    reneg_sec: int | None = None,
) -> TenantPlan:
    """`plan_tenant` for the lab's tenant with MACHINES, the nodes named in CONNECTED
    reported connected. Raises PermanentError as the controller would."""
    tunnel, cluster, joined = tenant_objects(
        plan, proto=proto, machines=machines, reneg_sec=reneg_sec
    )
    return plan_tenant(
        tunnel=tunnel,
        cluster=cluster,
        machines=joined,
        nodes=node_objects(plan, machines),
        observations={n: NodeObservation(node=n, connected=True) for n in connected},
        settings=SETTINGS,
    )


def signed(tenant: TenantPlan, serials: Mapping[str, int]) -> tuple[Allocation, ...]:
    """The plan's allocations with each node's serial (by node name) recorded."""
    allocations = tenant.allocation.allocations
    for a in tenant.allocation.allocations:
        if a.node in serials:
            allocations = record_serial(allocations, machine=a.machine, serial=serials[a.node])
    return allocations


def server_service_as_seen(tenant: TenantPlan, plan: LabPlan) -> dict[str, Any]:
    """The server Service the controller builds, as the service cluster returns it: a
    LoadBalancer's ingress at the server's address; a NodePort whose node port is the
    server's own port (the netns tier has no kube-proxy: the server process listens
    on the address the nodes dial, see `node_config`); else that address as the
    ClusterIP."""
    service = dict(server_service(tenant=tenant.tenant))
    spec = dict(service["spec"])
    if spec.get("type") == "LoadBalancer":
        service["status"] = {"loadBalancer": {"ingress": [{"ip": str(plan.server_ip)}]}}
    elif spec.get("type") == "NodePort":
        spec["ports"] = [{**p, "nodePort": p["port"]} for p in spec["ports"]]
    else:
        spec["clusterIP"] = str(plan.server_ip)
    service["spec"] = spec
    return service


def node_config(tenant: TenantPlan, plan: LabPlan) -> dict[str, Any]:
    """node.json as the controller renders it, without `bootstrap`: the netns tier has no
    tenant apiserver to sign CSRs, so the fixture puts each node's certificate and keys
    where the CSR flow would write them (`NodePaths`)."""
    return node_role_config(
        tenant=tenant.tenant,
        settings=SETTINGS,
        remotes=service_remotes(
            server_service_as_seen(tenant, plan), node_addresses=[str(plan.server_ip)]
        ),
    )
