"""Two real tenant nodes (containerd, kubelet, kube-proxy) against a real tenant control
plane (apiserver, controller-manager, scheduler), all in network namespaces made here:
the setup every test in tests/nodes shares.

The topology, under a unique prefix P, in 198.18.0.0/15 only:

    P-cp:  bridge "lan" 198.18.0.1/24; etcd, kube-apiserver (198.18.0.1), kcm, scheduler;
           routes 198.18.64.0/24 via .11 and 198.18.65.0/24 via .12
           (with ``services_via_node``: the service CIDR via that node too)
    P-n1:  veth 198.18.0.11 on the lan, podCIDR 198.18.64.0/24
    P-n2:  veth 198.18.0.12 on the lan, podCIDR 198.18.65.0/24

Each node routes the other's podCIDR to it on the LAN, as a simple cloud does.
Nothing is added to the root namespace; everything is removed afterwards, and
``assert_nothing_left`` checks it: no process, mount, cgroup or namespace of ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tests.support.polling import aeventually
from vpnctl.lab.realnode import node_host
from vpnctl.lab.realnode.node_images import NodeImages
from vpnctl.lab.realnode.tenant_node import NodeSpec, RealNode
from vpnctl.testenv import Binaries, TenantCluster
from vpnctl.testenv.cluster_options import DEFAULT_SERVICE_CIDR, KubectlError

LAN_GATEWAY = "198.18.0.1"
CLUSTER_CIDR = "198.18.64.0/18"
SERVICE_CIDR = DEFAULT_SERVICE_CIDR
NODES = (("node-1", "198.18.0.11", "198.18.64.0/24"), ("node-2", "198.18.0.12", "198.18.65.0/24"))
POLL = 0.5

T = TypeVar("T")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass
class Env:
    prefix: str
    cluster: TenantCluster
    nodes: list[RealNode]
    bringup_seconds: float

    @property
    def cgroup_roots(self) -> list[str]:
        return [n.cgroup_root for n in self.nodes]

    @property
    def node_dirs(self) -> list[str]:
        return [str(n.root) for n in self.nodes]


@contextlib.asynccontextmanager
async def two_nodes(
    tmp: Path,
    binaries: Binaries,
    images: NodeImages,
    *,
    aggregation: bool = False,
    services_via_node: int | None = None,
) -> AsyncIterator[Env]:
    """The control plane and both nodes, Ready. ``services_via_node`` (1 or 2) routes
    the service CIDR from the control plane's namespace to that node, whose kube-proxy
    then DNATs (and, the source being outside the cluster CIDR, masquerades) what the
    apiserver sends to a ClusterIP: what vpnctl's tunnel does through its elected node."""
    prefix = f"rn{uuid.uuid4().hex[:6]}"
    cp = f"{prefix}-cp"
    made: list[str] = []
    nodes: list[RealNode] = []
    cluster: TenantCluster | None = None
    try:
        ip("netns", "add", cp)
        made.append(cp)
        ip("-n", cp, "link", "add", "lan", "type", "bridge")
        ip("-n", cp, "addr", "add", f"{LAN_GATEWAY}/24", "dev", "lan")
        ip("-n", cp, "link", "set", "lan", "up")
        ip("-n", cp, "link", "set", "lo", "up")
        for i, (name, address, pod_cidr) in enumerate(NODES, start=1):
            ns = f"{prefix}-n{i}"
            ip("netns", "add", ns)
            made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"n{i}",
               "netns", cp)  # fmt: skip
            ip("-n", cp, "link", "set", f"n{i}", "master", "lan", "up")
            ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "route", "add", "default", "via", LAN_GATEWAY)
            ip("-n", cp, "route", "replace", pod_cidr, "via", address)
            for other, other_address, other_cidr in NODES:
                if other != name:
                    ip("-n", ns, "route", "replace", other_cidr, "via", other_address)
            subprocess.run(
                ["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True
            )
        subprocess.run(
            ["ip", "netns", "exec", cp, "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True
        )
        if services_via_node is not None:
            via = NODES[services_via_node - 1][1]
            ip("-n", cp, "route", "replace", SERVICE_CIDR, "via", via)
        started = time.monotonic()
        workdir = tmp / "tenant"
        cluster = await TenantCluster.launch(
            workdir,
            binaries,
            name="tenant",
            netns=cp,
            bind_address=LAN_GATEWAY,
            service_cidr=SERVICE_CIDR,
            controller_manager=True,
            scheduler=True,
            aggregation=aggregation,
            apiserver_extra_args=[
                f"--kubelet-certificate-authority={workdir / 'pki' / 'ca.crt'}",
                "--kubelet-preferred-address-types=InternalIP",
            ],
        )
        launched = await asyncio.gather(
            *(
                RealNode.launch(
                    NodeSpec(
                        name=name,
                        netns=f"{prefix}-n{i}",
                        node_ip=address,
                        pod_cidr=pod_cidr,
                        cluster_cidr=CLUSTER_CIDR,
                    ),
                    root=tmp / name,
                    cluster=cluster,
                    binaries=binaries,
                    images=images,
                )
                for i, (name, address, pod_cidr) in enumerate(NODES, start=1)
            ),
            return_exceptions=True,
        )
        nodes = [n for n in launched if isinstance(n, RealNode)]
        for result in launched:
            if isinstance(result, BaseException):
                raise result
        await cluster.kubectl(
            "wait", "--for=condition=Ready", "node", "--all", "--timeout=120s", timeout=130
        )
        yield Env(prefix, cluster, nodes, time.monotonic() - started)
    except BaseException:
        for node in nodes:  # captured; pytest shows it with the failure
            print(node.logs_tail(60))
        if cluster is not None:
            print(cluster.logs_tail(40))
        raise
    finally:
        errors = []
        for node in nodes:
            try:
                await node.stop()
            except Exception as exc:  # keep tearing down; report below
                errors.append(exc)
        if cluster is not None:
            await cluster.stop()
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        if errors:
            raise errors[0]


def assert_nothing_left(prefix: str, cgroup_roots: list[str], node_dirs: list[str]) -> None:
    """No process, mount, cgroup or network namespace of the nodes is left."""
    assert not [p for r in cgroup_roots for p in node_host.cgroup_pids(r)]
    for r in cgroup_roots:
        for hierarchy in node_host.all_hierarchies():
            assert not (hierarchy / r).exists(), hierarchy / r
    mounts = Path("/proc/self/mountinfo").read_text()
    assert not [d for d in node_dirs if d in mounts]
    assert not [ns for ns in os.listdir("/run/netns") if ns.startswith(prefix)]
    leftovers = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                cmdline = (entry / "cmdline").read_bytes()
                if any(d.encode() in cmdline for d in node_dirs) or prefix.encode() in cmdline:
                    leftovers.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    assert not leftovers


async def wait_for(
    what: str, probe: Callable[..., Awaitable[T | None]], timeout: float = 120.0
) -> T:
    """Poll the coroutine function ``probe`` until it returns a truthy value; a
    KubectlError counts as not yet."""

    async def attempt() -> T | None:
        try:
            return await probe()
        except KubectlError:
            return None

    return await aeventually(attempt, what=what, timeout=timeout, interval=POLL)
