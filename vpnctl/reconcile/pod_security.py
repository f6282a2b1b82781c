"""How vpnctl's containers are confined, shared by the server pod, the apiserver sidecar
and the node agent DaemonSet (issue 9, item 7).

- `/dev/net/tun`: by default no volume at all. The container gets CAP_MKNOD and the
  agent makes the device node itself when it is missing (`agent/tundev.py`); the
  runtime's default device cgroup allows c 10:200, so no hostPath and no privileged
  pod. `Settings.tun_host_path` mounts the host's device instead (the namespace must
  then allow hostPath), and `Settings.tun_resource` takes it from a device plugin
  (e.g. `squat.ai/tun` of generic-device-plugin).
- Every container vpnctl runs: seccomp `RuntimeDefault`, no privilege escalation, a
  read-only root filesystem, every capability dropped and only NET_ADMIN added (plus
  MKNOD for the tun device, NET_BIND_SERVICE for a port below 1024): it creates tun,
  sets routes and its firewall in its own network namespace. It starts as root because
  Kubernetes gives added capabilities to root only, unless the image sets file caps.
- openvpn drops to nobody/nogroup once its tun device is up, keeping only NET_ADMIN
  (libcap-ng): that takes SETUID and SETGID to change ids and SETPCAP to clear the
  capability bounding set. Without them it exits with "capng_change_id() failed"
  under a real kubelet. And the agent, root without CAP_KILL, may not signal a process
  of another uid: it could neither stop nor restart its openvpn (SIGTERM and SIGKILL
  refused; a pod took its whole grace period to die). Hence KILL. All four are in Pod
  Security "baseline"; both defects were found on the lab's real nodes.
"""

from __future__ import annotations

from typing import Any

from vpnctl.reconcile.settings import Settings


def tun_parts(
    settings: Settings, *, volume_name: str = "dev-net-tun"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, str]]:
    """(volumes, volumeMounts, extra limits) that give a container /dev/net/tun.

    Shared by the server pod, the apiserver sidecar and the node agent DaemonSet; the
    limits join the container's own (container_resources.py)."""
    if settings.tun_resource:
        return [], [], {settings.tun_resource: "1"}
    if not settings.tun_host_path:
        return [], [], {}  # the agent makes the device node (CAP_MKNOD, see the docstring)
    volume = {"name": volume_name, "hostPath": {"path": "/dev/net/tun", "type": "CharDevice"}}
    return [volume], [{"name": volume_name, "mountPath": "/dev/net/tun"}], {}


def agent_container(
    name: str, role: str, config_path: str, settings: Settings, *, image: str | None = None
) -> dict[str, Any]:
    """The start of every agent container: name, image and the command for ROLE.

    IMAGE is the tenant's pinned agent image (its Tunnel's spec.agent.image), if any;
    otherwise the controller's --agent-image. The caller adds ports, probes, mounts and
    `container_security`."""
    return {
        "name": name,
        "image": image or settings.agent_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["python", "-m", "agent", role, "--config", config_path],
    }


OPENVPN_DROP_PRIVILEGES = ("KILL", "SETGID", "SETPCAP", "SETUID")


def container_security(settings: Settings, *, port: int | None = None) -> dict[str, Any]:
    """The securityContext of every container vpnctl runs (see the module docstring)."""
    add = ["NET_ADMIN", *OPENVPN_DROP_PRIVILEGES]
    if not settings.tun_resource and not settings.tun_host_path:
        add.append("MKNOD")
    if port is not None and port < 1024:
        add.append("NET_BIND_SERVICE")
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"add": sorted(add), "drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": False,
        "runAsUser": 0,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
