"""The lab plays kubelet: it runs what vpnctl asked for as processes in the lab's namespaces.

vpnctl writes Kubernetes objects; something must turn them into running processes. In
production that is the kubelets (plus a scheduler, a cloud load balancer and the hosted
control plane's provider). The lab has none of them, so this one process, running in the
service cluster's namespace (P-svc, from where both apiservers are reachable), plays:

- **the service cluster's kubelet and scheduler** for two Deployments in the tenant's
  namespace: vpnctl's server Deployment, and the hosted tenant kube-apiserver's, to
  which vpnctl attached its apiserver sidecar (the Deployment opts in with the label
  `vpnctl.io/apiserver-for`). For each it registers a Node (with a heartbeat Lease, so
  the node lifecycle controller keeps it Ready), binds the pods to it, makes their
  volumes real (`vpnctl.lab.pods`) and runs the containers it is asked to run in that
  node's namespace: the server in P-srv (pod address 198.18.0.1), the sidecar in P-api
  (198.18.0.2) next to the tenant kube-apiserver, whose own container is the
  `TenantCluster` process the lab started. It reports the pods Running, with their IP,
  and Ready from the containers' own readinessProbes. A pod update (vpnctl patches an
  annotation on the server pods after it changed their ConfigMap, to make kubelet
  refresh the volume now) re-syncs the volumes at once, and every 60 s anyway, as
  kubelet's periodic sync does. Pods being deleted are stopped, then removed. One pod
  per Deployment runs at a time (the address and ports are the namespace's): in a
  rollout the newest pod takes over.
- **the cloud's load balancer controller**: the server Service (type LoadBalancer) gets
  `status.loadBalancer.ingress` = the server pod's address, which is what nodes dial.
- **cluster DNS and kube-proxy** for the sidecar, collapsed into one `/etc/hosts` line
  (bind-mounted inside `ip netns exec`'s own mount namespace): the server Service's name
  resolves to the server pod's address.
- **the tenant cluster's kubelets** for vpnctl's node agent DaemonSet: on every lab node
  it runs the DaemonSet's container in that node's namespace, with `spec.nodeName` in
  its env, the node's hostPath directories under `<state>/hosts/<node>/`, and the
  service account's `ca.crt` (the tenant apiserver's CA, what `kube-root-ca.crt`
  holds). A changed pod template restarts them (a rollout). The tenant cluster has no
  controller-manager, so a deleted DaemonSet leaves the running agents alone (its
  garbage collector would delete the pods; vpnctl puts the DaemonSet back either way).
- **each node's provisioning**, where production has the machine's bootstrap data: the
  kubelet client certificate (`system:node:<node>`, as TLS bootstrapping leaves it).
  Nothing else: the node agent gets its certificate and its own tls-crypt-v2 client key
  from vpnctl, through its CSR, into its state directory (`NodePaths.tls_crypt_v2`).

Every container is restarted when it exits (restartPolicy Always, backoff 1 s to 30 s);
what runs where is written to `<state>/kubelet.json` for `lab status` and the tests.

    python -m vpnctl.lab.kubelet --config <state>/kubelet-config.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from vpnctl.kube import (
    CONFIG_MAP,
    DAEMON_SET,
    LEASE,
    NODE,
    POD,
    SECRET,
    SERVICE,
    AlreadyExists,
    ApiError,
    Kube,
    KubeObject,
    NotFound,
    connect,
)
from vpnctl.lab import labpki
from vpnctl.lab.pods import (
    Mount,
    PodError,
    container_argv,
    container_env,
    make_dirs,
    pod_mounts,
    referenced,
    remove_tree,
    volume_files,
    write_volume,
)
from vpnctl.reconcile.agentdocs import NodePaths
from vpnctl.reconcile.errors import ReconcileError
from vpnctl.reconcile.names import (
    NODE_AGENT_NAME,
    TenantNames,
)
from vpnctl.reconcile.settings import Settings

_log = logging.getLogger("vpnctl.lab.kubelet")

POD_POLL = 0.5
TENANT_POLL = 1.0
LEASE_RENEW = 10.0
VOLUME_RESYNC = 60.0
READINESS_PERIOD = 2.0
STOP_GRACE = 10.0


# --- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class NodeConfig:
    """A worker node of the tenant cluster."""

    name: str
    netns: str


@dataclass(frozen=True, kw_only=True)
class PodSetConfig:
    """Pods of the service cluster the lab runs on one (played) node of its own."""

    name: str  # "server", "apiserver": names the logs and the status entries
    selector: str  # label selector of the pods, in the tenant's namespace
    node: str  # the Node they are bound to
    netns: str  # where their containers run
    ip: str  # the pod's (and node's) address in that namespace
    # The containers the lab runs; the pod's other containers are played by something
    # else (the hosted kube-apiserver container is the TenantCluster process).
    run_containers: tuple[str, ...]
    # Resolve the tenant's Services to the server pod (cluster DNS and kube-proxy).
    service_hosts: bool = False


@dataclass(frozen=True, kw_only=True)
class KubeletConfig:
    """What `lab up` tells the lab kubelet; written as JSON next to the lab's state."""

    state_dir: str
    python: str
    service_kubeconfig: str
    tenant_kubeconfig: str
    namespace: str  # the tenant's namespace in the service cluster
    cluster: str
    load_balancer_ip: str  # what the server Service's load balancer gets
    pod_sets: tuple[PodSetConfig, ...]
    tenant_ca_cert: str  # the tenant apiserver's CA: the pods' service account ca.crt
    tenant_ca_key: str  # signs each node's kubelet client certificate
    nodes: tuple[NodeConfig, ...]

    @classmethod
    def load(cls, path: Path) -> KubeletConfig:
        doc = json.loads(path.read_text())
        doc["nodes"] = tuple(NodeConfig(**n) for n in doc["nodes"])
        doc["pod_sets"] = tuple(
            PodSetConfig(**{**p, "run_containers": tuple(p["run_containers"])})
            for p in doc["pod_sets"]
        )
        return cls(**doc)

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @property
    def state(self) -> Path:
        return Path(self.state_dir)

    def host_root(self, node: str) -> Path:
        """The lab node's own filesystem (its hostPath volumes)."""
        return self.state / "hosts" / node

    def kubelet_client_path(self, node: str) -> Path:
        return self.host_root(node) / "var/lib/kubelet/pki" / NodePaths.kubelet_client_file

    def node_state_dir(self, node: str) -> Path:
        """The node agent's hostPath state directory (its key, certificate, tls-crypt key)."""
        return self.host_root(node) / NodePaths.state_dir.lstrip("/")


def status_path(state: Path) -> Path:
    return state / "kubelet.json"


def config_path(state: Path) -> Path:
    return state / "kubelet-config.json"


# --- one container --------------------------------------------------------------------------


class Container:
    """A pod's container as a process in a network namespace, restarted when it exits."""

    def __init__(
        self,
        *,
        name: str,
        netns: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        hosts_file: Path | None = None,
    ) -> None:
        self.name = name
        self.netns = netns
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self.hosts_file = hosts_file
        self.restarts = 0
        self.started_at: datetime | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._wake = asyncio.Event()

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    def command(self) -> list[str]:
        """`ip netns exec NS [hosts bind mount] unshare --pid --fork --kill-child ARGV`.

        The PID namespace makes the process group a container: when its first process
        ends, the kernel ends every other one in it (the agent's openvpn, which runs in
        its own process group), as a container runtime ends a container's cgroup. A
        SIGKILL of the `unshare` parent takes its child down too (`--kill-child`);
        SIGTERM goes to the whole process group (the parent ignores it, the container's
        process handles it).
        """
        inner = ["unshare", "--pid", "--fork", "--kill-child", *self.argv]
        if self.hosts_file is not None:
            # `ip netns exec` runs its command in a mount namespace of its own, so this
            # bind mount is seen by the container only.
            inner = [
                "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"',
                str(self.hosts_file), *inner,
            ]  # fmt: skip
        return ["ip", "netns", "exec", self.netns, *inner]

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name=f"container-{self.name}")

    async def _supervise(self) -> None:
        delay = 1.0
        first = True
        while not self._stopping:
            if not first:
                self.restarts += 1
            first = False
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            env = {**os.environ, **self.env}
            started = time.monotonic()
            with self.log_path.open("ab") as out:
                self._proc = await asyncio.create_subprocess_exec(
                    *self.command(),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            self.started_at = datetime.now(UTC)
            _log.info(
                "event=container_started name=%s netns=%s pid=%d restarts=%d",
                self.name,
                self.netns,
                self._proc.pid,
                self.restarts,
            )
            code = await self._proc.wait()
            if self.stopping:
                break
            _log.warning(
                "event=container_exited name=%s code=%s restart_in=%.0fs log=%s",
                self.name,
                code,
                delay,
                self.log_path,
            )
            if time.monotonic() - started > 60:
                delay = 1.0
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            delay = min(delay * 2, 30.0)

    async def stop(self, *, grace: float = STOP_GRACE) -> None:
        """SIGTERM, then SIGKILL to its process group after GRACE; waits for the end."""
        self._stopping = True
        self._wake.set()
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                _log.warning("event=container_killed name=%s after=%.0fs", self.name, grace)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def describe(self) -> dict[str, Any]:
        return {
            "netns": self.netns,
            "pid": self.pid,
            "restarts": self.restarts,
            "log": str(self.log_path),
            "argv": self.argv,
        }


@dataclass
class Running:
    """A pod the lab runs: its container (None when all its containers are played by
    something else) and what it was made from."""

    key: str
    container: Container | None
    pod_dir: Path
    mounts: list[Mount]
    volumes: list[dict[str, Any]]
    version: str  # what a change of means a restart (template digest)
    synced_rv: str = ""
    synced_at: float = 0.0
    ready: bool | None = None
    uid: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def digest(doc: object) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


async def fetch_objects(
    kube: Kube, namespace: str, volumes: Sequence[Mapping[str, Any]]
) -> dict[tuple[str, str], KubeObject | None]:
    out: dict[tuple[str, str], KubeObject | None] = {}
    for ref in referenced(volumes):
        res = CONFIG_MAP if ref.kind == "ConfigMap" else SECRET
        out[(ref.kind, ref.name)] = await kube.get(res, ref.name, namespace)
    return out


def sync_volumes(run: Running, objects: Mapping[tuple[str, str], Mapping[str, Any] | None]) -> bool:
    """Write RUN's configMap/secret/projected volumes and make its emptyDirs; True if a
    file changed. PodError when an object or key is missing."""
    changed = False
    for volume in run.volumes:
        dest = run.pod_dir / str(volume["name"])
        if "emptyDir" in volume:
            dest.mkdir(parents=True, exist_ok=True)
        elif any(k in volume for k in ("projected", "configMap", "secret")):
            files = volume_files(volume, objects=objects)
            changed = write_volume(dest, files, mounts=run.mounts) or changed
    return changed


# --- the lab kubelet ----------------------------------------------------------------------------


class LabKubelet:
    def __init__(self, *, config: KubeletConfig, service: Kube, tenant: Kube) -> None:
        self.cfg = config
        self.service = service
        self.tenant = tenant
        self.names = TenantNames.for_cluster(config.cluster)
        self.settings = Settings(agent_image="lab")  # vpnctl run's defaults: ports, paths
        self.pods: dict[str, Running] = {}  # pod set name -> its running pod
        self.agents: dict[str, Running] = {}  # tenant node name -> its agent
        self._http: aiohttp.ClientSession | None = None
        self._last_status = ""

    # --- the whole ------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=2.0), trust_env=False
        )
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self._forever("node", self._node_once, LEASE_RENEW)),
                    group.create_task(self._forever("pods", self._pods_once, POD_POLL)),
                    group.create_task(self._forever("tenant", self._tenant_once, TENANT_POLL)),
                ]
                await stop.wait()
                for task in tasks:
                    task.cancel()
        finally:
            await self._stop_all()
            await self._http.close()

    async def _forever(self, what: str, once: Any, period: float) -> None:
        failures = 0
        while True:
            try:
                await once()
                failures = 0
            except (ApiError, PodError, ReconcileError, OSError, aiohttp.ClientError) as exc:
                failures += 1
                level = logging.INFO if failures < 3 else logging.WARNING
                _log.log(
                    level, "event=loop_error loop=%s attempt=%d error=%r", what, failures, str(exc)
                )
            self._write_status()
            await asyncio.sleep(period)

    async def _stop_all(self) -> None:
        runs = [*self.pods.values(), *self.agents.values()]
        await asyncio.gather(*(self._stop(r) for r in runs), return_exceptions=True)
        self._write_status()

    def _write_status(self) -> None:
        runs: dict[str, Any] = {}
        for run in (*self.pods.values(), *self.agents.values()):
            container = run.container.describe() if run.container is not None else {}
            extra = {k: v for k, v in run.extra.items() if k != "probed_at"}
            runs[run.key] = {**container, "ready": run.ready, **extra}
        text = json.dumps({"containers": runs}, indent=2, sort_keys=True) + "\n"
        if text != self._last_status:
            path = status_path(self.cfg.state)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(text)
            os.replace(tmp, path)
            self._last_status = text

    def _log_path(self, name: str) -> Path:
        return self.cfg.state / "logs" / f"{name}.log"

    # --- the service cluster's nodes ---------------------------------------------

    async def _node_once(self) -> None:
        for pod_set in self.cfg.pod_sets:
            await self._heartbeat(pod_set)

    async def _heartbeat(self, pod_set: PodSetConfig) -> None:
        """Register the node and renew its Lease, as a kubelet does every 10 s."""
        name = pod_set.node
        now = datetime.now(UTC)
        node = await self.service.get(NODE, name)
        if node is None:
            with contextlib.suppress(AlreadyExists):
                await self.service.create(
                    NODE,
                    {
                        "apiVersion": "v1",
                        "kind": "Node",
                        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
                    },
                )
        ready = {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "the vpnctl lab plays this node's kubelet",
            "lastHeartbeatTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        await self.service.patch_merge(
            NODE,
            name,
            {
                "status": {
                    "addresses": [
                        {"type": "InternalIP", "address": pod_set.ip},
                        {"type": "Hostname", "address": name},
                    ],
                    "conditions": [ready],
                }
            },
            subresource="status",
        )
        renew = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        spec = {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": renew}
        lease = await self.service.get(LEASE, name, "kube-node-lease")
        if lease is None:
            with contextlib.suppress(AlreadyExists):
                await self.service.create(
                    LEASE,
                    {
                        "apiVersion": "coordination.k8s.io/v1",
                        "kind": "Lease",
                        "metadata": {"name": name, "namespace": "kube-node-lease"},
                        "spec": spec,
                    },
                )
        else:
            await self.service.patch_merge(LEASE, name, {"spec": spec}, namespace="kube-node-lease")

    # --- the service cluster's pods ----------------------------------------------------

    async def _pods_once(self) -> None:
        await self._load_balancer()
        for pod_set in self.cfg.pod_sets:
            await self._pod_set(pod_set)

    async def _pod_set(self, ps: PodSetConfig) -> None:
        ns = self.cfg.namespace
        pods, _ = await self.service.list(POD, ns, label_selector=ps.selector)
        for pod in pods:
            meta, spec = pod["metadata"], pod.get("spec") or {}
            if not spec.get("nodeName") and not meta.get("deletionTimestamp"):
                await self._bind(pod, ps.node)
                spec["nodeName"] = ps.node
        ours = [p for p in pods if (p.get("spec") or {}).get("nodeName") == ps.node]
        live = [p for p in ours if not p["metadata"].get("deletionTimestamp")]
        active = max(
            live,
            key=lambda p: (p["metadata"]["creationTimestamp"], p["metadata"]["name"]),
            default=None,
        )
        run = self.pods.get(ps.name)
        if run is not None and (active is None or active["metadata"]["uid"] != run.uid):
            # One pod at a time: the address and ports are the namespace's.
            _log.info("event=pod_stopping pod=%s", run.key)
            await self._stop(run)
            del self.pods[ps.name]
            old = next((p for p in live if p["metadata"]["uid"] == run.uid), None)
            if old is not None:
                await self._pod_status(old, ps, phase="Running", ready=False)
            run = None
        if active is not None and run is None:
            run = await self._start_pod(active, ps)
        if run is not None and active is not None:
            await self._resync(run, active)
            await self._readiness(run, active, ps)
        for pod in ours:
            if pod["metadata"].get("deletionTimestamp"):
                await self._finalize(pod)

    async def _load_balancer(self) -> None:
        svc = await self.service.get(SERVICE, self.names.service, self.cfg.namespace)
        if svc is None or (svc.get("spec") or {}).get("type") != "LoadBalancer":
            return
        ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        ip = self.cfg.load_balancer_ip
        if [i.get("ip") for i in ingress] == [ip]:
            return
        await self.service.patch_merge(
            SERVICE,
            self.names.service,
            {"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}},
            namespace=self.cfg.namespace,
            subresource="status",
        )
        _log.info(
            "event=load_balancer_assigned service=%s/%s ip=%s",
            self.cfg.namespace,
            self.names.service,
            ip,
        )

    async def _bind(self, pod: KubeObject, node: str) -> None:
        meta = pod["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        path = POD.path(namespace=meta["namespace"], name=meta["name"], subresource="binding")
        await self.service.request("POST", path, body=body)
        _log.info("event=pod_bound pod=%s/%s node=%s", meta["namespace"], meta["name"], node)

    def _run_container(self, pod: KubeObject, ps: PodSetConfig) -> dict[str, Any] | None:
        for c in pod["spec"]["containers"]:
            if c["name"] in ps.run_containers:
                return dict(c)
        return None

    async def _start_pod(self, pod: KubeObject, ps: PodSetConfig) -> Running:
        meta, spec = pod["metadata"], pod["spec"]
        pod_dir = self.cfg.state / "k" / meta["uid"][:8]
        c = self._run_container(pod, ps)
        run = Running(
            key=f"{ps.name}/{meta['name']}",
            container=None,
            pod_dir=pod_dir,
            mounts=[],
            volumes=list(spec.get("volumes") or []),
            version=digest(spec),
            uid=meta["uid"],
            extra={"pod_set": ps.name},
        )
        if c is not None:
            run.mounts = pod_mounts(
                spec, c, pod_dir=pod_dir, host_root=self.cfg.state / "hosts" / ps.node
            )
            hosts = self._hosts_file() if ps.service_hosts else None
            run.container = Container(
                name=f"{ps.name}-{c['name']}",
                netns=ps.netns,
                argv=self._python(container_argv(c, run.mounts)),
                env=container_env(c, fields=self._fields(pod, ps)),
                log_path=self._log_path(ps.name),
                hosts_file=hosts,
            )
            make_dirs(run.mounts, under=[self.cfg.state])
            try:
                sync_volumes(run, await fetch_objects(self.service, meta["namespace"], run.volumes))
            except PodError as exc:
                await self._pod_status(pod, ps, phase="Pending", ready=False, waiting=str(exc))
                raise
            run.container.start()
        run.synced_rv, run.synced_at = meta["resourceVersion"], time.monotonic()
        self.pods[ps.name] = run
        await self._pod_status(pod, ps, phase="Running", ready=False)
        return run

    def _hosts_file(self) -> Path:
        hosts = self.cfg.state / "k" / "service-hosts"
        svc = f"{self.names.service}.{self.cfg.namespace}"
        hosts.parent.mkdir(parents=True, exist_ok=True)
        hosts.write_text(
            f"127.0.0.1 localhost\n{self.cfg.load_balancer_ip} {svc}.svc {svc}.svc.cluster.local\n"
        )
        return hosts

    async def _resync(self, run: Running, pod: KubeObject) -> None:
        """Kubelet refreshes a pod's volumes when the pod changes, and periodically."""
        if run.container is None:
            return
        rv = pod["metadata"]["resourceVersion"]
        if rv == run.synced_rv and time.monotonic() - run.synced_at < VOLUME_RESYNC:
            return
        objects = await fetch_objects(self.service, pod["metadata"]["namespace"], run.volumes)
        if sync_volumes(run, objects):
            _log.info("event=volumes_updated pod=%s", run.key)
        run.synced_rv, run.synced_at = rv, time.monotonic()

    async def _readiness(self, run: Running, pod: KubeObject, ps: PodSetConfig) -> None:
        if time.monotonic() - run.extra.get("probed_at", 0.0) < READINESS_PERIOD:
            return
        run.extra["probed_at"] = time.monotonic()
        c = self._run_container(pod, ps)
        ready = True if c is None else await self._http_probe(c, ps.ip)
        conditions = {
            x.get("type"): x.get("status")
            for x in (pod.get("status") or {}).get("conditions") or []
        }
        if ready != run.ready or conditions.get("Ready") != ("True" if ready else "False"):
            restarts = run.container.restarts if run.container is not None else 0
            await self._pod_status(pod, ps, phase="Running", ready=ready, restarts=restarts)
        run.ready = ready

    async def _http_probe(self, container: Mapping[str, Any], host: str) -> bool:
        probe = (container.get("readinessProbe") or {}).get("httpGet")
        if not probe:
            return True
        port = probe.get("port")
        if isinstance(port, str):
            port = next(
                (p["containerPort"] for p in container.get("ports") or [] if p.get("name") == port),
                None,
            )
        if not isinstance(port, int):
            return False
        assert self._http is not None
        try:
            async with self._http.get(f"http://{host}:{port}{probe.get('path', '/')}") as r:
                return 200 <= r.status < 400
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def _pod_status(
        self,
        pod: KubeObject,
        ps: PodSetConfig,
        *,
        phase: str,
        ready: bool,
        restarts: int = 0,
        waiting: str | None = None,
    ) -> None:
        meta = pod["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        flag = "True" if ready else "False"
        statuses = []
        for c in pod["spec"]["containers"]:
            ours = c["name"] in ps.run_containers
            state: dict[str, Any] = (
                {"waiting": {"reason": "ContainerCreating", "message": waiting}}
                if waiting
                else {"running": {"startedAt": now}}
            )
            statuses.append(
                {
                    "name": c["name"],
                    "image": c.get("image", ""),
                    "imageID": "",
                    "ready": ready,
                    "started": not waiting,
                    "restartCount": restarts if ours else 0,
                    "state": state,
                }
            )
        status: dict[str, Any] = {
            "phase": phase,
            "hostIP": ps.ip,
            "hostIPs": [{"ip": ps.ip}],
            "startTime": (pod.get("status") or {}).get("startTime") or now,
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": "True"},
                {"type": "ContainersReady", "status": flag},
                {"type": "Ready", "status": flag},
            ],
            "containerStatuses": statuses,
        }
        if not waiting:
            status["podIP"] = ps.ip
            status["podIPs"] = [{"ip": ps.ip}]
        with contextlib.suppress(NotFound):
            await self.service.patch_merge(
                POD,
                meta["name"],
                {"status": status},
                namespace=meta["namespace"],
                subresource="status",
            )

    async def _stop(self, run: Running) -> None:
        if run.container is not None:
            await run.container.stop()

    async def _finalize(self, pod: KubeObject) -> None:
        """A pod being deleted: stop it if it runs, then remove it (grace period 0)."""
        meta = pod["metadata"]
        for name, run in list(self.pods.items()):
            if run.uid == meta["uid"]:
                await self._stop(run)
                del self.pods[name]
        path = POD.path(namespace=meta["namespace"], name=meta["name"])
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": meta["uid"]},
        }
        with contextlib.suppress(NotFound):
            await self.service.request("DELETE", path, body=body)
        remove_tree(self.cfg.state / "k" / meta["uid"][:8])
        _log.info("event=pod_deleted pod=%s/%s", meta["namespace"], meta["name"])

    # --- the tenant cluster's kubelets ------------------------------------------------

    async def _tenant_once(self) -> None:
        ns = self.settings.tenant_namespace
        ds = await self.tenant.get(DAEMON_SET, NODE_AGENT_NAME, ns)
        if ds is None:
            if self.agents:
                _log.info(
                    "event=daemonset_missing ds=%s/%s running_agents_kept=%d",
                    ns,
                    NODE_AGENT_NAME,
                    len(self.agents),
                )
            return
        template = ds["spec"]["template"]
        version = digest(template)
        spec = template["spec"]
        objects = await fetch_objects(self.tenant, ns, spec.get("volumes") or [])
        for node in self.cfg.nodes:
            run = self.agents.get(node.name)
            if run is not None and run.version != version:
                _log.info("event=agent_rollout node=%s", node.name)
                await self._stop(run)
                del self.agents[node.name]
                run = None
            if run is None:
                self._provision(node)
                run, container = self._agent(node, spec, version)
                make_dirs(run.mounts, under=[self.cfg.state])
                sync_volumes(run, objects)
                container.start()
                self.agents[node.name] = run
                continue
            if run.container is not None and run.container.pid is None:
                # Between restarts (or wiped, like a new machine): provision again.
                self._provision(node)
            if sync_volumes(run, objects):
                _log.info("event=volumes_updated pod=%s", run.key)

    def _provision(self, node: NodeConfig) -> None:
        client = self.cfg.kubelet_client_path(node.name)
        if not client.exists():
            labpki.write_private(
                client,
                labpki.kubelet_client_pem(
                    ca_cert=Path(self.cfg.tenant_ca_cert),
                    ca_key=Path(self.cfg.tenant_ca_key),
                    node=node.name,
                ),
            )
            _log.info("event=kubelet_client_issued node=%s", node.name)

    def _agent(
        self, node: NodeConfig, spec: Mapping[str, Any], version: str
    ) -> tuple[Running, Container]:
        container = spec["containers"][0]
        pod_dir = self.cfg.state / "k" / f"agent-{node.name}"
        sa_dir = pod_dir / "serviceaccount"
        sa_dir.mkdir(parents=True, exist_ok=True)
        (sa_dir / "ca.crt").write_bytes(Path(self.cfg.tenant_ca_cert).read_bytes())
        mounts = pod_mounts(
            spec,
            container,
            pod_dir=pod_dir,
            host_root=self.cfg.host_root(node.name),
            service_account_dir=sa_dir,
        )
        fields = {
            "spec.nodeName": node.name,
            "metadata.name": f"{NODE_AGENT_NAME}-{node.name}",
            "metadata.namespace": self.settings.tenant_namespace,
        }
        process = Container(
            name=f"agent-{node.name}",
            netns=node.netns,
            argv=self._python(container_argv(container, mounts)),
            env=container_env(container, fields=fields),
            log_path=self._log_path(f"agent-{node.name}"),
        )
        run = Running(
            key=f"agent/{node.name}",
            container=process,
            pod_dir=pod_dir,
            mounts=mounts,
            volumes=list(spec.get("volumes") or []),
            version=version,
            extra={"node": node.name},
        )
        return run, process

    # --- helpers ------------------------------------------------------------------------

    def _python(self, argv: list[str]) -> list[str]:
        """The image's `python` is this lab's interpreter (the one vpnctl is installed in)."""
        if argv and argv[0] in ("python", "python3"):
            return [self.cfg.python, *argv[1:]]
        return argv

    def _fields(self, pod: KubeObject, ps: PodSetConfig) -> dict[str, str]:
        meta = pod["metadata"]
        return {
            "spec.nodeName": ps.node,
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "status.podIP": ps.ip,
        }


async def amain(config_file: Path) -> int:
    cfg = KubeletConfig.load(config_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    service = await connect(kubeconfig=cfg.service_kubeconfig)
    tenant = await connect(kubeconfig=cfg.tenant_kubeconfig)
    _log.info(
        "event=lab_kubelet_started service=%s tenant=%s nodes=%d",
        service.server,
        tenant.server,
        len(cfg.nodes),
    )
    try:
        await LabKubelet(config=cfg, service=service, tenant=tenant).run(stop)
    finally:
        await service.close()
        await tenant.close()
    _log.info("event=lab_kubelet_stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m vpnctl.lab.kubelet",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    return asyncio.run(amain(args.config))


if __name__ == "__main__":
    sys.exit(main())
