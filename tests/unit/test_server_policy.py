"""The NetworkPolicy in front of a tenant's server pods (issue 9, item 7)."""

from __future__ import annotations

from typing import Any

from tests.support import capi
from vpnctl.reconcile.agentdocs import server_role_config
from vpnctl.reconcile.names import COMPONENT_SERVER, selector_labels
from vpnctl.reconcile.server_policy import CONTROLLER_POD_LABELS, server_network_policy
from vpnctl.reconcile.service_objects import server_deployment
from vpnctl.reconcile.settings import Settings
from vpnctl.reconcile.tenant_spec import TenantSpec

SETTINGS = Settings(agent_image="registry.example/vpnctl:1")


def lab(**spec: Any) -> TenantSpec:
    return capi.parsed_lab_tenant(spec)


def test_network_policy_vpn_port_from_anywhere_http_from_controller_and_monitoring() -> None:
    settings = Settings(
        agent_image="i",
        controller_namespace="vpnctl-system",
        metrics_namespaces=("monitoring", "monitoring", "obs"),
    )
    t = lab()
    policy = server_network_policy(tenant=t, settings=settings)
    assert policy["apiVersion"] == "networking.k8s.io/v1"
    assert policy["metadata"]["namespace"] == t.namespace
    assert policy["metadata"]["ownerReferences"][0]["kind"] == "Tunnel"
    spec = policy["spec"]
    # It selects exactly the server pods (the Deployment's selector).
    deploy = server_deployment(
        tenant=t, settings=settings, role_config=server_role_config(tenant=t, settings=settings)
    )
    assert spec["podSelector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]
    assert spec["podSelector"]["matchLabels"] == selector_labels(
        cluster_name="tenant-a", component=COMPONENT_SERVER
    )
    assert spec["policyTypes"] == ["Ingress"]
    vpn, http = spec["ingress"]
    assert vpn == {"ports": [{"port": 1194, "protocol": "UDP"}]}  # no `from`: anyone
    assert http["ports"] == [{"port": settings.server_health_port, "protocol": "TCP"}]
    assert http["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "vpnctl-system"}},
            "podSelector": {"matchLabels": CONTROLLER_POD_LABELS},
        },
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "obs"}}},
    ]


def test_network_policy_follows_the_transport_and_never_opens_http_to_all() -> None:
    policy = server_network_policy(
        tenant=lab(transport={"protocol": "tcp", "port": 443}), settings=SETTINGS
    )
    # No controller namespace and no monitoring: the HTTP port gets no rule, i.e. closed
    # (an empty `from` would have meant "from everywhere").
    assert policy["spec"]["ingress"] == [{"ports": [{"port": 443, "protocol": "TCP"}]}]
