"""What vpnctl runs may do no more than its job (issue 9, item 7): every container's
securityContext, no host /proc/sys, /dev/net/tun without a hostPath. The server pods'
NetworkPolicy: test_server_policy.py."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import capi
from vpnctl.reconcile.agent_objects import agent_daemon_set
from vpnctl.reconcile.agentdocs import (
    apiserver_role_config,
    node_role_config,
    server_role_config,
)
from vpnctl.reconcile.pod_security import OPENVPN_DROP_PRIVILEGES as DROP
from vpnctl.reconcile.service_objects import (
    server_deployment,
)
from vpnctl.reconcile.settings import Settings
from vpnctl.reconcile.sidecar_objects import (
    apiserver_sidecar,
)
from vpnctl.reconcile.tenant_spec import TenantSpec

SETTINGS = Settings(agent_image="registry.example/vpnctl:1")


def lab(**spec: Any) -> TenantSpec:
    return capi.parsed_lab_tenant(spec)


def pods(settings: Settings, tenant: TenantSpec | None = None) -> dict[str, dict[str, Any]]:
    """The pod spec of each thing vpnctl runs (the sidecar as a one-container pod)."""
    t = tenant or lab()
    server = server_deployment(
        tenant=t, settings=settings, role_config=server_role_config(tenant=t, settings=settings)
    )
    sidecar = apiserver_sidecar(
        tenant=t,
        settings=settings,
        role_config=apiserver_role_config(tenant=t, settings=settings, service_name="tenant-a-vpn"),
    )
    node = agent_daemon_set(
        cluster_name="tenant-a",
        settings=settings,
        role_config=node_role_config(tenant=t, settings=settings, remotes=[("203.0.113.7", 1194)]),
    )
    return {
        "server": server["spec"]["template"]["spec"],
        "apiserver-sidecar": {"containers": [sidecar.container], "volumes": list(sidecar.volumes)},
        "node-agent": node["spec"]["template"]["spec"],
    }


def host_paths(pod: dict[str, Any]) -> set[str]:
    return {v["hostPath"]["path"] for v in pod.get("volumes", []) if "hostPath" in v}


@pytest.mark.parametrize("what", ["server", "apiserver-sidecar", "node-agent"])
def test_every_container_is_confined(what: str) -> None:
    (container,) = pods(SETTINGS)[what]["containers"]
    sc = container["securityContext"]
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"add": sorted(["MKNOD", "NET_ADMIN", *DROP]), "drop": ["ALL"]}
    assert "privileged" not in sc


def test_the_server_pod_has_a_seccomp_profile_too() -> None:
    pod = pods(SETTINGS)["server"]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def test_no_host_proc_sys_and_no_host_tun_by_default() -> None:
    """The node agent used to mount the host's /proc/sys writable (a container escape)
    and the pods the host's /dev/net/tun (a hostPath: a privileged namespace)."""
    for what, pod in pods(SETTINGS).items():
        assert host_paths(pod) & {"/proc/sys", "/proc", "/sys", "/dev/net/tun"} == set(), what
        mounts = {m["mountPath"] for c in pod["containers"] for m in c["volumeMounts"]}
        assert not any(m.startswith(("/host/proc", "/proc")) for m in mounts), what


def test_host_tun_and_device_plugin_need_no_mknod() -> None:
    for what, pod in pods(Settings(agent_image="i", tun_host_path=True)).items():
        (c,) = pod["containers"]
        assert c["securityContext"]["capabilities"]["add"] == sorted(["NET_ADMIN", *DROP]), what
        assert "/dev/net/tun" in host_paths(pod), what
        assert "/proc/sys" not in host_paths(pod), what
    for what, pod in pods(Settings(agent_image="i", tun_resource="squat.ai/tun")).items():
        (c,) = pod["containers"]
        assert c["securityContext"]["capabilities"]["add"] == sorted(["NET_ADMIN", *DROP]), what
        # The device joins the container's own limits (container_resources.py).
        assert c["resources"]["limits"]["squat.ai/tun"] == "1", what
        assert c["resources"]["limits"]["memory"], what
        assert "/dev/net/tun" not in host_paths(pod), what


def test_a_low_port_adds_net_bind_service_only_to_the_server() -> None:
    p = pods(SETTINGS, lab(transport={"protocol": "tcp", "port": 443}))
    assert p["server"]["containers"][0]["securityContext"]["capabilities"]["add"] == sorted([
        "MKNOD", "NET_ADMIN", "NET_BIND_SERVICE", *DROP,
    ])  # fmt: skip
    assert "NET_BIND_SERVICE" not in str(p["node-agent"]["containers"][0]["securityContext"])
