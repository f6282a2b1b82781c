"""A lab as its state directory records it (`Lab`), and the small process helpers the
lab's code shares: what `vpnctl lab status`, `down`, the checks and the e2e tests open
from any process, apart from how `vpnctl.lab.system` brings a lab up."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vpnctl.lab import lab_objects as lo
from vpnctl.lab.address_plan import LabPlan, NodePlan, make_plan
from vpnctl.lab.dataplane import write_json_atomic
from vpnctl.lab.kubelet_parts import status_path
from vpnctl.reconcile.agentdocs import NodePaths
from vpnctl.reconcile.names import COMPONENT_SERVER, selector_labels
from vpnctl.reconcile.service_objects import SERVER_CONTAINER
from vpnctl.testenv.procs import environ_without_proxies, netns_argv

IMAGES_RECORD = "images.json"  # the vpnctl image this lab's DaemonSet names

Say = Callable[[str], None]
# vpnctl's server pods of the lab's tenant, as a label selector.
SERVER_SELECTOR = ",".join(
    f"{k}={v}"
    for k, v in selector_labels(cluster_name=lo.CLUSTER_NAME, component=COMPONENT_SERVER).items()
)


def pod_ready(pod: Mapping[str, Any]) -> bool:
    """The pod's Ready condition is True."""
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


class LabUpError(RuntimeError):
    """The lab did not come up; the message says which part and where its log is."""


# --- a running lab, as files ------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Lab:
    """A lab that is up (or being brought up): its plan, state directory and clusters."""

    plan: LabPlan
    state: Path
    proto: str
    kubectl_binary: Path

    @classmethod
    def open(cls, state: Path) -> Lab:
        """The lab recorded in STATE/lab.json; FileNotFoundError when there is none."""
        meta = json.loads((state / "lab.json").read_text())
        return cls(
            plan=make_plan(prefix=meta["prefix"], nodes=int(meta["nodes"])),
            state=state,
            proto=meta["proto"],
            kubectl_binary=Path(meta["kubectl"]),
        )

    def record(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        write_json_atomic(
            self.state / "lab.json",
            {
                "prefix": self.plan.prefix,
                "nodes": len(self.plan.nodes),
                "proto": self.proto,
                "kubectl": str(self.kubectl_binary),
                "kind": "full",
            },
        )

    # -- paths
    @property
    def service_dir(self) -> Path:
        return self.state / "service"

    @property
    def tenant_dir(self) -> Path:
        return self.state / "tenant"

    @property
    def pki_dir(self) -> Path:
        return self.state / "pki"

    @property
    def logs_dir(self) -> Path:
        return self.state / "logs"

    @property
    def service_kubeconfig(self) -> Path:
        return self.service_dir / "kubeconfig"

    @property
    def tenant_kubeconfig(self) -> Path:
        return self.tenant_dir / "kubeconfig"

    @property
    def tenant_ca(self) -> Path:
        return self.tenant_dir / "pki" / "ca.crt"

    @property
    def tenant_admin(self) -> tuple[Path, Path]:
        return (self.tenant_dir / "pki" / "admin.crt", self.tenant_dir / "pki" / "admin.key")

    @property
    def workload_ca(self) -> Path:
        """The CA of the tenant workloads' serving certificates (webhooks, metrics-server)."""
        return self.pki_dir / "workload-ca.pem"

    @property
    def tenant_url(self) -> str:
        return f"https://{self.plan.api_ip}:{lo.TENANT_APISERVER_PORT}"

    # -- kubectl in the namespaces that reach the clusters
    def kubectl_argv(self, *args: str, cluster: str) -> list[str]:
        ns, kubeconfig = (
            (self.plan.svc_ns, self.service_kubeconfig)
            if cluster == "service"
            else (self.plan.api_ns, self.tenant_kubeconfig)
        )
        return netns_argv(ns, [str(self.kubectl_binary), "--kubeconfig", str(kubeconfig), *args])

    async def kubectl(
        self,
        *args: str,
        cluster: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60.0,
    ) -> str:
        """kubectl as the cluster's admin ("service" or "tenant"); its stdout."""
        code, out, err = await run_captured(
            self.kubectl_argv(*args, cluster=cluster), input=input, timeout=timeout
        )
        if check and code != 0:
            raise LabUpError(
                f"kubectl {' '.join(args)} ({cluster} cluster) exited {code}: "
                f"{err.strip() or out.strip()}"
            )
        return out

    async def get_json(self, *args: str, cluster: str) -> dict[str, Any] | None:
        """`kubectl get ARGS -o json`, or None when it is not found."""
        code, out, err = await run_captured(
            self.kubectl_argv("get", *args, "-o", "json", cluster=cluster), timeout=30
        )
        if code != 0:
            if "NotFound" in err or "not found" in err:
                return None
            raise LabUpError(f"kubectl get {' '.join(args)} ({cluster}): {err.strip()}")
        doc: dict[str, Any] = json.loads(out)
        return doc

    async def apply(self, docs: Sequence[dict[str, Any]], *, cluster: str) -> None:
        text = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(docs)})
        await self.kubectl("apply", "--server-side", "--force-conflicts",
                           "--field-manager=vpnctl-lab", "-f", "-",
                           cluster=cluster, input=text)  # fmt: skip

    async def patch_status(self, kind: str, name: str, patch: dict[str, Any], *,
                           cluster: str, namespace: str | None = None) -> None:  # fmt: skip
        ns_args = ["-n", namespace] if namespace else []
        await self.kubectl("patch", kind, name, *ns_args, "--subresource=status",
                           "--type=merge", "-p", json.dumps(patch), cluster=cluster)  # fmt: skip

    def kubelet_status(self) -> dict[str, Any]:
        try:
            doc: dict[str, Any] = json.loads(status_path(self.state).read_text())
        except (FileNotFoundError, ValueError):
            return {"containers": {}}
        return doc

    @property
    def service_node_dir(self) -> Path:
        """The service cluster's real node (the server pods' kubelet)."""
        return self.state / "nodes" / self.plan.service_node

    def server_log(self) -> str:
        """What the server pods' container printed, as the service node's kubelet keeps
        it (CRI log files, oldest pod first), without the CRI time/stream/tag prefix."""
        pods = self.service_node_dir / "host" / "var" / "log" / "pods"
        pattern = f"{lo.CLUSTER_NAMESPACE}_{lo.CLUSTER_NAME}-vpn-server-*/{SERVER_CONTAINER}/*.log"
        lines: list[str] = []
        for path in sorted(pods.glob(pattern), key=lambda p: p.stat().st_mtime):
            with contextlib.suppress(FileNotFoundError):
                for line in path.read_text(errors="replace").splitlines():
                    parts = line.split(" ", 3)
                    lines.append(parts[3] if len(parts) == 4 else "")
        return "\n".join(lines) + "\n"

    async def server_pod_ips(self) -> list[str]:
        """The server pods' IPs (ready ones first; none being deleted), as the service
        cluster reports them."""
        pods = await self.get_json("pods", "-n", lo.CLUSTER_NAMESPACE, "-l", SERVER_SELECTOR,
                                   cluster="service")  # fmt: skip
        items = [p for p in (pods or {}).get("items") or []
                 if (p.get("status") or {}).get("podIP")
                 and not p["metadata"].get("deletionTimestamp")]  # fmt: skip
        items.sort(key=lambda p: not pod_ready(p))
        return [str(p["status"]["podIP"]) for p in items]

    def node_dir(self, node: NodePlan) -> Path:
        """The real node's own folder: its configs, logs and the host paths it owns."""
        return self.state / "nodes" / node.name

    def agent_state_dir(self, node: NodePlan) -> Path:
        """The node agent's hostPath state directory, as the host sees it."""
        return self.node_dir(node) / "host" / NodePaths.state_dir.lstrip("/")


async def run_captured(
    argv: Sequence[str], *, input: str | None = None, timeout: float = 60.0
) -> tuple[int, str, str]:
    code, out, err = await run_bytes(
        argv, input=None if input is None else input.encode(), timeout=timeout
    )
    return code, out.decode(errors="replace"), err


async def run_bytes(
    argv: Sequence[str], *, input: bytes | None = None, timeout: float = 60.0
) -> tuple[int, bytes, str]:
    """Run ARGV with INPUT on stdin; (exit code, stdout, stderr), -1 on timeout."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environ_without_proxies(),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(input), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return -1, b"", f"timed out after {timeout:g}s"
    return proc.returncode or 0, out, err.decode(errors="replace")
