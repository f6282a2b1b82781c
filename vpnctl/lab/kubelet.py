"""The lab plays one kubelet of the service cluster: it runs the apiserver sidecar vpnctl
attached to the hosted tenant kube-apiserver's pod, as a process in P-api (to be
replaced by the hosted control plane as real pods, issue 11).

What it hides: the hosted kube-apiserver is the `TenantCluster` process the lab started
in P-api, not a pod, so something must run the sidecar next to it. vpnctl's server pods
do NOT run here: the service cluster's real node (`service-1` in P-srv, containerd and a
real kubelet) runs them, and the nodes reach them through the server's NodePort Service.

This one process, in the service cluster's namespace (P-svc), plays:

- **a kubelet** for the hosted apiserver's pods in the tenant's namespace (the
  Deployment opts in to the sidecar with the label `vpnctl.io/apiserver-for` and pins
  its pods to this node by `nodeName`; the Node is tainted so that the scheduler puts
  nothing else here). It registers the Node (with a heartbeat Lease, so the node
  lifecycle controller keeps it Ready), makes the pod's volumes real
  (`vpnctl.lab.pods`) and runs the sidecar container in P-api (198.18.0.2) next to the
  tenant kube-apiserver. It reports the pod Running, with its IP, and Ready from the
  container's readinessProbe. A pod update re-syncs the volumes at once, and every
  60 s anyway, as kubelet's periodic sync does. Pods being deleted are stopped, then
  removed. One pod at a time: in a rollout the newest pod takes over.
- **cluster DNS and kube-proxy** for the sidecar, collapsed into one `/etc/hosts` line
  (bind-mounted inside `ip netns exec`'s own mount namespace, rewritten in place): the
  server Service's name resolves to the newest ready server pod's IP, which P-api
  reaches through the service node (a flat pod network's route).

Every container is restarted when it exits (restartPolicy Always, backoff 1 s to 30 s);
what runs where is written to `<state>/kubelet.json` for `lab status` and the tests.

    python -m vpnctl.lab.kubelet --config <state>/kubelet-config.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from vpnctl.kube import (
    LEASE,
    NODE,
    POD,
    REPLICA_SET,
        AlreadyExists,
    ApiError,
    Kube,
    KubeObject,
    NotFound,
    connect,
)
from vpnctl.lab.kubelet_parts import (
    Container,
    KubeletConfig,
    PodSetConfig,
    Running,
    digest,
    fetch_objects,
    http_ready,
    pod_status,
    status_path,
    sync_volumes,
)
from vpnctl.lab.lab_state import pod_ready
from vpnctl.lab.pods import (
    PodError,
    container_argv,
    container_env,
    make_dirs,
    pod_mounts,
    remove_tree,
)
from vpnctl.reconcile.errors import ReconcileError
from vpnctl.reconcile.names import (
    TenantNames,
)
from vpnctl.reconcile.settings import Settings

_log = logging.getLogger("vpnctl.lab.kubelet")

POD_POLL = 0.5
LAB_TAINT = "lab.vpnctl.io/lab-kubelet"
REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
LEASE_RENEW = 10.0
VOLUME_RESYNC = 60.0
READINESS_PERIOD = 2.0


class LabKubelet:
    def __init__(self, *, config: KubeletConfig, service: Kube) -> None:
        self.cfg = config
        self.service = service
        self.names = TenantNames.for_cluster(config.cluster)
        self.settings = Settings(agent_image="lab")  # vpnctl run's defaults: ports, paths
        self.pods: dict[str, Running] = {}  # pod set name -> its running pod
        self._http: aiohttp.ClientSession | None = None
        self._last_status = ""
        self._server_ip: str | None = None
        self._hosts: Path | None = None

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
        runs = list(self.pods.values())
        await asyncio.gather(*(self._stop(r) for r in runs), return_exceptions=True)
        self._write_status()

    def _write_status(self) -> None:
        runs: dict[str, Any] = {}
        for run in self.pods.values():
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
                        # Pods come here by name only; the scheduler keeps off.
                        "spec": {"taints": [{"key": LAB_TAINT, "effect": "NoSchedule"}]},
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
        await self._server_address()
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
        # The newest rollout wins: the owning ReplicaSet's revision first (two pods of a
        # rollout are often created within the same second), then the creation time.
        sets, _ = await self.service.list(REPLICA_SET, ns)
        revision = {
            rs["metadata"]["name"]: int(
                (rs["metadata"].get("annotations") or {}).get(REVISION_ANNOTATION) or 0
            )
            for rs in sets
        }

        def newness(p: KubeObject) -> tuple[int, str, str]:
            owners = p["metadata"].get("ownerReferences") or []
            rev = max((revision.get(o.get("name"), 0) for o in owners), default=0)
            return (rev, p["metadata"]["creationTimestamp"], p["metadata"]["name"])

        active = max(live, key=newness, default=None)
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

    async def _server_address(self) -> None:
        """Where the sidecar's name for the server Service points: the newest ready
        server pod's IP (the real kubelet on the service node runs it)."""
        pods, _ = await self.service.list(
            POD, self.cfg.namespace, label_selector=self.cfg.server_selector
        )
        ready = [
            p
            for p in pods
            if not p["metadata"].get("deletionTimestamp")
            and (p.get("status") or {}).get("podIP")
            and pod_ready(p)
        ]
        newest = max(ready, key=lambda p: p["metadata"]["creationTimestamp"], default=None)
        if newest is None or newest["status"]["podIP"] == self._server_ip:
            return
        ip = str(newest["status"]["podIP"])
        self._server_ip = ip
        _log.info("event=server_address ip=%s pod=%s", ip, newest["metadata"]["name"])
        if self._hosts is not None:
            self._write_hosts(self._hosts)

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
                objects = await fetch_objects(self.service, meta["namespace"], run.volumes)
                sync_volumes(run, objects, pod=pod)
            except PodError as exc:
                await self._pod_status(pod, ps, phase="Pending", ready=False, waiting=str(exc))
                raise
            run.container.start()
        run.synced_rv, run.synced_at = meta["resourceVersion"], time.monotonic()
        self.pods[ps.name] = run
        await self._pod_status(pod, ps, phase="Running", ready=False)
        return run

    def _hosts_file(self) -> Path:
        if self._hosts is None:
            self._hosts = self.cfg.state / "k" / "service-hosts"
            self._hosts.parent.mkdir(parents=True, exist_ok=True)
            self._write_hosts(self._hosts)
        return self._hosts

    def _write_hosts(self, hosts: Path) -> None:
        """In place (the same inode stays bind-mounted on the container's /etc/hosts)."""
        svc = f"{self.names.service}.{self.cfg.namespace}"
        line = (
            "" if self._server_ip is None
            else f"{self._server_ip} {svc}.svc {svc}.svc.cluster.local\n"
        )  # fmt: skip
        with hosts.open("w") as f:
            f.write(f"127.0.0.1 localhost\n{line}")

    async def _resync(self, run: Running, pod: KubeObject) -> None:
        """Kubelet refreshes a pod's volumes when the pod changes, and periodically."""
        if run.container is None:
            return
        rv = pod["metadata"]["resourceVersion"]
        if rv == run.synced_rv and time.monotonic() - run.synced_at < VOLUME_RESYNC:
            return
        objects = await fetch_objects(self.service, pod["metadata"]["namespace"], run.volumes)
        if sync_volumes(run, objects, pod=pod):
            _log.info("event=volumes_updated pod=%s", run.key)
        run.synced_rv, run.synced_at = rv, time.monotonic()

    async def _readiness(self, run: Running, pod: KubeObject, ps: PodSetConfig) -> None:
        if time.monotonic() - run.extra.get("probed_at", 0.0) < READINESS_PERIOD:
            return
        run.extra["probed_at"] = time.monotonic()
        c = self._run_container(pod, ps)
        ready = True if c is None else await http_ready(self._http, c, ps.ip)
        conditions = {
            x.get("type"): x.get("status")
            for x in (pod.get("status") or {}).get("conditions") or []
        }
        if ready != run.ready or conditions.get("Ready") != ("True" if ready else "False"):
            restarts = run.container.restarts if run.container is not None else 0
            await self._pod_status(pod, ps, phase="Running", ready=ready, restarts=restarts)
        run.ready = ready

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
        status = pod_status(pod, ps, phase=phase, ready=ready, restarts=restarts, waiting=waiting)
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
    _log.info("event=lab_kubelet_started service=%s", service.server)
    try:
        await LabKubelet(config=cfg, service=service).run(stop)
    finally:
        await service.close()
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
