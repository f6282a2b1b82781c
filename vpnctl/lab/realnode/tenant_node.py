"""One real tenant node inside an existing network namespace: containerd, the
kubelet and kube-proxy, as a user's worker runs them.

``RealNode.launch()`` brings a node up and ``stop()`` takes every trace of it back
(processes, mounts, cgroups, files), also after a failed start. What it does:

1. certificates from the tenant CA as kubeadm issues them: the kubelet's client
   certificate ``system:node:<name>`` in ``system:nodes``, its serving certificate
   for :10250 (the apiserver checks it with ``--kubelet-certificate-authority``),
   and kube-proxy's ``system:kube-proxy``;
2. the Node object with the node's ``podCIDR`` in its spec, as a cloud's node
   controller would set it, before the kubelet registers;
3. the node's private mount namespace (``node_host``), then containerd in it with
   the local pause image as sandbox, the images imported with ``ctr``, a CNI bridge
   with host-local addresses from the podCIDR, the kubelet (cgroupfs driver, its own
   ``cgroupRoot``) and kube-proxy in iptables mode.

The caller owns the network: the namespace, the node's address on the tenant LAN,
and routes to every node's podCIDR.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Self

import yaml

from vpnctl.lab.realnode import node_host
from vpnctl.lab.realnode.node_images import NodeImages
from vpnctl.testenv.build import Binaries
from vpnctl.testenv.cluster_pki import CertFiles, ClusterPKI, issue_from_ca, write_kubeconfig
from vpnctl.testenv.procs import ManagedProcess, check_all_running, start_registered

START_TIMEOUT = 120.0
_POLL = 0.2
SOCKET = "/run/containerd/containerd.sock"  # inside the node's mount namespace
KUBELET_CLIENT_PEM = "/var/lib/kubelet/pki/kubelet-client-current.pem"  # likewise


RECORD = "node.json"


class NodeStartError(RuntimeError):
    """A node's component did not come up; carries the tail of its log."""


@dataclass(frozen=True, kw_only=True)
class NodeSpec:
    name: str
    netns: str  # an existing network namespace (/run/netns/<netns>)
    node_ip: str  # the node's address on the tenant LAN, already configured
    pod_cidr: str  # this node's pods; routed to node_ip by the caller
    cluster_cidr: str  # every node's pods, for kube-proxy


class NodeCluster(Protocol):
    """What a node needs of its cluster: its name, URL, CA (to issue the node's
    certificates as kubeadm would) and kubectl as its admin. `KubeCluster` is one."""

    @property
    def name(self) -> str: ...
    @property
    def server_url(self) -> str: ...
    @property
    def pki(self) -> ClusterPKI: ...
    async def kubectl(self, *args: str, input: str | bytes | None = None) -> str: ...


class RealNode:
    """Create with ``launch()``; ``stop()`` is idempotent and leaves nothing."""

    def __init__(
        self,
        spec: NodeSpec,
        *,
        root: Path,
        cluster: NodeCluster,
        binaries: Binaries,
        images: NodeImages,
        die_with_parent: bool = True,
    ) -> None:
        self.spec = spec
        self.root = root
        self.cluster = cluster
        self.binaries = binaries
        self.images = images
        self.cgroup_root = f"vpnctl-node-{spec.netns}"
        self.processes: dict[str, ManagedProcess] = {}
        self._die_with_parent = die_with_parent
        self._mount_ns: str | None = None
        self.started_at = time.monotonic()

    # --- lifecycle ------------------------------------------------------------------

    @classmethod
    async def launch(
        cls,
        spec: NodeSpec,
        *,
        root: Path,
        cluster: NodeCluster,
        binaries: Binaries,
        images: NodeImages,
        timeout: float = START_TIMEOUT,
        die_with_parent: bool = True,
    ) -> Self:
        if binaries.kubelet is None or binaries.kube_proxy is None:
            raise NodeStartError("real nodes need binaries built with with_nodes=True")
        node = cls(
            spec,
            root=root,
            cluster=cluster,
            binaries=binaries,
            images=images,
            die_with_parent=die_with_parent,
        )
        try:
            await node._start(time.monotonic() + timeout)
        except BaseException:
            await node.stop()
            raise
        return node

    async def stop(self) -> None:
        """Stop kube-proxy and the kubelet, then kill everything left in the node's
        cgroups and mount namespace (containerd, shims, containers, the holder), and
        remove its cgroups and its folder except ``logs/``. Idempotent."""
        for name in ("kube-proxy", "kubelet", "containerd"):
            if name in self.processes:
                await self.processes[name].stop()
        try:
            await sweep_node(self.root, self.cgroup_root, self._mount_ns, name=self.spec.name)
        finally:
            for proc in self.processes.values():
                proc.kill_now()

    def record(self) -> Path:
        """Write what ``stop_recorded_node`` needs to take this node back from another
        process (the lab's nodes outlive ``vpnctl lab up``)."""
        path = self.root / RECORD
        path.write_text(
            json.dumps(
                {
                    "name": self.spec.name,
                    "netns": self.spec.netns,
                    "cgroup_root": self.cgroup_root,
                    "mount_ns": self._mount_ns,
                    "pids": sorted(p.pid for p in self.processes.values() if p.pid),
                }
            )
        )
        return path

    # --- what callers use -----------------------------------------------------------

    def node_argv(self, *argv: str) -> list[str]:
        """``argv`` run in the node's network and mount namespaces."""
        assert self._mount_ns is not None, "node not started"
        holder = self.processes["mounts"].pid
        return [
            "nsenter",
            f"--net=/run/netns/{self.spec.netns}",
            f"--mount=/proc/{holder}/ns/mnt",
            "--",
            *argv,
        ]

    def logs_tail(self, lines: int = 30) -> str:
        return "\n".join(
            f"--- {self.spec.name}/{name} ({p.log_path}) ---\n{p.log_tail(lines)}"
            for name, p in self.processes.items()
        )

    def usage(self) -> dict[str, tuple[float, float]]:
        """Per daemon: (RSS in MiB, CPU seconds used so far)."""
        tick = os.sysconf("SC_CLK_TCK")
        out = {}
        for name in ("containerd", "kubelet", "kube-proxy"):
            pid = self.processes[name].pid if name in self.processes else None
            if pid is None:
                continue
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
            except OSError:
                continue
            rss_kib = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS"))
            out[name] = (rss_kib / 1024, (int(stat[11]) + int(stat[12])) / tick)
        return out

    # --- internals ------------------------------------------------------------------

    def _process(self, name: str, argv: list[str]) -> ManagedProcess:
        return start_registered(
            self.processes,
            name,
            argv,
            log_path=self.root / "logs" / f"{name}.log",
            cwd=self.root,
            die_with_parent=self._die_with_parent,
        )

    def _check_alive(self) -> None:
        check_all_running(
            self.processes.values(), owner=f"node {self.spec.name}", error=NodeStartError
        )

    async def _until(self, what: str, probe_argv: list[str] | None, deadline: float) -> None:
        """Poll until ``probe_argv`` exits 0 (or, without it, until the holder exec'd)."""
        last = "not probed yet"
        while True:
            self._check_alive()
            if probe_argv is None:
                pid = self.processes["mounts"].pid
                try:
                    if os.readlink(f"/proc/{pid}/exe") == str(self.images.pause_binary):
                        return
                except OSError as exc:
                    last = str(exc)
            else:
                proc = await asyncio.create_subprocess_exec(
                    *probe_argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                )
                out, _ = await proc.communicate()
                if proc.returncode == 0:
                    return
                last = out.decode(errors="replace").strip()[-300:]
            if time.monotonic() > deadline:
                raise NodeStartError(f"node {self.spec.name}: {what} not ready: {last}")
            await asyncio.sleep(_POLL)

    async def _start(self, deadline: float) -> None:
        spec = self.spec
        for sub in ("pki", "config", "logs", "host"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        kubelet_conf, proxy_conf = self._write_configs()
        await self.cluster.kubectl("apply", "-f", "-", input=json.dumps(self._node_object()))

        node_host.create_cgroup_root(self.cgroup_root)
        script = node_host.holder_script(self.root, self.images.pause_binary)
        self._process(
            "mounts",
            [
                "nsenter",
                f"--net=/run/netns/{spec.netns}",
                "unshare",
                "--mount",
                "--propagation",
                "slave",
                "sh",
                "-c",
                script,
            ],
        )
        await self._until("mount namespace", None, deadline)
        self._mount_ns = node_host.mount_ns_of(self.processes["mounts"].pid or 0)

        self._process(
            "containerd",
            self.node_argv("containerd", "--config", str(self.root / "config/containerd.toml")),
        )
        ctr = ["ctr", "--address", SOCKET, "-n", "k8s.io"]
        await self._until("containerd", self.node_argv(*ctr, "version"), deadline)
        for archive in (image.archive for image in self.images.all):
            await self._until(
                f"import {archive.name}",
                self.node_argv(*ctr, "images", "import", str(archive)),
                deadline,
            )
        assert self.binaries.kubelet is not None
        assert self.binaries.kube_proxy is not None
        self._process(
            "kubelet",
            self.node_argv(
                str(self.binaries.kubelet),
                f"--config={kubelet_conf}",
                f"--kubeconfig={self.root / 'config/kubelet.kubeconfig'}",
                "--root-dir=/var/lib/kubelet",
                f"--hostname-override={spec.name}",
                f"--node-ip={spec.node_ip}",
                "--v=1",
            ),
        )
        self._process(
            "kube-proxy",
            self.node_argv(str(self.binaries.kube_proxy), f"--config={proxy_conf}", "--v=1"),
        )

    def _issue(self, stem: str, cn: str, orgs: list[str], *, server: bool = False) -> CertFiles:
        return issue_from_ca(
            self.cluster.pki,
            stem,
            common_name=cn,
            organizations=orgs,
            server=server,
            ips=[self.spec.node_ip] if server else [],
            dns=[self.spec.name] if server else [],
            directory=self.root / "pki",
        )

    def _kubeadm_client(self, issued: CertFiles) -> CertFiles:
        """The kubelet's client certificate and key in one file where kubeadm's TLS
        bootstrap leaves it, ``/var/lib/kubelet/pki/kubelet-client-current.pem`` (a
        path inside the node's mount namespace), which the node agent reads."""
        host = self.root / "host" / KUBELET_CLIENT_PEM.lstrip("/")
        host.parent.mkdir(parents=True, exist_ok=True)
        host.write_bytes(issued.cert.read_bytes() + issued.key.read_bytes())
        host.chmod(0o600)
        return CertFiles(cert=Path(KUBELET_CLIENT_PEM), key=Path(KUBELET_CLIENT_PEM))

    def _node_object(self) -> dict[str, object]:
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.spec.name},
            "spec": {"podCIDR": self.spec.pod_cidr, "podCIDRs": [self.spec.pod_cidr]},
        }

    def _write_configs(self) -> tuple[Path, Path]:
        spec = self.spec
        config = self.root / "config"
        ca = self.cluster.pki.ca.cert
        name = f"system:node:{spec.name}"
        kubelet_client = self._kubeadm_client(self._issue("kubelet-client", name, ["system:nodes"]))
        serving = self._issue("kubelet-serving", name, ["system:nodes"], server=True)
        proxy_client = self._issue("kube-proxy-client", "system:kube-proxy", [])
        server = self.cluster.server_url
        for stem, client, user in (
            ("kubelet", kubelet_client, name),
            ("kube-proxy", proxy_client, "system:kube-proxy"),
        ):
            write_kubeconfig(
                config / f"{stem}.kubeconfig",
                server=server,
                ca=ca,
                client=client,
                cluster_name=self.cluster.name,
                user=user,
            )
        (config / "containerd.toml").write_text(containerd_toml(self.images.pause.ref))
        cni_dir = self.root / "host/etc/cni/net.d"
        cni_dir.mkdir(parents=True, exist_ok=True)
        (cni_dir / "10-vpnctl.conflist").write_text(json.dumps(cni_conflist(spec.pod_cidr)))
        kubelet = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": spec.node_ip,
            "port": 10250,
            "readOnlyPort": 0,
            "tlsCertFile": str(serving.cert),
            "tlsPrivateKeyFile": str(serving.key),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(ca)},
            },
            "authorization": {"mode": "Webhook"},
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/{self.cgroup_root}",
            "containerRuntimeEndpoint": f"unix://{SOCKET}",
            "failSwapOn": False,
            "failCgroupV1": False,
            "resolvConf": "",
            "clusterDomain": "cluster.local",
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            # Local images only: never collect them, never evict for a full disk.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "1Mi",
                "nodefs.available": "0%",
                "imagefs.available": "0%",
                "nodefs.inodesFree": "0%",
            },
            "maxPods": 30,
            "serializeImagePulls": False,
            "hairpinMode": "hairpin-veth",
            "podPidsLimit": -1,
        }
        kubelet_path = config / "kubelet.yaml"
        kubelet_path.write_text(yaml.safe_dump(kubelet))
        proxy = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(config / "kube-proxy.kubeconfig")},
            "mode": "iptables",
            "hostnameOverride": spec.name,
            "bindAddress": spec.node_ip,
            "clusterCIDR": spec.cluster_cidr,
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            # conntrack's limits are the host's, not the namespace's: leave them alone.
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
        }
        proxy_path = config / "kube-proxy.yaml"
        proxy_path.write_text(yaml.safe_dump(proxy))
        return kubelet_path, proxy_path


def containerd_toml(sandbox_image: str) -> str:
    """containerd 1.6/1.7 (config version 2) with the two settings this host needs:
    ``restrict_oom_score_adj`` (root here lacks CAP_SYS_RESOURCE, so runc fails every
    sandbox asked for oom_score_adj -998) and ``netns_mounts_under_state_dir`` (pod
    network namespaces under the node's own /run/containerd, not /run/netns)."""
    return f"""version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "{SOCKET}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "/etc/cni/net.d"
"""


def cni_conflist(pod_cidr: str) -> dict[str, object]:
    """A bridge with host-local addresses from the node's podCIDR; the node is the
    pods' gateway and routes between nodes go over the tenant LAN (no masquerade)."""
    return {
        "cniVersion": "1.0.0",
        "name": "vpnctl-pods",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": pod_cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


async def sweep_node(root: Path, cgroup_root: str, mount_ns: str | None, *, name: str) -> None:
    """Kill every process in the node's cgroups and mount namespace, remove its cgroups
    and its folder except ``logs/``; RuntimeError naming what is left."""
    pids = node_host.cgroup_pids(cgroup_root)
    if mount_ns:
        pids |= node_host.pids_in_mount_ns(mount_ns)
    left = await asyncio.to_thread(node_host.kill_all, pids)
    remaining = node_host.remove_cgroup_root(cgroup_root)
    # Everything but the logs, which a person reads when something failed.
    for entry in root.iterdir() if root.is_dir() else ():
        if entry.name != "logs":
            shutil.rmtree(entry, ignore_errors=True)
    if left or remaining:
        raise RuntimeError(f"node {name}: still alive {sorted(left)}, cgroups left {remaining}")


async def stop_recorded_node(root: Path) -> bool:
    """Take back the node ``RealNode.record`` described under ``root``, from any process;
    False when there is no record (nothing was started there)."""
    try:
        rec = json.loads((root / RECORD).read_text())
    except (FileNotFoundError, ValueError):
        return False
    for pid in rec.get("pids") or ():  # the daemons first, politely
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGTERM)
    await sweep_node(root, str(rec["cgroup_root"]), rec.get("mount_ns"), name=str(rec["name"]))
    return True
