"""Parsing and validating one tenant's inputs (vpnctl.reconcile.tenant_spec)."""

from __future__ import annotations

from datetime import timedelta
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from tests.support import capi as samples
from vpnctl.api import TunnelSpecBody
from vpnctl.reconcile.errors import PermanentError, ReconcileError, TemporaryError
from vpnctl.reconcile.tenant_spec import (
    APISERVER_COMMON_NAME,
    DEFAULT_TUNNEL_CIDR,
    TenantSpec,
    parse_tenant,
    parse_tunnel_spec,
)

NET = IPv4Network


def lab(**changes: Any) -> TenantSpec:
    t = samples.lab_tenant()
    args: dict[str, Any] = {
        "tunnel": t.tunnel,
        "cluster": t.cluster,
        "machines": t.machines,
        "nodes": t.nodes,
    }
    args.update(changes)
    return parse_tenant(**args)


def with_spec(**spec: Any) -> TenantSpec:
    body: dict[str, Any] = {"clusterName": "tenant-a", "tunnelCIDR": samples.LAB_TUNNEL_CIDR}
    body.update(spec)
    return lab(tunnel=samples.tunnel(spec=TunnelSpecBody(**body)))  # type: ignore[typeddict-item]


def permanent(reason: str, **changes: Any) -> PermanentError:
    with pytest.raises(PermanentError) as info:
        lab(**changes)
    assert info.value.reason == reason, info.value.message
    return info.value


# --- the lab tenant parses to the lab plan -----------------------------------------------


def test_lab_tenant_matches_the_address_plan() -> None:
    spec = lab()
    assert spec.key == "tenant-a/tenant-a"
    assert spec.cluster_name == "tenant-a"
    assert spec.tunnel_uid == "uid-tunnel-tenant-a-tenant-a"
    assert spec.generation == 1
    assert spec.networks.pods == (NET("198.19.64.0/18"),)
    assert spec.networks.services == (NET("198.19.192.0/20"),)
    assert spec.networks.endpoint_host == "198.18.0.2"
    assert spec.networks.endpoint_port == 6443
    assert spec.spec.tunnel_cidr == NET("198.18.8.0/24")
    assert spec.spec.server_ip == IPv4Address("198.18.8.1")
    assert spec.spec.apiserver_ip == IPv4Address("198.18.8.2")
    assert [(m.machine, m.node, str(m.internal_ip), m.pod_cidrs) for m in spec.members] == [
        (f"tenant-a-md-{i}", f"node-{i}", f"198.19.0.{10 + i}", (NET(f"198.19.{64 + i}.0/24"),))
        for i in (1, 2, 3)
    ]
    assert all(m.kubelet_port == 10250 for m in spec.members)
    assert spec.pending == ()
    assert spec.warnings == ()


def test_defaults_when_the_spec_names_only_the_cluster() -> None:
    spec = parse_tunnel_spec(samples.tunnel(spec={"clusterName": "c"}))
    assert spec.cluster_name == "c"
    assert (spec.transport.protocol, spec.transport.port) == ("udp", 1194)
    assert spec.transport.renegotiate_seconds == 3600  # openvpn's reneg-sec default
    assert spec.expose.service_type == "LoadBalancer"
    assert spec.expose.annotations == ()
    assert str(spec.tunnel_cidr) == DEFAULT_TUNNEL_CIDR
    assert spec.tunnel_cidr.subnet_of(NET("100.64.0.0/10"))
    assert spec.extra_routes == ()
    assert spec.replicas == 1
    assert spec.certificates.ca == timedelta(days=3650)
    assert spec.certificates.server == timedelta(days=365)
    assert spec.certificates.client == timedelta(days=30)
    assert spec.certificates.renew_fraction == pytest.approx(0.66)
    assert spec.install_agent is True


def test_cluster_name_defaults_to_the_tunnel_name() -> None:
    assert parse_tunnel_spec(samples.tunnel(name="abc", spec={})).cluster_name == "abc"


def test_full_spec_is_read() -> None:
    spec = parse_tunnel_spec(
        samples.tunnel(
            spec={
                "clusterName": "tenant-a",
                "transport": {"protocol": "tcp", "port": 443, "renegotiateSeconds": 600},
                "expose": {"serviceType": "NodePort", "annotations": {"b": "2", "a": "1"}},
                "tunnelCIDR": "10.99.0.0/22",
                "extraRoutes": ["192.168.10.0/24"],
                "replicas": 2,
                "certificates": {
                    "caLifetime": "1000h",
                    "serverLifetime": "100h",
                    "clientLifetime": "1h30m",
                    "renewFraction": 0.5,
                },
                "agent": {"install": False},
            }
        )
    )
    assert (spec.transport.protocol, spec.transport.port) == ("tcp", 443)
    assert spec.transport.renegotiate_seconds == 600
    assert spec.expose.service_type == "NodePort"
    assert spec.expose.annotations == (("a", "1"), ("b", "2"))
    assert spec.tunnel_cidr == NET("10.99.0.0/22")
    assert spec.extra_routes == (NET("192.168.10.0/24"),)
    assert spec.replicas == 2
    assert spec.certificates.client == timedelta(minutes=90)
    assert spec.certificates.renew_fraction == 0.5
    assert spec.install_agent is False


# --- bad Tunnel specs: permanent, with a message that says what to do ------------------------


@pytest.mark.parametrize(
    ("spec", "reason", "needle"),
    [
        ({"tunnelCIDR": "198.18.8.0/33"}, "InvalidCIDR", "spec.tunnelCIDR"),
        ({"tunnelCIDR": "banana/24"}, "InvalidCIDR", "is not a CIDR"),
        ({"tunnelCIDR": "198.18.8.0"}, "InvalidCIDR", "no prefix length"),
        ({"tunnelCIDR": "198.18.8.7/24"}, "InvalidCIDR", "did you mean 198.18.8.0/24"),
        ({"tunnelCIDR": "fd00::/64"}, "InvalidCIDR", "IPv6"),
        ({"tunnelCIDR": "198.18.8.0/30"}, "InvalidCIDR", "/16 to /29"),
        ({"tunnelCIDR": "10.0.0.0/8"}, "InvalidCIDR", "/16 to /29"),
        ({"extraRoutes": ["10.0.0.0/8", "nope"]}, "InvalidCIDR", "spec.extraRoutes[1]"),
        ({"extraRoutes": "10.0.0.0/8"}, "InvalidSpec", "list of strings"),
        ({"transport": {"protocol": "sctp"}}, "InvalidSpec", "udp, tcp"),
        ({"transport": {"port": 0}}, "InvalidSpec", "1..65535"),
        ({"transport": {"port": True}}, "InvalidSpec", "spec.transport.port"),
        (
            {"transport": {"renegotiateSeconds": 9}},
            "InvalidSpec",
            "spec.transport.renegotiateSeconds 9 of Tunnel tenant-a/tenant-a is shorter than "
            "the minimum of 10 s",
        ),
        ({"transport": {"renegotiateSeconds": 0}}, "InvalidSpec", "set 10 to 86400"),
        ({"transport": {"renegotiateSeconds": -60}}, "InvalidSpec", "minimum of 10 s"),
        ({"transport": {"renegotiateSeconds": 86401}}, "InvalidSpec", "maximum of 86400 s"),
        ({"transport": {"renegotiateSeconds": "1h"}}, "InvalidSpec", "whole number of seconds"),
        ({"transport": {"renegotiateSeconds": 60.5}}, "InvalidSpec", "whole number of seconds"),
        ({"transport": {"renegotiateSeconds": True}}, "InvalidSpec", "renegotiateSeconds"),
        ({"expose": {"serviceType": "ExternalName"}}, "InvalidSpec", "LoadBalancer"),
        ({"expose": {"annotations": {"a": 1}}}, "InvalidSpec", "strings to strings"),
        ({"replicas": 6}, "InvalidSpec", "1..5"),
        ({"replicas": 0}, "InvalidSpec", "1..5"),
        ({"certificates": {"clientLifetime": "30d"}}, "InvalidSpec", "write 720h"),
        ({"certificates": {"clientLifetime": "10m"}}, "InvalidSpec", "minimum of 1h"),
        (
            {"certificates": {"caLifetime": "100h", "serverLifetime": "200h"}},
            "InvalidSpec",
            "shorter than caLifetime",
        ),
        ({"certificates": {"renewFraction": 1.5}}, "InvalidSpec", "0.1 to 0.9"),
        ({"agent": {"install": "yes"}}, "InvalidSpec", "true or false"),
        ({"transport": "udp"}, "InvalidSpec", "must be an object"),
    ],
)
def test_bad_tunnel_spec_is_permanent(spec: dict[str, Any], reason: str, needle: str) -> None:
    with pytest.raises(PermanentError) as info:
        with_spec(**spec)
    assert info.value.reason == reason
    assert needle in info.value.message


@pytest.mark.parametrize("seconds", [10, 3600, 86400])
def test_renegotiation_interval_bounds_are_inclusive(seconds: int) -> None:
    spec = with_spec(transport={"renegotiateSeconds": seconds})
    assert spec.spec.transport.renegotiate_seconds == seconds


# --- bad Cluster ------------------------------------------------------------------------------


def test_cluster_without_cluster_network_is_permanent() -> None:
    err = permanent("MissingClusterNetwork", cluster=samples.cluster(pods=None, services=None))
    assert "Cluster tenant-a/tenant-a has no spec.clusterNetwork" in err.message
    assert "set spec.clusterNetwork.pods.cidrBlocks" in err.message


def test_cluster_without_services_is_permanent() -> None:
    err = permanent("MissingClusterNetwork", cluster=samples.cluster(services=None))
    assert "spec.clusterNetwork.services.cidrBlocks" in err.message


def test_ipv6_only_pods_are_permanent_and_dual_stack_warns() -> None:
    permanent("MissingClusterNetwork", cluster=samples.cluster(pods=["fd00:10::/56"]))
    spec = lab(cluster=samples.cluster(pods=[samples.LAB_PODS_CIDR, "fd00:10::/56"]))
    assert spec.networks.pods == (NET(samples.LAB_PODS_CIDR),)
    assert any("IPv6" in w for w in spec.warnings)


def test_bad_cidr_text_in_the_cluster_is_permanent() -> None:
    err = permanent("InvalidCIDR", cluster=samples.cluster(pods=["198.19.64.0/33"]))
    assert "spec.clusterNetwork.pods.cidrBlocks[0]" in err.message


def test_cluster_other_than_the_tunnels_is_refused() -> None:
    permanent("ClusterMismatch", cluster=samples.cluster(name="someone-else"))


# --- overlaps -----------------------------------------------------------------------------------


def test_tunnel_cidr_overlapping_pods_has_the_documented_message() -> None:
    with pytest.raises(PermanentError) as info:
        parse_tenant(
            tunnel=samples.tunnel(spec={"clusterName": "tenant-a", "tunnelCIDR": "198.18.0.0/24"}),
            cluster=samples.cluster(pods=["198.18.0.0/16"], services=["10.96.0.0/12"]),
            machines=[],
        )
    assert info.value.reason == "CIDROverlap"
    assert info.value.message == (
        "tunnel CIDR 198.18.0.0/24 overlaps the cluster's pod CIDR 198.18.0.0/16; "
        "set spec.tunnelCIDR"
    )


@pytest.mark.parametrize(
    ("spec", "cluster_args", "needle"),
    [
        ({"tunnelCIDR": "198.19.192.0/24"}, {}, "the cluster's service CIDR 198.19.192.0/20"),
        ({"extraRoutes": ["198.18.0.0/16"]}, {}, "the extra route 198.18.0.0/16"),
        ({}, {"endpoint": ("198.18.8.200", 6443)}, "control plane endpoint 198.18.8.200"),
        ({}, {"services": ["198.19.100.0/22"]}, "pod CIDR 198.19.64.0/18 overlaps its service"),
    ],
)
def test_overlaps_are_permanent(
    spec: dict[str, Any], cluster_args: dict[str, Any], needle: str
) -> None:
    body: dict[str, Any] = {"clusterName": "tenant-a", "tunnelCIDR": samples.LAB_TUNNEL_CIDR}
    body.update(spec)
    with pytest.raises(PermanentError) as info:
        lab(tunnel=samples.tunnel(spec=body), cluster=samples.cluster(**cluster_args))  # type: ignore[arg-type]
    assert info.value.reason == "CIDROverlap"
    assert needle in info.value.message


def test_endpoint_hostname_is_not_an_overlap() -> None:
    spec = lab(cluster=samples.cluster(endpoint=("api.tenant.example", 6443)))
    assert spec.networks.endpoint_host == "api.tenant.example"


def test_node_address_inside_the_tunnel_cidr_is_permanent() -> None:
    err = permanent(
        "CIDROverlap",
        machines=[samples.machine(name="m", node="n", internal_ip="198.18.8.77")],
    )
    assert "contains node n's InternalIP 198.18.8.77" in err.message
    assert err.message.endswith("set spec.tunnelCIDR")


def test_reserved_service_cluster_networks() -> None:
    with pytest.raises(PermanentError, match=r"service cluster's network 198\.18\.0\.0/20"):
        lab(reserved=[NET("198.18.0.0/20")])
    with pytest.raises(PermanentError, match=r"pod CIDR 198\.19\.64\.0/18 overlaps the service"):
        lab(reserved=[NET("198.19.96.0/20")])
    with pytest.raises(PermanentError, match=r"InternalIP 198\.19\.0\.11 is inside"):
        lab(reserved=[NET("198.19.0.0/28")])
    assert lab(reserved=[NET("10.0.0.0/8")]).members


# --- Machines: one bad Machine never fails the tenant -------------------------------------------


def reasons(spec: TenantSpec) -> dict[str, tuple[str, type[ReconcileError]]]:
    return {p.machine: (p.error.reason, type(p.error)) for p in spec.pending}


def test_machine_without_node_ref_is_pending_and_temporary() -> None:
    t = samples.lab_tenant()
    spec = lab(machines=[*t.machines, samples.machine(name="tenant-a-md-9")])
    assert reasons(spec) == {"tenant-a-md-9": ("WaitingForNodeRef", TemporaryError)}
    assert len(spec.members) == 3
    assert "has no status.nodeRef yet" in spec.pending[0].error.message


@pytest.mark.parametrize(
    "addresses",
    [None, [], [("ExternalIP", "203.0.113.9")], [("InternalIP", "fd00::9")], [("InternalIP", "x")]],
)
def test_machine_without_an_ipv4_internal_ip_is_pending(
    addresses: list[tuple[str, str]] | None,
) -> None:
    t = samples.lab_tenant()
    m = samples.machine(name="tenant-a-md-9", node="node-9", addresses=addresses)
    spec = lab(machines=[*t.machines, m])
    assert reasons(spec) == {"tenant-a-md-9": ("WaitingForAddresses", TemporaryError)}
    assert spec.pending[0].node == "node-9"
    assert "no IPv4 InternalIP" in spec.pending[0].error.message


def test_first_ipv4_internal_ip_wins() -> None:
    m = samples.machine(
        name="m",
        node="n",
        addresses=[
            ("InternalIP", "fd00::1"),
            ("InternalIP", "198.19.0.50"),
            ("InternalIP", "198.19.0.51"),
        ],
    )
    assert lab(machines=[m]).members[0].internal_ip == IPv4Address("198.19.0.50")


@pytest.mark.parametrize(
    ("node", "needle"),
    [
        ("x" * 65, "at most 64"),
        ("Node_1", "DNS-1123"),
        (APISERVER_COMMON_NAME, "reserved for the apiserver"),
    ],
)
def test_node_name_that_cannot_be_a_common_name_is_pending_and_permanent(
    node: str, needle: str
) -> None:
    spec = lab(machines=[samples.machine(name="m", node=node, internal_ip="198.19.0.50")])
    assert reasons(spec) == {"m": ("InvalidNodeName", PermanentError)}
    assert needle in spec.pending[0].error.message


def test_duplicate_node_and_address_go_to_the_first_machine() -> None:
    machines = [
        samples.machine(name="a", node="n1", internal_ip="198.19.0.11"),
        samples.machine(name="b", node="n1", internal_ip="198.19.0.12"),
        samples.machine(name="c", node="n3", internal_ip="198.19.0.11"),
    ]
    spec = lab(machines=machines, nodes=[])
    assert [m.machine for m in spec.members] == ["a"]
    assert reasons(spec) == {
        "b": ("DuplicateNode", PermanentError),
        "c": ("DuplicateInternalIP", PermanentError),
    }


def test_deleting_other_cluster_and_other_namespace_machines_are_ignored() -> None:
    machines = [
        samples.machine(name="a", node="n1", internal_ip="198.19.0.11"),
        samples.machine(name="b", node="n2", internal_ip="198.19.0.12", deleting=True),
        samples.machine(name="c", node="n3", internal_ip="198.19.0.13", cluster_name="other"),
        samples.machine(name="d", node="n4", internal_ip="198.19.0.14", namespace="elsewhere"),
    ]
    spec = lab(machines=machines, nodes=[])
    assert [m.machine for m in spec.members] == ["a"]
    assert spec.pending == ()


def test_machine_found_by_label_when_spec_cluster_name_is_absent() -> None:
    m = samples.machine(name="a", node="n1", internal_ip="198.19.0.11")
    del m["spec"]["clusterName"]
    assert [x.machine for x in lab(machines=[m]).members] == ["a"]


def test_members_are_sorted_whatever_the_input_order() -> None:
    t = samples.lab_tenant()
    assert lab(machines=list(reversed(t.machines))) == lab()


# --- Node facts: pod CIDRs and kubelet port ----------------------------------------------


def test_without_nodes_there_are_no_pod_cidrs() -> None:
    spec = lab(nodes=None)
    assert all(m.pod_cidrs == () for m in spec.members)


def test_kubelet_port_comes_from_the_node() -> None:
    t = samples.lab_tenant(nodes=1)
    spec = lab(machines=t.machines, nodes=[samples.node(name="node-1", kubelet_port=10251)])
    assert spec.members[0].kubelet_port == 10251


@pytest.mark.parametrize(
    ("pod_cidrs", "warning"),
    [
        (["10.0.0.0/24"], "outside the cluster's pod CIDRs"),
        (["198.19.65.0/25"], "overlaps node node-1's"),
        (["not-a-cidr"], None),
    ],
)
def test_bad_node_pod_cidrs_are_dropped_with_a_warning(
    pod_cidrs: list[str], warning: str | None
) -> None:
    t = samples.lab_tenant(nodes=2)
    nodes = [
        samples.node(name="node-1", pod_cidrs=["198.19.65.0/24"]),
        samples.node(name="node-2", pod_cidrs=pod_cidrs),
    ]
    spec = lab(machines=t.machines, nodes=nodes)
    assert spec.members[0].pod_cidrs == (NET("198.19.65.0/24"),)
    assert spec.members[1].pod_cidrs == ()
    if warning is not None:
        assert any(warning in w for w in spec.warnings), spec.warnings


def test_pod_cidr_containing_a_node_address_is_dropped() -> None:
    # Pods and nodes share one network (VPC-style CNI): a node's /32 and another node's
    # podCIDR would overlap in openvpn's routing.
    spec = parse_tenant(
        tunnel=samples.tunnel(spec={"clusterName": "tenant-a", "tunnelCIDR": "198.18.8.0/24"}),
        cluster=samples.cluster(pods=["198.19.0.0/18"], services=["198.19.192.0/20"]),
        machines=[
            samples.machine(name="a", node="n1", internal_ip="198.19.0.11"),
            samples.machine(name="b", node="n2", internal_ip="198.19.1.12"),
        ],
        nodes=[samples.node(name="n1", pod_cidrs=["198.19.1.0/24"])],
    )
    assert spec.members[0].pod_cidrs == ()
    assert any("contains node n2's InternalIP" in w for w in spec.warnings)


def test_parse_is_pure() -> None:
    assert lab() == lab()
