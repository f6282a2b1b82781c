"""The Tunnel CRD: its schema says what the controller's parser assumes.

These tests read the YAML only; applying it to a real apiserver is a kube test.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from vpnctl.api import TUNNEL_GROUP, TUNNEL_KIND, TUNNEL_PLURAL, TUNNEL_VERSION
from vpnctl.reconcile import tenant_spec as tenant
from vpnctl.reconcile.durations import DURATION_PATTERN

CRD_PATH = Path(__file__).resolve().parents[2] / "charts/vpnctl/files/crds/tunnels.vpnctl.io.yaml"


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    docs = list(yaml.safe_load_all(CRD_PATH.read_text()))
    assert len(docs) == 1
    doc = docs[0]
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def version(crd: dict[str, Any]) -> dict[str, Any]:
    versions = crd["spec"]["versions"]
    assert [v["name"] for v in versions] == [TUNNEL_VERSION]
    v = versions[0]
    assert isinstance(v, dict)
    return v


@pytest.fixture(scope="module")
def spec_schema(version: dict[str, Any]) -> dict[str, Any]:
    s = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert isinstance(s, dict)
    return s


@pytest.fixture(scope="module")
def status_schema(version: dict[str, Any]) -> dict[str, Any]:
    s = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert isinstance(s, dict)
    return s


def test_names_group_scope_and_short_name(crd: dict[str, Any]) -> None:
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == f"{TUNNEL_PLURAL}.{TUNNEL_GROUP}"
    spec = crd["spec"]
    assert spec["group"] == TUNNEL_GROUP
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == TUNNEL_KIND
    assert spec["names"]["plural"] == TUNNEL_PLURAL
    assert spec["names"]["shortNames"] == ["tun"]


def test_served_stored_with_status_subresource(version: dict[str, Any]) -> None:
    assert version["served"] is True
    assert version["storage"] is True
    assert version["subresources"] == {"status": {}}


def test_printer_columns(version: dict[str, Any]) -> None:
    columns = {c["name"].upper(): c for c in version["additionalPrinterColumns"]}
    assert list(columns) == ["CLUSTER", "READY", "NODES", "CONNECTED", "AGE"]
    assert columns["CLUSTER"]["jsonPath"] == ".spec.clusterName"
    assert columns["READY"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["NODES"]["jsonPath"] == ".status.nodeCount"
    assert columns["CONNECTED"]["jsonPath"] == ".status.connectedCount"
    assert columns["AGE"] == {
        "name": "Age",
        "type": "date",
        "jsonPath": ".metadata.creationTimestamp",
    }


def _walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, schema)]
    for key, sub in (schema.get("properties") or {}).items():
        out += _walk(sub, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        out += _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        out += _walk(schema["additionalProperties"], f"{path}{{}}")
    return out


def test_schema_is_structural(version: dict[str, Any]) -> None:
    """Every node has a type, and nothing opts out of pruning. The one node without a
    type that a structural schema allows: a quantity, x-kubernetes-int-or-string (then
    anyOf integer or string); the apiserver takes the CRD
    (tests/kube/test_tunnel_crd_resources.py)."""
    for path, node in _walk(version["schema"]["openAPIV3Schema"]):
        if node.get("x-kubernetes-int-or-string") is True:
            assert "type" not in node, path
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
            continue
        assert "type" in node, f"{path or '<root>'} has no type"
        assert "x-kubernetes-preserve-unknown-fields" not in node, path
        assert not ("properties" in node and "additionalProperties" in node), path


def test_spec_defaults_match_the_parser(spec_schema: dict[str, Any]) -> None:
    p = spec_schema["properties"]
    assert spec_schema["required"] == ["clusterName"]
    assert p["transport"]["properties"]["protocol"]["default"] == tenant.DEFAULT_PROTOCOL
    assert p["transport"]["properties"]["protocol"]["enum"] == list(tenant.PROTOCOLS)
    assert p["transport"]["properties"]["port"]["default"] == tenant.DEFAULT_PORT
    reneg = p["transport"]["properties"]["renegotiateSeconds"]
    assert reneg["default"] == tenant.DEFAULT_RENEGOTIATE_SECONDS
    assert (reneg["minimum"], reneg["maximum"]) == (
        tenant.MIN_RENEGOTIATE_SECONDS,
        tenant.MAX_RENEGOTIATE_SECONDS,
    )
    assert p["expose"]["properties"]["serviceType"]["default"] == tenant.DEFAULT_SERVICE_TYPE
    assert p["expose"]["properties"]["serviceType"]["enum"] == list(tenant.SERVICE_TYPES)
    assert p["expose"]["properties"]["annotations"]["additionalProperties"] == {"type": "string"}
    assert p["tunnelCIDR"]["default"] == tenant.DEFAULT_TUNNEL_CIDR
    assert p["replicas"]["default"] == tenant.DEFAULT_REPLICAS
    assert (p["replicas"]["minimum"], p["replicas"]["maximum"]) == (1, tenant.MAX_REPLICAS)
    certs = p["certificates"]["properties"]
    assert certs["caLifetime"]["default"] == tenant.DEFAULT_CA_LIFETIME
    assert certs["serverLifetime"]["default"] == tenant.DEFAULT_SERVER_LIFETIME
    assert certs["clientLifetime"]["default"] == tenant.DEFAULT_CLIENT_LIFETIME
    assert certs["renewFraction"]["default"] == tenant.DEFAULT_RENEW_FRACTION
    assert p["agent"]["properties"]["install"]["default"] is True
    # Objects default to {} so their members' defaults apply when the object is omitted.
    for name in ("transport", "expose", "certificates", "agent"):
        assert p[name]["default"] == {}, name


def test_parser_applies_the_same_defaults_as_the_schema(spec_schema: dict[str, Any]) -> None:
    """A Tunnel with only clusterName parses to exactly the CRD's defaults."""
    from tests.support import capi

    parsed = tenant.parse_tunnel_spec(capi.tunnel(spec={"clusterName": "x"}))
    p = spec_schema["properties"]
    assert parsed.transport.protocol == p["transport"]["properties"]["protocol"]["default"]
    assert parsed.transport.port == p["transport"]["properties"]["port"]["default"]
    assert (
        parsed.transport.renegotiate_seconds
        == p["transport"]["properties"]["renegotiateSeconds"]["default"]
    )
    assert str(parsed.tunnel_cidr) == p["tunnelCIDR"]["default"]
    assert parsed.expose.service_type == p["expose"]["properties"]["serviceType"]["default"]
    assert parsed.replicas == p["replicas"]["default"]
    assert parsed.install_agent is p["agent"]["properties"]["install"]["default"]


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("100.127.255.0/24", True),
        ("198.18.8.0/24", True),
        ("10.0.0.0/16", True),
        ("10.0.0.0/29", True),
        ("10.0.0.0/30", False),  # too small for a node
        ("10.0.0.0/15", False),  # too big
        ("256.0.0.0/24", False),
        ("10.0.0/24", False),
        ("fd00::/64", False),
        ("10.0.0.0", False),
    ],
)
def test_tunnel_cidr_pattern(spec_schema: dict[str, Any], text: str, ok: bool) -> None:
    pattern = spec_schema["properties"]["tunnelCIDR"]["pattern"]
    assert bool(re.fullmatch(pattern, text)) is ok


@pytest.mark.parametrize(
    ("text", "ok"),
    [("10.0.0.0/8", True), ("0.0.0.0/0", True), ("10.1.2.3/32", True), ("10.0.0.0/33", False)],
)
def test_extra_routes_pattern(spec_schema: dict[str, Any], text: str, ok: bool) -> None:
    items = spec_schema["properties"]["extraRoutes"]["items"]
    assert bool(re.fullmatch(items["pattern"], text)) is ok


@pytest.mark.parametrize(
    ("text", "ok"),
    [("8760h", True), ("1h30m", True), ("90m", True), ("1.5h", True), ("30d", False), ("", False)],
)
def test_lifetime_pattern_is_the_parsers(spec_schema: dict[str, Any], text: str, ok: bool) -> None:
    certs = spec_schema["properties"]["certificates"]
    for field in ("caLifetime", "serverLifetime", "clientLifetime"):
        assert certs["properties"][field]["pattern"] == DURATION_PATTERN
    assert bool(re.fullmatch(DURATION_PATTERN, text)) is ok
    # Cross-field rules guard against a missing key (the default {} is checked too).
    rules = [r["rule"] for r in certs["x-kubernetes-validations"]]
    assert len(rules) == 2
    assert all("!has(" in r and "duration(" in r for r in rules)


def test_cluster_name_is_immutable(spec_schema: dict[str, Any]) -> None:
    rules = spec_schema["properties"]["clusterName"]["x-kubernetes-validations"]
    assert rules[0]["rule"] == "self == oldSelf"


def test_status_conditions_follow_metav1_condition(status_schema: dict[str, Any]) -> None:
    conditions = status_schema["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]
    assert set(item["properties"]) == {
        "type",
        "status",
        "observedGeneration",
        "lastTransitionTime",
        "reason",
        "message",
    }
    assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert item["properties"]["lastTransitionTime"]["format"] == "date-time"
    assert re.fullmatch(item["properties"]["reason"]["pattern"], "CIDROverlap")


def test_status_fields(status_schema: dict[str, Any]) -> None:
    p = status_schema["properties"]
    assert set(p) == {
        "observedGeneration",
        "conditions",
        "nodes",
        "allocations",
        "releasedTunnelIPs",
        "serviceRouteNode",
        "serviceRouteElectedAt",
        "agentImage",
        "agentImageRollingSince",
        "nodeCount",
        "connectedCount",
    }
    assert set(p["nodes"]["items"]["properties"]) == {
        "name",
        "machine",
        "tunnelIP",
        "connected",
        "since",
        "connectedSince",
        "rttSeconds",
        "kubeletReachable",
    }
    allocations = p["allocations"]
    assert allocations["x-kubernetes-list-map-keys"] == ["machine"]
    assert allocations["items"]["required"] == ["machine", "node", "tunnelIP"]


def test_spec_resources_are_the_parsers_components(spec_schema: dict[str, Any]) -> None:
    from vpnctl.reconcile.container_resources import COMPONENTS, KINDS, NAMES

    resources = spec_schema["properties"]["resources"]["properties"]
    assert tuple(resources) == COMPONENTS
    for component in resources.values():
        assert tuple(component["properties"]) == KINDS
        for kind in component["properties"].values():
            assert tuple(kind["properties"]) == NAMES
