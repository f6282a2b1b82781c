"""`clusterctl move` takes a tenant's whole PKI with its Cluster (issue 15, item 4).

A pivot (bootstrap cluster to permanent management cluster) that left the CA Secret
behind would make the controller on the other side issue a new CA, and every node's
certificate with it. clusterctl finds what to move by the CRD label
`clusterctl.cluster.x-k8s.io` and by owner references (tests/support/clusterctl_move.py
states its rule); these tests run that rule over the objects the controller's builders
make for one tenant, and over the chart's real Tunnel CRD.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from tests.support import capi
from tests.support.clusterctl_move import CLUSTERCTL_LABEL, key, moved_objects
from vpnctl.api import TunnelSpecBody
from vpnctl.controller.revocation_store import TunnelOwner, book_config_map
from vpnctl.controller.tenant_lifecycle import owner_ref
from vpnctl.reconcile.agentdocs import server_role_config
from vpnctl.reconcile.revocation_book import RevocationBook
from vpnctl.reconcile.server_policy import server_network_policy
from vpnctl.reconcile.service_objects import (
    apiserver_client_secret,
    apiserver_config_map,
    ca_secret,
    server_config_map,
    server_deployment,
    server_secret,
    server_service,
    tls_crypt_secret,
)
from vpnctl.reconcile.settings import Settings
from vpnctl.reconcile.tenant_spec import parse_tenant

CRD_FILE = Path(__file__).resolve().parents[2] / "charts/vpnctl/files/crds/tunnels.vpnctl.io.yaml"
PEM = b"-----BEGIN CERTIFICATE-----\nbm90LWEtY2VydA==\n-----END CERTIFICATE-----\n"


@pytest.fixture
def tunnel_crd() -> dict[str, Any]:
    crd = yaml.safe_load(CRD_FILE.read_text())
    assert isinstance(crd, dict)
    return crd


def management_objects() -> list[Mapping[str, Any]]:
    """What one tenant has in the management cluster: its Cluster, CAPI's kubeconfig
    Secret, the Tunnel (owned by the Cluster, as the controller makes it) and all that
    the controller builds for it."""
    sample = capi.lab_tenant()
    cluster = cast(dict[str, Any], copy.deepcopy(sample.cluster))
    spec: TunnelSpecBody = {"clusterName": "tenant-a", "tunnelCIDR": "198.18.8.0/24"}
    tunnel = cast(dict[str, Any], capi.tunnel(spec=spec))
    tunnel["metadata"]["ownerReferences"] = [owner_ref(cluster)]
    tenant = parse_tenant(
        tunnel=cast(Any, tunnel),
        cluster=sample.cluster,
        machines=sample.machines,
        nodes=sample.nodes,
    )
    settings = Settings(agent_image="registry.example/vpnctl:1")
    role = server_role_config(tenant=tenant, settings=settings)
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "tenant-a-kubeconfig", "namespace": "tenant-a", "uid": "u-kc"},
    }
    built: list[Mapping[str, Any]] = [
        ca_secret(tenant=tenant, cert_pem=PEM, key_pem=b"k"),
        server_secret(tenant=tenant, cert_pem=PEM, key_pem=b"k", ca_pem=PEM, tls_crypt_v2_key=b"t"),
        tls_crypt_secret(tenant=tenant, server_key=b"t"),
        apiserver_client_secret(
            tenant=tenant, cert_pem=PEM, key_pem=b"k", ca_pem=PEM, tls_crypt_v2_client_key=b"c"
        ),
        server_config_map(tenant=tenant, role_config=role, desired={}, crl_pem=PEM),
        apiserver_config_map(tenant=tenant, role_config={}),
        book_config_map(
            TunnelOwner(namespace="tenant-a", cluster="tenant-a", tunnel_uid=tenant.tunnel_uid),
            RevocationBook(),
        ),
        server_deployment(tenant=tenant, settings=settings, role_config=role),
        server_service(tenant=tenant),
        server_network_policy(tenant=tenant, settings=settings),
    ]
    for i, obj in enumerate(built):
        obj["metadata"]["uid"] = f"u-{i}"
    return [cluster, kubeconfig, tunnel, *built]


def _kinds(keys: set[tuple[str, str, str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for kind, _, name in keys:
        out.setdefault(kind, set()).add(name)
    return out


def test_the_tunnel_crd_carries_clusterctls_discovery_label(tunnel_crd: dict[str, Any]) -> None:
    assert tunnel_crd["metadata"]["labels"][CLUSTERCTL_LABEL] == ""


def test_move_takes_the_tunnel_and_every_secret_and_config_map_with_the_cluster(
    tunnel_crd: dict[str, Any],
) -> None:
    objects = management_objects()
    moved = moved_objects(crds=[tunnel_crd], objects=objects)
    wanted = {key(o) for o in objects if o["kind"] in ("Cluster", "Tunnel", "Secret", "ConfigMap")}
    assert moved == wanted
    by_kind = _kinds(moved)
    assert by_kind["Tunnel"] == {"tenant-a"}
    assert {
        "tenant-a-vpn-ca",
        "tenant-a-vpn-server-tls",
        "tenant-a-vpn-tls-crypt",
        "tenant-a-vpn-apiserver-tls",
        "tenant-a-kubeconfig",
    } == by_kind["Secret"]
    assert {"tenant-a-vpn-server", "tenant-a-vpn-apiserver", "tenant-a-vpn-revocations"} == (
        by_kind["ConfigMap"]
    )
    # The workloads stay: the controller in the new management cluster builds them again.
    assert not {"Deployment", "Service", "NetworkPolicy"} & set(by_kind)


def test_every_object_the_controller_builds_is_owned_by_the_tunnel() -> None:
    """What keeps the PKI in the chain: an owner reference to the Tunnel (a Secret named
    `<cluster>-...` without owners would move too, but by clusterctl's naming rule only)."""
    objects = management_objects()
    (tunnel,) = [o for o in objects if o["kind"] == "Tunnel"]
    uid = tunnel["metadata"]["uid"]
    ours = [o for o in objects if o["kind"] not in ("Cluster", "Tunnel")]
    ours = [o for o in ours if o["metadata"]["name"] != "tenant-a-kubeconfig"]
    assert len(ours) == 10
    for obj in ours:
        refs = obj["metadata"]["ownerReferences"]
        assert [r["uid"] for r in refs] == [uid], key(obj)
        assert refs[0]["controller"] is True


@pytest.mark.parametrize("labels", [None, {"app.kubernetes.io/name": "vpnctl"}])
def test_without_the_label_the_pki_stays_behind(
    tunnel_crd: dict[str, Any], labels: dict[str, str] | None
) -> None:
    """Why the label matters: the Tunnel is then no discovered kind, so the chain from
    the Cluster breaks and the CA is left behind (the pivot re-issues every tenant's CA)."""
    crd = copy.deepcopy(tunnel_crd)
    crd["metadata"]["labels"] = labels
    moved = _kinds(moved_objects(crds=[crd], objects=management_objects()))
    assert "Tunnel" not in moved
    assert moved["Secret"] == {"tenant-a-kubeconfig"}  # CAPI's, soft-owned by name
    assert "ConfigMap" not in moved


def test_the_oracle_follows_owner_chains_not_namespaces(tunnel_crd: dict[str, Any]) -> None:
    """The rule itself: an object of ours owned by nothing moved is left behind."""
    objects = [dict(o) for o in management_objects()]
    stray = copy.deepcopy(next(o for o in objects if o["kind"] == "ConfigMap"))
    stray["metadata"].update(name="stray", uid="u-stray", ownerReferences=[{"uid": "nope"}])
    moved = moved_objects(crds=[tunnel_crd], objects=[*objects, stray])
    assert key(stray) not in moved
    assert ("ConfigMap", "tenant-a", "tenant-a-vpn-server") in moved
