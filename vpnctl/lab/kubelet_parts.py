"""The lab kubelet's parts: its config file, the containers it supervises and a pod's volumes.

Kept apart from `vpnctl/lab/kubelet.py` (the loops that play kubelet) so each stays short; see
that module's docstring for what the lab kubelet stands in for and what it hides.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from vpnctl.kube import (
    CONFIG_MAP,
    SECRET,
    Kube,
    KubeObject,
)
from vpnctl.lab.pods import (
    Mount,
    referenced,
    volume_files,
    write_volume,
)

_log = logging.getLogger("vpnctl.lab.kubelet")

STOP_GRACE = 10.0


# --- configuration -----------------------------------------------------------------------------


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
    # Resolve the server Service to the server pod's IP (cluster DNS and kube-proxy).
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
    # The server pods (run by the service node's real kubelet): `service_hosts` resolves
    # the server Service's name to the newest ready one's pod IP.
    server_selector: str
    pod_sets: tuple[PodSetConfig, ...]
    tenant_ca_cert: str  # the tenant apiserver's CA: the pods' service account ca.crt

    @classmethod
    def load(cls, path: Path) -> KubeletConfig:
        doc = json.loads(path.read_text())
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


def sync_volumes(
    run: Running,
    objects: Mapping[tuple[str, str], Mapping[str, Any] | None],
    *,
    pod: Mapping[str, Any],
) -> bool:
    """Write RUN's configMap/secret/projected volumes (downward API fields from POD) and
    make its emptyDirs; True if a file changed. PodError when an object or key is
    missing."""
    changed = False
    for volume in run.volumes:
        dest = run.pod_dir / str(volume["name"])
        if "emptyDir" in volume:
            dest.mkdir(parents=True, exist_ok=True)
        elif any(k in volume for k in ("projected", "configMap", "secret")):
            files = volume_files(volume, objects=objects, pod=pod)
            changed = write_volume(dest, files, mounts=run.mounts) or changed
    return changed


# --- the lab kubelet ----------------------------------------------------------------------------


def pod_status(
    pod: KubeObject,
    ps: PodSetConfig,
    *,
    phase: str,
    ready: bool,
    restarts: int = 0,
    waiting: str | None = None,
) -> dict[str, Any]:
    """The status a kubelet would report for POD of pod set PS."""
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
    return status


async def http_ready(
    http: aiohttp.ClientSession | None, container: Mapping[str, Any], host: str
) -> bool:
    """CONTAINER's readinessProbe (httpGet) against HOST; True when it has none."""
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
    assert http is not None
    try:
        async with http.get(f"http://{host}:{port}{probe.get('path', '/')}") as r:
            return 200 <= r.status < 400
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False
