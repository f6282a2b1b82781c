from ipaddress import IPv4Address, IPv4Network

import pytest

from vpnctl.lab.address_plan import LAB_RANGE, MAX_NODES, PlanError, lab_namespace_re, make_plan


def test_infrastructure_addresses_follow_the_lab_plan() -> None:
    plan = make_plan(prefix="vt3a9f", nodes=3)
    assert (plan.wan_ns, plan.srv_ns, plan.api_ns, plan.rtr_ns) == (
        "vt3a9f-wan", "vt3a9f-srv", "vt3a9f-api", "vt3a9f-rtr",
    )  # fmt: skip
    assert str(plan.srv_if) == "198.18.0.1/24"
    assert str(plan.api_if) == "198.18.0.2/24"
    assert str(plan.rtr_wan_if) == "198.18.0.3/24"
    assert plan.nat_ip == IPv4Address("198.18.0.3")
    assert (plan.svc_ns, str(plan.svc_if)) == ("vt3a9f-svc", "198.18.0.4/24")
    assert str(plan.lan_gateway) == "198.19.0.1/24"
    assert plan.server_port == 1194
    assert plan.tenant_cidrs == (
        IPv4Network("198.19.0.0/24"), IPv4Network("198.19.64.0/18"),
        IPv4Network("198.19.192.0/20"),
    )  # fmt: skip
    assert plan.tunnel_cidr == IPv4Network("198.18.8.0/24")
    assert plan.tunnel_server_ip == IPv4Address("198.18.8.1")
    assert plan.tunnel_apiserver_ip == IPv4Address("198.18.8.2")


def test_node_entries_follow_the_lab_plan() -> None:
    plan = make_plan(prefix="vlab", nodes=3)
    n2 = plan.node("node-2")
    assert (n2.index, n2.ns, n2.pod_ns) == (2, "vlab-n2", "vlab-p2")
    assert n2.internal_ip == IPv4Address("198.19.0.12")
    assert str(n2.lan_if) == "198.19.0.12/24"
    assert n2.pod_cidr == IPv4Network("198.19.66.0/24")
    assert str(n2.pod_gateway) == "198.19.66.1/24"
    assert n2.pod_ip == IPv4Address("198.19.66.2")
    assert n2.tunnel_ip == IPv4Address("198.18.8.12")
    assert n2.kubelet_address == "198.19.0.12:10250"
    assert n2.kubelet_url == "https://198.19.0.12:10250"
    assert n2.webhook_url == "https://198.19.66.2:8443"
    assert [n.name for n in plan.nodes] == ["node-1", "node-2", "node-3"]


def test_namespaces_are_listed_in_build_order_without_duplicates() -> None:
    plan = make_plan(prefix="ab", nodes=2)
    assert plan.namespaces == (
        "ab-wan", "ab-srv", "ab-api", "ab-rtr", "ab-svc", "ab-n1", "ab-p1", "ab-n2", "ab-p2",
    )  # fmt: skip


def test_largest_lab_stays_inside_the_benchmarking_range_and_tenant_cidrs() -> None:
    plan = make_plan(prefix="big", nodes=MAX_NODES)
    for item in plan.all_addresses():
        if isinstance(item, IPv4Network):
            assert item.subnet_of(LAB_RANGE), item
        else:
            assert item in LAB_RANGE, item
    last = plan.nodes[-1]
    assert last.internal_ip == IPv4Address("198.19.0.50")
    assert last.pod_cidr.subnet_of(plan.pod_cidr)
    assert len({n.pod_cidr for n in plan.nodes}) == MAX_NODES
    # The tunnel must not overlap anything the tenant routes.
    assert not any(plan.tunnel_cidr.overlaps(c) for c in plan.tenant_cidrs)


@pytest.mark.parametrize("nodes", [0, -1, MAX_NODES + 1, True])
def test_node_count_out_of_range_is_rejected_with_the_range(nodes: int) -> None:
    with pytest.raises(PlanError, match=rf"1 to {MAX_NODES}"):
        make_plan(prefix="vlab", nodes=nodes)


@pytest.mark.parametrize("prefix", ["", "UPPER", "has-dash", "toolong12", "a b", "é"])
def test_bad_prefix_is_rejected_with_what_is_allowed(prefix: str) -> None:
    with pytest.raises(PlanError, match="1-8 characters of a-z and 0-9"):
        make_plan(prefix=prefix, nodes=1)


def test_unknown_node_names_the_known_ones() -> None:
    with pytest.raises(PlanError, match="node-1, node-2"):
        make_plan(prefix="vlab", nodes=2).node("node-9")


def test_namespace_pattern_matches_only_this_labs_names() -> None:
    pattern = lab_namespace_re("vt")
    ours = ("vt-wan", "vt-srv", "vt-n1", "vt-p40", "vt-rtr", "vt-svc")
    assert all(pattern.fullmatch(n) for n in ours)
    # Other people's namespaces with a similar prefix must never match: destroy deletes them.
    for other in ("vt-1a2b3c-a", "vtx-wan", "vt-wan2", "vt-n0", "vt-n100", "xvt-wan", "vt-api-x"):
        assert not pattern.fullmatch(other), other
