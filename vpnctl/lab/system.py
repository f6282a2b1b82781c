"""The whole lab: real Kubernetes, real tenant nodes and the real controller, in network
namespaces.

`bring_up` builds, in this order (each step is one progress line):

1. the underlay (`vpnctl.lab.underlay`): the wan, the tenant's NATed LAN, the namespaces;
2. what is built once and cached: the Kubernetes binaries (`vpnctl.testenv`), the node
   images (`vpnctl.lab.realnode.node_images`) and vpnctl's own image (`make image`);
3. the **service cluster** (etcd, kube-apiserver, kube-controller-manager,
   kube-scheduler, the CAPI CRDs; ours come with the chart) in P-svc on 198.18.0.4,
   and the **hosted tenant control plane** (etcd, kube-apiserver,
   kube-controller-manager, kube-scheduler) in P-api on 198.18.0.2; the apiserver
   checks the kubelets' serving certificates with the tenant CA;
4. the service cluster's **real node** `service-1` in P-srv on 198.18.0.1 (containerd,
   kubelet, kube-proxy, our image imported) and **vpnctl** on it by `helm install` of
   `charts/vpnctl` (`vpnctl.lab.service_side`): two replicas, leader election, our
   image, `--node-port-address` the service node's address; the same kubelet runs the
   server pod vpnctl creates, and its kube-proxy forwards the server Service's node
   port, which the nodes dial;
5. the tenant **as Cluster API would make it**: namespace, Tunnel (the lab's tunnel
   CIDR), Cluster, kubeconfig Secret, and a Machine per node whose status names its Node;
6. the **real tenant nodes** (`vpnctl.lab.realnode`): in each P-n<i>, containerd, the
   kubelet (joined with a kubeadm-style client certificate, serving :10250 with a
   certificate from the tenant CA) and kube-proxy; our image is imported into each
   node's containerd, and the node agent runs as the DaemonSet pod vpnctl installs;
   then the tenant's workloads: a pod per node that writes numbered log lines and
   serves HTTP;
7. the **lab kubelet** (`vpnctl.lab.kubelet`) for the apiserver sidecar in P-api (the
   hosted apiserver is a process, not a pod, yet);
8. a wait until the Tunnel is Ready, every node connected and every kubelet answers
   through the apiserver.

Nothing of it runs in, or changes, the root namespace. Every process is in a lab
namespace, started in its own session so it outlives `vpnctl lab up`; `tear_down` stops
the nodes (every process in their cgroups and mount namespaces), the clusters
gracefully, the recorded processes, then whatever is left in the namespaces, and
deletes them and the state directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vpnctl.lab import lab_objects as lo
from vpnctl.lab import labpki, netns
from vpnctl.lab.address_plan import LabPlan, NodePlan, make_plan
from vpnctl.lab.dataplane import Proc, kill_recorded, write_json_atomic
from vpnctl.lab.kubelet_parts import KubeletConfig, PodSetConfig, config_path
from vpnctl.lab.lab_state import (
    IMAGES_RECORD,
    SERVER_SELECTOR,
    Lab,
    LabUpError,
    Say,
    pod_ready,
    run_captured,
)
from vpnctl.lab.realnode import workloads as wl
from vpnctl.lab.realnode.node_images import (
    ImageBuildError,
    NodeImage,
    NodeImages,
    ensure_node_images,
    ensure_vpnctl_image,
)
from vpnctl.lab.realnode.tenant_node import (
    NodeCluster,
    NodeSpec,
    RealNode,
    stop_recorded_node,
)
from vpnctl.lab.service_side import (
    RELEASE_NAMESPACE,
    install_vpnctl,
    launch_node,
    start_service_node,
)
from vpnctl.lab.underlay import build_underlay, destroy_underlay
from vpnctl.reconcile.service_objects import APISERVER_CONTAINER
from vpnctl.testenv.build import Binaries
from vpnctl.testenv.cluster import ServiceCluster, TenantCluster, stop_recorded_cluster
from vpnctl.testenv.cluster_pki import ClusterPKI

PY = sys.executable
REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 180.0
# --- bringing it up -----------------------------------------------------------------------------


class _Steps:
    def __init__(self, say: Say, total: int) -> None:
        self.say = say
        self.total = total
        self.n = 0
        self.t0 = time.monotonic()

    def __call__(self, text: str) -> None:
        self.n += 1
        self.say(f"lab: [{self.n}/{self.total}] {text} (t={time.monotonic() - self.t0:.1f}s)")


async def bring_up(
    *, plan: LabPlan, state: Path, proto: str, say: Say, node_cert_lifetime: str | None = None
) -> Lab:
    """Build the whole lab (see the module docstring); LabUpError saying what failed."""
    from vpnctl.testenv import ensure_binaries

    step = _Steps(say, 8)
    made = len(plan.infra_namespaces) + len(plan.nodes)  # no P-p<i>: CNI makes the pods'
    step(f"network namespaces: {made} under prefix {plan.prefix!r}")
    await build_underlay(plan, pod_namespaces=False)

    step("Kubernetes binaries, node images and vpnctl's image (built once, then cached)")
    binaries = await asyncio.to_thread(
        ensure_binaries, with_nodes=True, progress=lambda m: say(f"lab:   {m}")
    )
    images = await node_images(binaries)
    lab = Lab(plan=plan, state=state, proto=proto, kubectl_binary=binaries.kubectl)
    lab.record()
    write_json_atomic(state / IMAGES_RECORD, {"vpnctl": {
        "ref": images.vpnctl.ref, "archive": str(images.vpnctl.archive)}})  # fmt: skip
    for d in (lab.pki_dir, lab.logs_dir):
        d.mkdir(parents=True, exist_ok=True)

    step(f"service cluster in {plan.svc_ns} ({plan.svc_ip}) and its node {plan.service_node} "
         f"in {plan.srv_ns} ({plan.server_ip}); tenant control plane in {plan.api_ns} "
         f"({plan.api_ip})")  # fmt: skip

    async def service_side() -> ServiceCluster:
        service = await ServiceCluster.launch(
            lab.service_dir, binaries, netns=plan.svc_ns, bind_address=str(plan.svc_ip),
            port=lo.SERVICE_APISERVER_PORT, die_with_parent=False,
            scheduler=True, service_cidr=str(plan.service_cluster_services),
        )  # fmt: skip
        await start_service_node(lab, cluster=service, binaries=binaries, images=images.node)
        return service

    _, tenant = await asyncio.gather(
        service_side(),
        TenantCluster.launch(
            lab.tenant_dir, binaries, name=lo.CLUSTER_NAME, netns=plan.api_ns,
            bind_address=str(plan.api_ip), port=lo.TENANT_APISERVER_PORT,
            service_cidr=str(plan.service_cidr), die_with_parent=False,
            controller_manager=True, scheduler=True, aggregation=True,
            apiserver_extra_args=[
                f"--kubelet-certificate-authority={lab.tenant_ca}",
                "--kubelet-preferred-address-types=InternalIP",
            ],
        ),
    )  # fmt: skip
    # running detached; `tear_down` stops them (cluster.json) and the nodes (node.json)

    step(f"helm install of charts/vpnctl into {RELEASE_NAMESPACE} (2 replicas, leader "
         f"election), from our image on {plan.service_node}")  # fmt: skip
    took = await install_vpnctl(
        lab, helm=binaries.helm, image=images.vpnctl, node_cert_lifetime=node_cert_lifetime
    )
    say(f"lab:   rolled out and leading after {took:.1f}s")
    procs: dict[str, Proc] = {}

    step(f"tenant {lo.CLUSTER_NAMESPACE}/{lo.CLUSTER_NAME}: Tunnel, Cluster, kubeconfig "
         f"Secret, {len(plan.nodes)} Machines")  # fmt: skip
    await create_tenant(lab)

    step(f"{len(plan.nodes)} real tenant nodes (containerd, kubelet, kube-proxy; the agent "
         "as vpnctl's DaemonSet pod), the tenant's workloads")  # fmt: skip
    await asyncio.gather(
        *(start_node(lab, node, cluster=tenant, binaries=binaries, images=images.node)
          for node in plan.nodes)
    )  # fmt: skip
    await lab.apply(tenant_workloads(lab, images), cluster="tenant")

    step("the lab kubelet for the apiserver sidecar")
    cfg = kubelet_config(lab)
    cfg.dump(config_path(state))
    procs["lab-kubelet"] = Proc(
        name="lab-kubelet", ns=plan.svc_ns,
        argv=[PY, "-m", "vpnctl.lab.kubelet", "--config", str(config_path(state))],
        log=lab.logs_dir / "lab-kubelet.log",
    ).start()  # fmt: skip
    _save_procs(lab, procs)

    step("waiting for vpnctl: Tunnel Ready, server and sidecar running, nodes connected")
    await wait_ready(lab, say=say, procs=procs)
    await wait_workloads(lab, say=say)
    return lab


@dataclass(frozen=True)
class LabImages:
    """Every image a lab node runs: the node images (pause, busybox, metrics-server) with
    vpnctl's own image (`make image`) among them."""

    node: NodeImages
    vpnctl: NodeImage


async def node_images(binaries: Binaries, *, vpnctl: NodeImage | None = None) -> LabImages:
    """Build (or find cached) the node images and, unless given, vpnctl's image;
    LabUpError if that fails."""
    try:
        node, product = await asyncio.gather(
            asyncio.to_thread(ensure_node_images, metrics_server=binaries.metrics_server),
            asyncio.to_thread(ensure_vpnctl_image) if vpnctl is None else _given(vpnctl),
        )
    except ImageBuildError as exc:
        raise LabUpError(f"building the lab's images failed: {exc}") from exc
    return LabImages(node=node.with_extra(product), vpnctl=product)


async def _given(image: NodeImage) -> NodeImage:
    return image


def tenant_workloads(lab: Lab, images: LabImages) -> list[dict[str, Any]]:
    """The tenant's own workloads (`realnode.workloads`): metrics-server, and per node a
    log pod, a web pod and an admission webhook, with serving certificates from a CA of
    the tenant's own (kept in the lab's pki folder, as a tenant would keep it)."""
    node_images_ = images.node
    assert node_images_.metrics_server is not None
    ca = labpki.new_ca("lab-tenant-workloads")
    lab.workload_ca.write_bytes(ca.cert_pem)
    names = [n.name for n in lab.plan.nodes]
    return wl.workload_objects(
        names,
        images=wl.WorkloadImages(
            busybox=node_images_.busybox.ref,
            metrics_server=node_images_.metrics_server.ref,
            vpnctl=images.vpnctl.ref,
        ),
        tls=wl.issue_serving_tls(names, ca=ca, now=datetime.now(UTC)),
        log_lines=lo.DEFAULT_LOG_LINES,
    )


async def start_node(
    lab: Lab,
    node: NodePlan,
    *,
    cluster: NodeCluster,
    binaries: Binaries,
    images: NodeImages,
) -> RealNode:
    """One real node in P-n<i>, detached from this process; recorded for `tear_down`."""
    spec = NodeSpec(
        name=node.name,
        netns=node.ns,
        node_ip=str(node.internal_ip),
        pod_cidr=str(node.pod_cidr),
        cluster_cidr=str(lab.plan.pod_cidr),
    )
    return await launch_node(
        lab, spec, root=lab.node_dir(node), cluster=cluster, binaries=binaries, images=images
    )


@dataclass(frozen=True)
class LabTenant:
    """The hosted tenant control plane as a node sees it (`NodeCluster`), from the lab's
    state, so any process can add a node to a running lab."""

    lab: Lab

    @property
    def name(self) -> str:
        return lo.CLUSTER_NAME

    @property
    def server_url(self) -> str:
        return self.lab.tenant_url

    @property
    def pki(self) -> ClusterPKI:
        return ClusterPKI.load(self.lab.tenant_dir / "pki")

    async def kubectl(self, *args: str, input: str | bytes | None = None) -> str:
        text = input.decode() if isinstance(input, bytes) else input
        return await self.lab.kubectl(*args, cluster="tenant", input=text)


async def replace_node(lab: Lab, node: NodePlan) -> RealNode:
    """NODE's machine replaced, as a new Machine would be: the old node is gone with its
    disk (the agent's key too) and its Node object (CAPI deletes it); a fresh node with
    the same name and address joins, and the DaemonSet's agent pod starts on it."""
    from vpnctl.testenv import ensure_binaries

    await stop_recorded_node(lab.node_dir(node))
    await lab.kubectl("delete", "node", node.name, "--ignore-not-found", cluster="tenant")
    binaries = await asyncio.to_thread(ensure_binaries, with_nodes=True)
    # The image the running lab's DaemonSet names, not whatever the tree builds now.
    recorded = json.loads((lab.state / IMAGES_RECORD).read_text())["vpnctl"]
    images = await node_images(binaries, vpnctl=NodeImage(
        ref=str(recorded["ref"]), archive=Path(recorded["archive"])
    ))  # fmt: skip
    if not images.vpnctl.archive.exists():
        raise LabUpError(
            f"{images.vpnctl.archive}, the image this lab runs, is gone from the cache "
            "(a newer build pruned it): take the lab down and up again"
        )
    return await start_node(lab, node, cluster=LabTenant(lab), binaries=binaries,
                            images=images.node)  # fmt: skip


def _save_procs(lab: Lab, procs: dict[str, Proc]) -> None:
    recorded: dict[str, Any] = {}
    with contextlib.suppress(FileNotFoundError, ValueError):
        recorded = json.loads((lab.state / "procs.json").read_text())
    recorded.update({name: {"ns": p.ns, "pid": p.pid} for name, p in procs.items()})
    write_json_atomic(lab.state / "procs.json", recorded)


async def create_tenant(lab: Lab) -> None:
    cert, key = lab.tenant_admin
    kubeconfig = lo.kubeconfig_text(
        name=lo.CLUSTER_NAME,
        server=lab.tenant_url,
        ca_pem=lab.tenant_ca.read_bytes(),
        cert_pem=cert.read_bytes(),
        key_pem=key.read_bytes(),
    )
    objects = lo.service_objects(
        lab.plan,
        tenant_kubeconfig=kubeconfig,
        protocol=lab.proto,
        renegotiate_seconds=lo.LAB_RENEGOTIATE_SECONDS,
    )
    await lab.apply(objects, cluster="service")
    for node in lab.plan.nodes:
        await add_machine(lab, node)


async def add_machine(lab: Lab, node: NodePlan, *, generation: int = 1) -> str:
    """Create NODE's Machine and set its status, as CAPI does once the node joined."""
    body = lo.machine(node, generation=generation)
    await lab.apply([body], cluster="service")
    name = str(body["metadata"]["name"])
    await lab.patch_status("machine", name, lo.machine_status(node), cluster="service",
                           namespace=lo.CLUSTER_NAMESPACE)  # fmt: skip
    return name


def kubelet_config(lab: Lab) -> KubeletConfig:
    plan = lab.plan
    return KubeletConfig(
        state_dir=str(lab.state),
        python=PY,
        service_kubeconfig=str(lab.service_kubeconfig),
        tenant_kubeconfig=str(lab.tenant_kubeconfig),
        namespace=lo.CLUSTER_NAMESPACE,
        cluster=lo.CLUSTER_NAME,
        server_selector=SERVER_SELECTOR,
        pod_sets=(
            PodSetConfig(
                name="apiserver",
                selector=lo.apiserver_pod_selector(),
                node=plan.api_ns,
                netns=plan.api_ns,
                ip=str(plan.api_ip),
                run_containers=(APISERVER_CONTAINER,),
                service_hosts=True,
            ),
        ),
        tenant_ca_cert=str(lab.tenant_ca),
    )


async def tunnel_status(lab: Lab) -> dict[str, Any]:
    tunnel = await lab.get_json("tunnel", lo.CLUSTER_NAME, "-n", lo.CLUSTER_NAMESPACE,
                                cluster="service")  # fmt: skip
    status: dict[str, Any] = (tunnel or {}).get("status") or {}
    return status


def conditions_of(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {
        str(c.get("type")): (str(c.get("status")), str(c.get("message") or c.get("reason") or ""))
        for c in status.get("conditions") or []
    }


async def wait_ready(
    lab: Lab, *, say: Say, procs: dict[str, Proc], timeout: float = READY_TIMEOUT
) -> None:
    """Until the Tunnel is Ready with every node connected and its kubelet probed by the
    server through the tunnel (vpnctl's own view); LabUpError with the reason."""
    deadline = time.monotonic() + timeout
    last = ""
    want = {n.name for n in lab.plan.nodes}
    while True:
        for name, proc in procs.items():
            if not proc.alive:
                raise LabUpError(
                    f"{name} exited; the end of its log ({proc.log}):\n{proc.text()[-3000:]}"
                )
        status = await tunnel_status(lab)
        conditions = conditions_of(status)
        nodes = status.get("nodes") or []
        connected = {n.get("name") for n in nodes if n.get("connected")}
        probed = {n.get("name") for n in nodes if n.get("kubeletReachable")}
        parts = [f"{t}={s}" for t, (s, _) in sorted(conditions.items())]
        line = (
            f"{' '.join(parts) or 'no status yet'}; connected {len(connected & want)}/"
            f"{len(want)}, kubelets probed by the server {len(probed & want)}/{len(want)}"
        )
        if line != last:
            say(f"lab:   {line}")
            last = line
        if conditions.get("Ready", ("",))[0] == "True" and want <= connected & probed:
            return
        if time.monotonic() > deadline:
            reasons = "; ".join(f"{t}: {m}" for t, (s, m) in conditions.items() if s != "True")
            raise LabUpError(
                f"the lab was not ready after {timeout:.0f}s ({line}; {reasons or 'no reason'}); "
                f"logs are in {lab.logs_dir} (lab-kubelet.log) and, for the controller's and "
                f"server's pods, under {lab.service_node_dir}/host/var/log/pods"
            )
        await asyncio.sleep(1.0)


async def wait_workloads(lab: Lab, *, say: Say, timeout: float = READY_TIMEOUT) -> None:
    """Until the tenant's workload pods are Ready and metrics-server has every node's
    metrics (its first scrape comes about 15 s after it starts), asked through the
    tenant apiserver, so through the tunnel; LabUpError with what is missing."""
    deadline = time.monotonic() + timeout
    want = {n.name for n in lab.plan.nodes}
    last = ""
    while True:
        pods = await lab.get_json("pods", "-n", lo.WORKLOAD_NAMESPACE, cluster="tenant")
        items = (pods or {}).get("items") or []
        ready = sum(1 for p in items if pod_ready(p))
        code, out, _ = await run_captured(
            lab.kubectl_argv("get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes",
                             cluster="tenant"), timeout=15,
        )  # fmt: skip
        measured: set[str] = set()
        if code == 0:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                measured = {str(i["metadata"]["name"]) for i in json.loads(out)["items"]}
        line = (
            f"tenant workloads: {ready}/{len(items)} pods Ready, metrics of "
            f"{len(measured & want)}/{len(want)} nodes"
        )
        if line != last:
            say(f"lab:   {line}")
            last = line
        if items and ready == len(items) and want <= measured:
            return
        if time.monotonic() > deadline:
            raise LabUpError(f"the tenant's workloads were not ready after {timeout:.0f}s: {line}")
        await asyncio.sleep(1.0)


# --- taking it down --------------------------------------------------------------------------


async def tear_down(*, state: Path, prefix: str) -> tuple[int, list[str], list[str]]:
    """Stop everything the lab with PREFIX (and STATE) made; remove its namespaces and STATE.

    Returns (processes signalled, namespaces removed, namespaces still present).
    """
    nodes_dir = state / "nodes"
    await asyncio.gather(
        *(stop_recorded_node(d) for d in (nodes_dir.iterdir() if nodes_dir.is_dir() else ()))
    )
    killed = kill_recorded(state)  # vpnctl, the lab kubelet (stops its containers)
    if killed:
        await _wait_gone(killed, timeout=12.0)
    # The lab's clusters hold nothing worth a long graceful shutdown: 3 s, then SIGKILL.
    stops = await asyncio.gather(
        *(asyncio.to_thread(stop_recorded_cluster, d, grace=3.0)
          for d in (state / "service", state / "tenant"))
    )  # fmt: skip
    killed += [pid for pids in stops for pid in pids]
    names = await netns.list_lab_namespaces(prefix)
    nodes = sum(1 for n in names if n.startswith(f"{prefix}-n")) or 1
    await destroy_underlay(make_plan(prefix=prefix, nodes=nodes))
    shutil.rmtree(state, ignore_errors=True)
    left = await netns.list_lab_namespaces(prefix)
    return len(killed), names, left


async def _wait_gone(pids: Sequence[int], *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if _alive(p)]
        if not alive:
            return
        await asyncio.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"
