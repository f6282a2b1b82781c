"""The full lab's connectivity table: what the tenant's users get through the tunnel.

Every check goes through the real tenant kube-apiserver in P-api, which reaches the nodes
only through its tun device:

- KUBELET: `GET /api/v1/nodes/<node>/proxy/healthz`, the apiserver dialling the node's
  kubelet on InternalIP:10250 (median of 5).
- LOGS: real `kubectl logs` of the Pod bound to the node: the apiserver streams the
  kubelet's `/containerLogs`; all 100,000 lines must arrive, in order, without a gap. The
  time is kubectl's whole run, start-up included.
- WEBHOOK: a server-side dry-run create of a ConfigMap labelled for the node, which the
  apiserver must send to the webhook behind that node (through the webhook's Service:
  ClusterIP, the elected node's kube-proxy rules, the pod); failurePolicy Fail, so only
  an answer admits it (median of 5).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from vpnctl.lab import lab_objects as lo
from vpnctl.lab.address_plan import NodePlan
from vpnctl.lab.connectivity_table import NodeRow, any_failed, render
from vpnctl.lab.lab_objects import DEFAULT_LOG_LINES
from vpnctl.lab.netns import route_get, run
from vpnctl.lab.probe import ProbeResult, check_lines, probe_https, probe_post
from vpnctl.lab.system import Lab, run_captured, tunnel_status


async def kubectl_logs(lab: Lab, node: NodePlan, *, lines: int = DEFAULT_LOG_LINES) -> ProbeResult:
    argv = lab.kubectl_argv(
        "logs", "-n", lo.WORKLOAD_NAMESPACE, lo.log_pod_name(node), "-c", lo.LOG_CONTAINER,
        "--request-timeout=30s", cluster="tenant",
    )  # fmt: skip
    t0 = time.perf_counter()
    code, out, err = await run_captured(argv, timeout=45)
    elapsed = (time.perf_counter() - t0) * 1000
    if code != 0:
        last = err.strip().splitlines()[-1] if err.strip() else f"exit {code}"
        return ProbeResult(ok=False, error=f"kubectl: {last}")
    problem = check_lines(out.encode(), lines)
    if problem is not None:
        return ProbeResult(ok=False, error=problem, bytes=len(out))
    return ProbeResult(ok=True, latency_ms=elapsed, bytes=len(out))


async def kubelet_via_apiserver(lab: Lab, node: NodePlan, *, count: int = 5) -> ProbeResult:
    cert, key = lab.tenant_admin
    return await probe_https(
        lab.plan.api_ns, f"{lab.tenant_url}/api/v1/nodes/{node.name}/proxy/healthz",
        ca=str(lab.tenant_ca), cert=str(cert), key=str(key), count=count, timeout=5.0,
    )  # fmt: skip


async def webhook_via_apiserver(
    lab: Lab, node: NodePlan, *, count: int = 5, deny: bool = False
) -> ProbeResult:
    cert, key = lab.tenant_admin
    body = lo.review_object(node, name=f"probe-{node.name}", deny=deny)
    url = f"{lab.tenant_url}/api/v1/namespaces/{lo.WORKLOAD_NAMESPACE}/configmaps?dryRun=All"
    return await probe_post(
        lab.plan.api_ns, url, ca=str(lab.tenant_ca), body=body, cert=str(cert),
        key=str(key), count=count, timeout=8.0,
    )  # fmt: skip


async def node_row(lab: Lab, node: NodePlan, tunnel_ips: dict[str, str]) -> NodeRow:
    kubelet, logs, webhook = await asyncio.gather(
        kubelet_via_apiserver(lab, node), kubectl_logs(lab, node), webhook_via_apiserver(lab, node)
    )
    return NodeRow(
        node=node.name,
        internal_ip=str(node.internal_ip),
        tunnel_ip=tunnel_ips.get(node.name),
        kubelet=kubelet,
        logs=logs,
        webhook=webhook,
    )


async def tun_bytes(ns: str) -> int:
    out = await run("ip", "-n", ns, "-s", "-j", "link", "show", "tun0", check=False)
    try:
        stats: dict[str, Any] = json.loads(out)[0]["stats64"]
        return int(stats["rx"]["bytes"]) + int(stats["tx"]["bytes"])
    except (ValueError, LookupError, TypeError):
        return 0


async def report(lab: Lab) -> int:
    """Print vpnctl's view, the connectivity table and the path; 1 on any FAIL."""
    code, out, _err = await run_captured(
        ["ip", "netns", "exec", lab.plan.svc_ns, *_vpnctl_status(lab)], timeout=30
    )
    if code == 0 and out.strip():
        print("vpnctl status (the controller's view, from the Tunnel):")
        print(out.rstrip())
        print()
    status = await tunnel_status(lab)
    tunnel_ips = {str(n.get("name")): str(n.get("tunnelIP")) for n in status.get("nodes") or []}
    before = await tun_bytes(lab.plan.api_ns)
    rows = [await node_row(lab, n, tunnel_ips) for n in lab.plan.nodes]
    crossed = await tun_bytes(lab.plan.api_ns) - before
    print("through the tenant apiserver (kubectl logs, webhook, kubelet):")
    print(render(rows))
    first = lab.plan.nodes[0]
    route = await route_get(str(first.internal_ip), ns=lab.plan.api_ns)
    print(
        f"\npath: from {lab.plan.api_ns}, `ip route get {first.internal_ip}` -> "
        f"{' '.join((route or 'no route').split())}; {crossed:,} bytes crossed tun0 while "
        f"probing; elected node for the service CIDR: {status.get('serviceRouteNode', '?')}"
    )
    return 1 if any_failed(rows) else 0


def _vpnctl_status(lab: Lab) -> list[str]:
    import sys

    return [sys.executable, "-m", "vpnctl", "status", "--kubeconfig", str(lab.service_kubeconfig)]
