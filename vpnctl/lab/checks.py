"""The full lab's connectivity table: what the tenant's users get through the tunnel.

Every check goes through the real tenant kube-apiserver in P-api, which reaches the nodes
only through its tun device:

- KUBELET: `GET /api/v1/nodes/<node>/proxy/healthz`, the apiserver dialling the node's
  kubelet on InternalIP:10250 (median of 5).
- LOGS: real `kubectl logs` of the Pod bound to the node: the apiserver streams the
  kubelet's `/containerLogs`; all 100,000 lines must arrive, in order, without a gap. The
  time is kubectl's whole run, start-up included.
- EXEC: real `kubectl exec -i` into that Pod: EXEC_BYTES of random data in through the
  apiserver and the kubelet's streaming endpoint, the pod's `sha256sum` of it must match.
- PORT-FORWARD: real `kubectl port-forward` to the Pod's HTTP port, in P-api, and curl
  of the pod's random `/blob` through it; its checksum must match the pod's own.
- WEBHOOK: a server-side dry-run create of a ConfigMap labelled for the node, which the
  apiserver must send to the webhook behind that node (through the webhook's Service:
  ClusterIP, the elected node's kube-proxy rules, the pod); failurePolicy Fail, so only
  an answer admits it (median of 5).
- TOP: `kubectl top node`, the apiserver asking metrics-server (an aggregated API served
  by a pod behind the tunnel), which scraped the kubelets.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from typing import Any

from vpnctl.lab import lab_objects as lo
from vpnctl.lab.address_plan import NodePlan
from vpnctl.lab.connectivity_table import NodeRow, any_failed, render
from vpnctl.lab.lab_objects import DEFAULT_LOG_LINES
from vpnctl.lab.lab_state import Lab, run_bytes, run_captured
from vpnctl.lab.netns import route_get, run
from vpnctl.lab.probe import ProbeResult, check_lines, probe_https, probe_post
from vpnctl.lab.realnode import workloads as wl
from vpnctl.lab.system import tunnel_status

EXEC_BYTES = 4 * 1024 * 1024


async def kubectl_logs(lab: Lab, node: NodePlan, *, lines: int = DEFAULT_LOG_LINES) -> ProbeResult:
    argv = lab.kubectl_argv(
        "logs", "-n", lo.WORKLOAD_NAMESPACE, wl.log_pod_name(node.name), "-c", lo.LOG_CONTAINER,
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
    body = wl.review_object(node.name, name=f"probe-{node.name}", deny=deny)
    url = f"{lab.tenant_url}/api/v1/namespaces/{lo.WORKLOAD_NAMESPACE}/configmaps?dryRun=All"
    return await probe_post(
        lab.plan.api_ns, url, ca=str(lab.tenant_ca), body=body, cert=str(cert),
        key=str(key), count=count, timeout=8.0,
    )  # fmt: skip


def _pod_argv(lab: Lab, verb: str, node: NodePlan, *args: str) -> list[str]:
    """kubectl VERB on NODE's web pod (busybox httpd) in the tenant cluster."""
    return lab.kubectl_argv(
        verb, "-n", lo.WORKLOAD_NAMESPACE, wl.web_pod_name(node.name), *args, cluster="tenant"
    )


def _last_line(err: str, code: int) -> str:
    return err.strip().splitlines()[-1] if err.strip() else f"exit {code}"


async def kubectl_exec(lab: Lab, node: NodePlan, *, nbytes: int = EXEC_BYTES) -> ProbeResult:
    """NBYTES through `kubectl exec -i ... -- sha256sum`; OK when the pod saw them all."""
    data = os.urandom(nbytes)
    argv = _pod_argv(lab, "exec", node, "-i",
                     "--request-timeout=120s", "--", "sha256sum")  # fmt: skip
    t0 = time.perf_counter()
    code, out, err = await run_bytes(argv, input=data, timeout=150)
    elapsed = (time.perf_counter() - t0) * 1000
    if code != 0:
        return ProbeResult(ok=False, error=f"kubectl exec: {_last_line(err, code)}")
    if out.split()[:1] != [hashlib.sha256(data).hexdigest().encode()]:
        return ProbeResult(ok=False, error=f"checksum differs: {out[:80]!r}")
    return ProbeResult(ok=True, latency_ms=elapsed, bytes=nbytes, rate=True)


async def pod_sha256(lab: Lab, node: NodePlan, path: str) -> str | None:
    code, out, _ = await run_bytes(
        _pod_argv(lab, "exec", node, "--", "sha256sum", path), timeout=60
    )
    return out.split()[0].decode() if code == 0 and out.split() else None


async def port_forward_fetch(lab: Lab, node: NodePlan, path: str) -> tuple[bytes, float]:
    """`kubectl port-forward` to NODE's pod in P-api, then curl PATH through it there:
    (the body, milliseconds the transfer took). LabUpError-free: raises RuntimeError."""
    argv = _pod_argv(lab, "port-forward", node, f":{wl.WEB_PORT}", "--address", "127.0.0.1")
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if b"Forwarding from" not in line:  # "Forwarding from 127.0.0.1:NNNNN -> 8080"
            rest = await asyncio.wait_for(proc.stdout.read(2000), 5)
            raise RuntimeError(f"kubectl port-forward: {(line + rest).decode(errors='replace')}")
        port = line.split(b"->")[0].rsplit(b":", 1)[1].strip().decode()
        t0 = time.perf_counter()
        code, body, err = await run_bytes(
            ["ip", "netns", "exec", lab.plan.api_ns, "curl", "-sS", "--fail", "--noproxy", "*",
             f"http://127.0.0.1:{port}{path}"], timeout=150,
        )  # fmt: skip
        elapsed = (time.perf_counter() - t0) * 1000
        if code != 0:
            raise RuntimeError(f"curl through the port-forward: {_last_line(err, code)}")
        return body, elapsed
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


async def kubectl_port_forward(lab: Lab, node: NodePlan) -> ProbeResult:
    """The pod's random /blob through `kubectl port-forward`; its checksum must match."""
    expected = await pod_sha256(lab, node, wl.WEB_BLOB)
    if expected is None:
        return ProbeResult(ok=False, error="the pod's /www/blob could not be read (exec)")
    try:
        body, elapsed = await port_forward_fetch(lab, node, "/blob")
    except (RuntimeError, TimeoutError) as exc:
        return ProbeResult(ok=False, error=str(exc) or "timed out")
    if hashlib.sha256(body).hexdigest() != expected:
        return ProbeResult(ok=False, error=f"checksum differs after {len(body)} bytes")
    return ProbeResult(ok=True, latency_ms=elapsed, bytes=len(body), rate=True)


async def kubectl_top(lab: Lab, node: NodePlan) -> ProbeResult:
    """`kubectl top node NODE`: OK when metrics-server answered with the node's usage."""
    argv = lab.kubectl_argv("top", "node", node.name, "--no-headers", cluster="tenant")
    t0 = time.perf_counter()
    code, out, err = await run_captured(argv, timeout=30)
    elapsed = (time.perf_counter() - t0) * 1000
    if code != 0:
        return ProbeResult(ok=False, error=f"kubectl top: {_last_line(err, code)}")
    if out.split()[:1] != [node.name]:
        return ProbeResult(ok=False, error=f"kubectl top: {out.strip()[:80]!r}")
    return ProbeResult(ok=True, latency_ms=elapsed)


async def node_row(lab: Lab, node: NodePlan, tunnel_ips: dict[str, str]) -> NodeRow:
    kubelet, webhook, top = await asyncio.gather(
        kubelet_via_apiserver(lab, node), webhook_via_apiserver(lab, node), kubectl_top(lab, node)
    )
    # The streams one after another, so each figure is its own.
    logs = await kubectl_logs(lab, node)
    exec_ = await kubectl_exec(lab, node)
    port_forward = await kubectl_port_forward(lab, node)
    return NodeRow(
        node=node.name,
        internal_ip=str(node.internal_ip),
        tunnel_ip=tunnel_ips.get(node.name),
        kubelet=kubelet,
        logs=logs,
        exec=exec_,
        port_forward=port_forward,
        webhook=webhook,
        top=top,
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
    print("through the tenant apiserver (kubelet, logs, exec, port-forward, webhook, top):")
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
