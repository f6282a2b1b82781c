"""node.json's `bootstrap` section: the agent's own loader accepts it, and the DaemonSet
gives the pod every file it names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.role_config import ClientRoleConfig, load_role_config
from tests.support import capi
from vpnctl.reconcile.agent_objects import agent_daemon_set
from vpnctl.reconcile.agentdocs import (
    NodePaths,
    canonical_json,
    node_bootstrap_config,
    node_role_config,
)
from vpnctl.reconcile.errors import PermanentError
from vpnctl.reconcile.settings import Settings
from vpnctl.reconcile.tenant_spec import TenantSpec, parse_tenant

SETTINGS = Settings(agent_image="registry.example/vpnctl:1")


def lab_tenant() -> TenantSpec:
    t = capi.lab_tenant()
    spec: dict[str, Any] = {"clusterName": "tenant-a", "tunnelCIDR": capi.LAB_TUNNEL_CIDR}
    return parse_tenant(
        tunnel=capi.tunnel(spec=spec),  # type: ignore[arg-type]
        cluster=t.cluster,
        machines=t.machines,
        nodes=t.nodes,
    )


def test_bootstrap_section_loads_with_the_agents_loader(tmp_path: Path) -> None:
    doc = node_role_config(
        tenant=lab_tenant(),
        settings=SETTINGS,
        remotes=[("198.18.0.1", 1194)],
        bootstrap_server="https://198.18.0.2:6443/",
    )
    path = tmp_path / "node.json"
    path.write_text(canonical_json(doc))
    cfg = load_role_config(str(path), role="node")
    assert isinstance(cfg, ClientRoleConfig)
    assert cfg.bootstrap is not None
    assert cfg.bootstrap.server == "https://198.18.0.2:6443"
    assert cfg.bootstrap.ca == NodePaths.apiserver_ca
    assert cfg.bootstrap.client_cert == "/var/lib/kubelet/pki/kubelet-client-current.pem"
    assert cfg.bootstrap.client_key == cfg.bootstrap.client_cert
    assert cfg.bootstrap.node_name is None  # from the pod's NODE_NAME
    # The certificate and key the CSR yields are where openvpn reads them.
    assert (cfg.openvpn.cert, cfg.openvpn.key) == (NodePaths.cert, NodePaths.key)


def test_without_a_bootstrap_server_the_document_is_unchanged() -> None:
    t = lab_tenant()
    plain = node_role_config(tenant=t, settings=SETTINGS, remotes=[("198.18.0.1", 1194)])
    assert "bootstrap" not in plain
    with_none = node_role_config(
        tenant=t, settings=SETTINGS, remotes=[("198.18.0.1", 1194)], bootstrap_server=None
    )
    assert canonical_json(with_none) == canonical_json(plain)


def test_bootstrap_follows_the_kubelet_pki_dir_setting() -> None:
    settings = Settings(agent_image="x", kubelet_pki_dir="/var/lib/k0s/kubelet/pki/")
    section = node_bootstrap_config(server="https://cp.example:6443", settings=settings)
    assert section["client_cert"] == "/var/lib/k0s/kubelet/pki/kubelet-client-current.pem"


def _mounted(container: dict[str, Any], path: str) -> bool:
    return any(
        path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")
        for m in container["volumeMounts"]
    )


def test_the_daemonset_pod_has_every_file_the_bootstrap_section_names() -> None:
    doc = node_role_config(
        tenant=lab_tenant(),
        settings=SETTINGS,
        remotes=[("198.18.0.1", 1194)],
        bootstrap_server="https://198.18.0.2:6443",
    )
    ds = agent_daemon_set(cluster_name="tenant-a", settings=SETTINGS, role_config=doc)
    pod = ds["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert _mounted(container, doc["bootstrap"]["client_cert"])
    # The CA comes with the service account volume, which is mounted unless disabled,
    # and no volume of ours shadows it.
    assert pod.get("automountServiceAccountToken", True) is True
    assert pod["serviceAccountName"]
    assert not _mounted(container, doc["bootstrap"]["ca"])
    # What the CSR yields lands in the node's own state directory (a hostPath).
    assert _mounted(container, doc["openvpn"]["key"])
    assert _mounted(container, doc["openvpn"]["cert"])


@pytest.mark.parametrize(
    "server",
    ["http://198.18.0.2:6443", "https://198.18.0.2:6443/k8s/clusters/c-1", "198.18.0.2:6443",
     "https://:6443", "https://198.18.0.2:99999"],
)  # fmt: skip
def test_a_server_the_agent_would_refuse_is_a_permanent_error(server: str) -> None:
    with pytest.raises(PermanentError) as info:
        node_bootstrap_config(server=server, settings=SETTINGS)
    assert info.value.reason == "InvalidKubeconfig"
    assert repr(server) in info.value.message
    assert "fix the kubeconfig Secret" in info.value.message
