"""The lab's Kubernetes objects are what vpnctl's own readers accept, on the lab's plan."""

from __future__ import annotations

import base64
from typing import Any, cast

import yaml

from vpnctl.api import Cluster, Machine, Tunnel
from vpnctl.lab import lab_objects as lo
from vpnctl.lab.address_plan import make_plan
from vpnctl.reconcile.secrets import parse_kubeconfig_secret
from vpnctl.reconcile.settings import Settings
from vpnctl.reconcile.sidecar_objects import (
    ATTACH_SIDECAR_LABEL,
    apiserver_sidecar,
    sidecar_apply_body,
)
from vpnctl.reconcile.tenant_spec import TenantSpec, parse_tenant

PLAN = make_plan(prefix="vt1", nodes=3)


CA_PEM = b"-----BEGIN CERTIFICATE-----\nca\n-----END CERTIFICATE-----\n"


def _service_objects() -> dict[str, dict[str, Any]]:
    # PEM-shaped placeholders: vpnctl checks the kind of PEM block each field holds.
    text = lo.kubeconfig_text(
        name="tenant-a",
        server="https://198.18.0.2:6443",
        ca_pem=CA_PEM,
        cert_pem=b"-----BEGIN CERTIFICATE-----\nc\n-----END CERTIFICATE-----\n",
        key_pem=b"-----BEGIN PRIVATE KEY-----\nk\n-----END PRIVATE KEY-----\n",
    )
    return {o["kind"]: o for o in lo.service_objects(PLAN, tenant_kubeconfig=text)}


def _machine(node_index: int) -> Machine:
    node = PLAN.nodes[node_index]
    return cast(Machine, {**lo.machine(node), **lo.machine_status(node)})


def test_the_tunnel_is_created_before_its_cluster_and_stays_in_the_lab_range() -> None:
    kinds = [o["kind"] for o in lo.service_objects(PLAN, tenant_kubeconfig="x")]
    assert kinds.index("Tunnel") < kinds.index("Cluster")
    objects = _service_objects()
    assert objects["Tunnel"]["spec"]["tunnelCIDR"] == "198.18.8.0/24"
    assert objects["Tunnel"]["spec"]["transport"] == {"protocol": "udp"}
    tcp = lo.service_objects(PLAN, tenant_kubeconfig="x", protocol="tcp")
    assert next(o for o in tcp if o["kind"] == "Tunnel")["spec"]["transport"]["protocol"] == "tcp"


def _parsed_lab_tenant(machines: list[Machine]) -> TenantSpec:
    """The lab's Tunnel and Cluster as vpnctl reads them, once the apiserver set uid and
    generation."""
    objects = _service_objects()
    return parse_tenant(
        tunnel=cast(
            Tunnel,
            {
                **objects["Tunnel"],
                "metadata": {**objects["Tunnel"]["metadata"], "uid": "u", "generation": 1},
            },
        ),
        cluster=cast(Cluster, objects["Cluster"]),
        machines=machines,
    )


def test_vpnctl_reads_the_lab_tenant_as_the_plan_says() -> None:
    tenant = _parsed_lab_tenant([_machine(i) for i in range(3)])
    assert tenant.networks.pods == (PLAN.pod_cidr,)
    assert tenant.networks.services == (PLAN.service_cidr,)
    assert [(m.node, m.internal_ip) for m in tenant.members] == [
        (n.name, n.internal_ip) for n in PLAN.nodes
    ]
    assert tenant.spec.server_ip == PLAN.tunnel_server_ip
    assert tenant.spec.apiserver_ip == PLAN.tunnel_apiserver_ip
    assert not tenant.pending


def test_the_kubeconfig_secret_is_what_capi_writes() -> None:
    secret = _service_objects()["Secret"]
    kubeconfig = parse_kubeconfig_secret(secret, namespace="tenant-a", cluster_name="tenant-a")
    assert kubeconfig.server == "https://198.18.0.2:6443"
    doc = yaml.safe_load(base64.b64decode(secret["data"]["value"]))
    assert base64.b64decode(doc["clusters"][0]["cluster"]["certificate-authority-data"]) == CA_PEM


def test_a_machine_made_again_gets_a_new_name() -> None:
    node = PLAN.nodes[2]
    assert lo.machine_name(node) == "tenant-a-md-3"
    assert lo.machine(node, generation=2)["metadata"]["name"] == "tenant-a-md-3-2"
    assert "status" not in lo.machine(node)  # CAPI sets it once the node joined


def test_vpnctl_attaches_its_sidecar_to_the_lab_apiserver_deployment() -> None:
    deployment = lo.apiserver_deployment(PLAN)
    assert deployment["metadata"]["labels"][ATTACH_SIDECAR_LABEL] == "tenant-a"
    template_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = dict(kv.split("=") for kv in lo.apiserver_pod_selector().split(","))
    assert selector == template_labels == deployment["spec"]["selector"]["matchLabels"]
    tenant = _parsed_lab_tenant([])
    attachment = apiserver_sidecar(
        tenant=tenant, settings=Settings(agent_image="x"), role_config={}
    )
    body = sidecar_apply_body(deployment, attachment=attachment)
    assert body is not None
    assert body["metadata"]["name"] == lo.APISERVER_DEPLOYMENT
