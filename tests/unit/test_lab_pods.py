"""The lab's kubelet part that is pure: volumes to files, mountPaths to lab directories.

The strongest check runs vpnctl's own builders: the server Deployment's pod and its
ConfigMap and Secret become files, and the agent's own loader accepts the role config
with every path it names existing in the lab.
"""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import certs
from agent.desired_state import load_desired
from agent.role_config import ServerRoleConfig, load_role_config
from tests.support import capi
from vpnctl.lab.pods import (
    SERVICE_ACCOUNT_DIR,
    File,
    Mount,
    PodError,
    container_argv,
    container_env,
    pod_mounts,
    referenced,
    rewrite,
    rewrite_path,
    volume_files,
    write_volume,
)
from vpnctl.reconcile.agentdocs import server_role_config
from vpnctl.reconcile.service_objects import (
    server_config_map,
    server_deployment,
    server_secret,
)
from vpnctl.reconcile.settings import Settings
from vpnctl.reconcile.tenant_spec import parse_tenant


def cm(name: str, **data: str) -> dict[str, Any]:
    return {"kind": "ConfigMap", "metadata": {"name": name, "namespace": "t"}, "data": data}


def secret(name: str, **data: bytes) -> dict[str, Any]:
    return {
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "t"},
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }


PROJECTED = {
    "name": "config",
    "projected": {
        "defaultMode": 0o444,
        "sources": [
            {"configMap": {"name": "c", "items": [{"key": "a.json", "path": "a.json"}]}},
            {"secret": {"name": "s", "items": [{"key": "k", "path": "pki/k", "mode": 0o400}]}},
        ],
    },
}


def test_projected_volume_becomes_files_with_their_modes() -> None:
    objects = {
        ("ConfigMap", "c"): cm("c", **{"a.json": "{}"}),
        ("Secret", "s"): secret("s", k=b"x"),
    }
    files = volume_files(PROJECTED, objects=objects)
    assert files == {"a.json": File(data=b"{}", mode=0o444), "pki/k": File(data=b"x", mode=0o400)}
    assert [(r.kind, r.name) for r in referenced([PROJECTED])] == [
        ("ConfigMap", "c"),
        ("Secret", "s"),
    ]


def test_a_downward_api_source_follows_the_pods_annotations() -> None:
    """The sidecar's slot file: empty until the controller annotates the pod, then the
    slot, rewritten on the pod update as kubelet does."""
    volume = {
        "name": "config",
        "projected": {
            "sources": [
                {"downwardAPI": {"items": [{"path": "slot", "fieldRef": {
                    "fieldPath": "metadata.annotations['vpnctl.io/apiserver-slot']"}}]}},
            ]
        },
    }  # fmt: skip
    pod: dict[str, Any] = {"metadata": {"name": "p", "annotations": {}}}
    assert volume_files(volume, objects={}, pod=pod) == {"slot": File(data=b"", mode=0o644)}
    pod["metadata"]["annotations"]["vpnctl.io/apiserver-slot"] = "2"
    assert volume_files(volume, objects={}, pod=pod) == {"slot": File(data=b"2", mode=0o644)}
    odd = {"name": "x", "projected": {"sources": [{"downwardAPI": {"items": [
        {"path": "n", "fieldRef": {"fieldPath": "spec.nodeName"}}]}}]}}  # fmt: skip
    with pytest.raises(PodError, match=r"spec\.nodeName"):
        volume_files(odd, objects={}, pod=pod)


def test_a_missing_object_or_key_keeps_the_pod_from_starting() -> None:
    with pytest.raises(PodError, match=r"Secret s does not exist"):
        volume_files(PROJECTED, objects={("ConfigMap", "c"): cm("c", **{"a.json": "{}"})})
    with pytest.raises(PodError, match=r"ConfigMap c has no key 'a.json'"):
        volume_files(
            PROJECTED, objects={("ConfigMap", "c"): cm("c"), ("Secret", "s"): secret("s", k=b"")}
        )
    optional = {"name": "o", "configMap": {"name": "gone", "optional": True}}
    assert volume_files(optional, objects={}) == {}


def test_write_volume_changes_a_file_only_when_its_bytes_change(tmp_path: Path) -> None:
    dest = tmp_path / "v"
    assert write_volume(dest, {"f": File(data=b"1", mode=0o444)}, mounts=[])
    inode = (dest / "f").stat().st_ino
    assert not write_volume(dest, {"f": File(data=b"1", mode=0o444)}, mounts=[])
    assert (dest / "f").stat().st_ino == inode  # a reader polling inode/mtime sees nothing
    assert write_volume(
        dest, {"f": File(data=b"2", mode=0o444), "g": File(data=b"", mode=0o400)}, mounts=[]
    )
    assert (dest / "f").read_bytes() == b"2"
    assert (dest / "f").stat().st_ino != inode  # replaced by a rename: one atomic change
    assert oct((dest / "g").stat().st_mode & 0o777) == oct(0o400)
    assert write_volume(dest, {"g": File(data=b"", mode=0o400)}, mounts=[])
    assert not (dest / "f").exists()  # a key that went away goes away


def test_paths_are_rewritten_by_the_longest_mount_and_nothing_else() -> None:
    mounts = [
        Mount(path="/etc/vpnctl", source="/lab/cfg"),
        Mount(path="/etc/vpnctl/pki", source="/lab/pki"),
        Mount(path="/run/vpnctl/", source="/lab/run"),
    ]
    assert rewrite_path("/etc/vpnctl/server.json", mounts) == "/lab/cfg/server.json"
    assert rewrite_path("/etc/vpnctl/pki/tls.key", mounts) == "/lab/pki/tls.key"
    assert rewrite_path("/run/vpnctl", mounts) == "/lab/run"
    assert rewrite_path("/etc/vpnctlx/a", mounts) == "/etc/vpnctlx/a"
    assert rewrite_path("0.0.0.0:9190", mounts) == "0.0.0.0:9190"
    doc = {"a": ["/run/vpnctl/s.sock", 3, None], "b": {"c": "/etc/vpnctl/pki/ca.crt"}}
    assert rewrite(doc, mounts) == {
        "a": ["/lab/run/s.sock", 3, None],
        "b": {"c": "/lab/pki/ca.crt"},
    }
    container = {
        "name": "x",
        "command": ["python", "-m", "agent", "server", "--config", "/etc/vpnctl/server.json"],
    }
    assert container_argv(container, mounts)[-1] == "/lab/cfg/server.json"


def test_mounts_map_volumes_to_the_pod_and_the_node(tmp_path: Path) -> None:
    spec = {
        "volumes": [
            {"name": "cfg", "configMap": {"name": "c"}},
            {"name": "state", "hostPath": {"path": "/var/lib/vpnctl"}},
            {"name": "tun", "hostPath": {"path": "/dev/net/tun", "type": "CharDevice"}},
            {"name": "tmp", "emptyDir": {}},
        ]
    }
    container = {
        "volumeMounts": [
            {"name": n, "mountPath": p}
            for n, p in (
                ("cfg", "/etc/vpnctl"),
                ("state", "/var/lib/vpnctl"),
                ("tun", "/dev/net/tun"),
                ("tmp", "/tmp"),
            )
        ]
    }
    mounts = pod_mounts(
        spec,
        container,
        pod_dir=tmp_path / "pod",
        host_root=tmp_path / "node",
        service_account_dir=tmp_path / "sa",
    )
    by_path = {m.path: m.source for m in mounts}
    assert by_path["/etc/vpnctl"] == str(tmp_path / "pod" / "cfg")
    assert by_path["/var/lib/vpnctl"] == str(tmp_path / "node" / "var/lib/vpnctl")
    assert by_path["/dev/net/tun"] == "/dev/net/tun"  # the kernel's, per network namespace
    assert by_path[SERVICE_ACCOUNT_DIR] == str(tmp_path / "sa")
    no_sa = pod_mounts(
        {**spec, "automountServiceAccountToken": False},
        container,
        pod_dir=tmp_path,
        host_root=tmp_path,
        service_account_dir=tmp_path,
    )
    assert SERVICE_ACCOUNT_DIR not in {m.path for m in no_sa}
    with pytest.raises(PodError, match="subPath"):
        pod_mounts(
            spec,
            {"volumeMounts": [{"name": "cfg", "mountPath": "/x", "subPath": "a"}]},
            pod_dir=tmp_path,
            host_root=tmp_path,
        )


def test_env_takes_values_and_field_refs_only() -> None:
    container = {
        "env": [
            {"name": "A", "value": "1"},
            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        ]
    }
    assert container_env(container, fields={"spec.nodeName": "node-1"}) == {
        "A": "1",
        "NODE_NAME": "node-1",
    }
    secret_env = {"env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}
    with pytest.raises(PodError, match="env T"):
        container_env(secret_env, fields={})


def test_the_server_pod_vpnctl_builds_runs_from_the_lab_directories(tmp_path: Path) -> None:
    """vpnctl's server Deployment, ConfigMap and Secret -> files; the agent's own loader
    reads the rewritten role config and desired state, and every file it names exists."""
    t = capi.lab_tenant()
    tenant = parse_tenant(
        tunnel=capi.tunnel(spec={"clusterName": "tenant-a", "tunnelCIDR": capi.LAB_TUNNEL_CIDR}),
        cluster=t.cluster,
        machines=t.machines,
        nodes=t.nodes,
    )
    settings = Settings(agent_image="lab")
    role = server_role_config(tenant=tenant, settings=settings)
    now = datetime.now(UTC)
    ca = certs.new_ca(common_name="t", now=now, lifetime=timedelta(days=1))
    srv = certs.new_server_cert(ca, common_name="s", now=now, lifetime=timedelta(hours=2))
    crl = certs.build_crl(ca, revoked=[], now=now, next_update=timedelta(hours=1), crl_number=1)
    objects = {
        ("ConfigMap", "tenant-a-vpn-server"): server_config_map(
            tenant=tenant, role_config=role, desired={"apiserver": None, "clients": []}, crl_pem=crl
        ),
        ("Secret", "tenant-a-vpn-server-tls"): server_secret(
            tenant=tenant,
            cert_pem=srv.cert_pem,
            key_pem=srv.key_pem,
            ca_pem=ca.cert_pem,
            tls_crypt_v2_key=certs.new_tls_crypt_v2_server_key(),
        ),
    }
    pod = server_deployment(tenant=tenant, settings=settings, role_config=role)["spec"]["template"]
    container = pod["spec"]["containers"][0]
    mounts = pod_mounts(
        pod["spec"], container, pod_dir=tmp_path / "pod", host_root=tmp_path / "node"
    )
    for volume in pod["spec"]["volumes"]:
        if "projected" in volume:
            write_volume(
                tmp_path / "pod" / volume["name"],
                volume_files(volume, objects=objects),
                mounts=mounts,
            )
    argv = container_argv(container, mounts)
    config = argv[argv.index("--config") + 1]
    assert config.startswith(str(tmp_path))
    cfg = load_role_config(config, role="server")
    assert isinstance(cfg, ServerRoleConfig)
    for path in (
        cfg.openvpn.ca,
        cfg.openvpn.cert,
        cfg.openvpn.key,
        cfg.openvpn.tls_crypt_v2,
        cfg.desired_path,
        cfg.crl_source,
    ):
        assert Path(path).is_file(), path
        assert path.startswith(str(tmp_path)), path
    assert cfg.common.state_dir.startswith(str(tmp_path / "pod"))
    assert oct(os.stat(cfg.openvpn.key).st_mode & 0o777) == oct(0o400)
    load_desired(cfg.desired_path, tunnel_cidr=cfg.openvpn.tunnel_cidr)
    assert json.loads(Path(cfg.desired_path).read_text()) == {"apiserver": None, "clients": []}
