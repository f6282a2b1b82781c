"""The service cluster's side of the lab as a platform team runs it: a real node, and
vpnctl installed on it with `helm install` of `charts/vpnctl`, as the README tells users.

- `start_service_node`: the service cluster's node `service-1` in P-srv on the wan
  address (containerd, kubelet, kube-proxy; our image imported, as a registry would
  serve it). Its kubelet runs the controller's pods and vpnctl's server pods; its
  kube-proxy forwards the server Service's node port, which the tenant nodes dial.
- `install_vpnctl`: `helm install` of the chart from this checkout, with the values a
  user sets (`chart_values`): our image, two replicas with leader election (the chart's
  default), CAPI left to the lab (it makes the Cluster and Machines itself), and the
  lab's own flags (the node-port address, short node certificates when asked). Then it
  waits until the rollout is done and one replica holds the lease.

What the lab supplies that production would get elsewhere: the image is imported into
the node's containerd (`pullPolicy: Never`) instead of pulled from a registry.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import yaml

from vpnctl.lab.lab_state import Lab, LabUpError, run_captured
from vpnctl.lab.realnode.node_images import NodeImage, NodeImages
from vpnctl.lab.realnode.tenant_node import NodeCluster, NodeSpec, NodeStartError, RealNode
from vpnctl.testenv.build import Binaries
from vpnctl.testenv.procs import netns_argv

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "vpnctl"
RELEASE = "vpnctl"
RELEASE_NAMESPACE = "vpnctl-system"
LEASE_NAMESPACE = RELEASE_NAMESPACE
INSTALL_TIMEOUT = 240.0


async def launch_node(
    lab: Lab,
    spec: NodeSpec,
    *,
    root: Path,
    cluster: NodeCluster,
    binaries: Binaries,
    images: NodeImages,
) -> RealNode:
    """One real node, detached from this process; recorded for `tear_down`."""
    try:
        real = await RealNode.launch(
            spec, root=root, cluster=cluster, binaries=binaries, images=images,
            die_with_parent=False,
        )  # fmt: skip
    except NodeStartError as exc:
        raise LabUpError(f"{spec.name} did not start: {exc}; logs in {root}/logs") from exc
    real.record()
    return real


async def start_service_node(
    lab: Lab, *, cluster: NodeCluster, binaries: Binaries, images: NodeImages
) -> RealNode:
    """The service cluster's node in P-srv on the wan address (see the module docstring)."""
    plan = lab.plan
    spec = NodeSpec(
        name=plan.service_node,
        netns=plan.srv_ns,
        node_ip=str(plan.server_ip),
        pod_cidr=str(plan.service_pod_cidr),
        cluster_cidr=str(plan.service_pod_cidr),
    )
    return await launch_node(
        lab, spec, root=lab.service_node_dir, cluster=cluster, binaries=binaries, images=images
    )


def chart_values(lab: Lab, image: NodeImage, *, node_cert_lifetime: str | None) -> dict[str, Any]:
    """What the lab sets on the chart; everything else is the chart's default."""
    repository, tag = image.ref.rsplit(":", 1)
    extra = [f"--node-port-address={lab.plan.server_ip}"]
    if node_cert_lifetime:
        extra.append(f"--node-cert-lifetime={node_cert_lifetime}")
    return {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "capi": {"enabled": False},
        "controller": {"extraArgs": extra},
    }


def helm_argv(lab: Lab, helm: Path, *args: str) -> list[str]:
    """helm against the service cluster, from its namespace."""
    kubeconfig = str(lab.service_kubeconfig)
    return netns_argv(lab.plan.svc_ns, [str(helm), "--kubeconfig", kubeconfig, *args])


async def install_vpnctl(
    lab: Lab, *, helm: Path, image: NodeImage, node_cert_lifetime: str | None
) -> float:
    """`helm install` of charts/vpnctl; seconds until its rollout is done and a replica
    leads. LabUpError with helm's words, or the pods' state, when it does not."""
    values = lab.state / "vpnctl-values.yaml"
    doc = chart_values(lab, image, node_cert_lifetime=node_cert_lifetime)
    values.write_text(yaml.safe_dump(doc))
    t0 = time.monotonic()
    code, out, err = await run_captured(
        helm_argv(lab, helm, "install", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE,
                  "--create-namespace", "--values", str(values), "--wait",
                  "--timeout", f"{int(INSTALL_TIMEOUT)}s"),
        timeout=INSTALL_TIMEOUT + 30,
    )  # fmt: skip
    if code != 0:
        pods = await lab.get_json("pods", "-n", RELEASE_NAMESPACE, cluster="service")
        states = [
            f"{p['metadata']['name']}: {(p.get('status') or {}).get('phase')}"
            for p in (pods or {}).get("items") or []
        ]
        raise LabUpError(
            f"helm install of {CHART} failed ({(err or out).strip()[-1500:]}); pods: "
            f"{', '.join(states) or 'none'}; their logs are under "
            f"{lab.service_node_dir}/host/var/log/pods"
        )
    await wait_leader(lab, timeout=INSTALL_TIMEOUT)
    return time.monotonic() - t0


async def leader(lab: Lab) -> str | None:
    """The pod holding the controller's Lease, or None."""
    leases = await lab.get_json("leases", "-n", LEASE_NAMESPACE, cluster="service")
    for lease in (leases or {}).get("items") or []:
        holder = (lease.get("spec") or {}).get("holderIdentity")
        if holder and str(lease["metadata"]["name"]).startswith("vpnctl"):
            return str(holder)
    return None


async def wait_leader(lab: Lab, *, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        holder = await leader(lab)
        if holder:
            return holder
        if time.monotonic() > deadline:
            raise LabUpError(
                f"no vpnctl replica took the lease in {LEASE_NAMESPACE} in {timeout:.0f}s"
            )
        await asyncio.sleep(0.5)
