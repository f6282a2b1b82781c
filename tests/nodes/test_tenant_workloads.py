"""The tenant's workloads (vpnctl/lab/realnode/workloads.py) on two real nodes, with the
paths the hosted apiserver will take through vpnctl's tunnel.

``two_nodes`` with the aggregation layer on, and the service CIDR routed from the
control plane's namespace to node-1: the apiserver reaches a ClusterIP as it will
through the tunnel, entering at one node whose kube-proxy DNATs it and, the source
being outside the cluster CIDR, masquerades it. Then, with the workloads applied:

- ``kubectl top nodes`` lists both nodes and ``kubectl top pods`` our pods: the
  apiserver to metrics-server by ClusterIP (aggregated API), metrics-server to each
  kubelet by InternalIP with the kubelet's certificate verified;
- the webhook behind each node admits a plain ConfigMap and denies one labelled
  ``vpnctl.io/deny`` (server-side dry-run), and saw the call masqueraded by node-1;
- ``kubectl logs`` of each log pod has every line, in order;
- each web pod answers ``kubectl exec``.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import time
from pathlib import Path

import pytest

from certs import new_ca
from tests.nodes.two_nodes import NODES, assert_nothing_left, two_nodes, wait_for
from vpnctl.lab.lab_objects import WORKLOAD_NAMESPACE
from vpnctl.lab.probe import check_lines
from vpnctl.lab.realnode import metrics_server_objects as ms
from vpnctl.lab.realnode import workloads as wl
from vpnctl.lab.realnode.node_images import NodeImages, ensure_node_images, ensure_vpnctl_image
from vpnctl.testenv import Binaries, TenantCluster
from vpnctl.testenv.cluster_options import KubectlError

pytestmark = [
    pytest.mark.nodes,
    pytest.mark.timeout(900),
    pytest.mark.skipif(os.geteuid() != 0, reason="real nodes need root: netns, cgroups, mounts"),
]

LOG_LINES = 20_000
NODE_NAMES = [name for name, _, _ in NODES]
NODE_1_LAN = NODES[0][1]
NS = WORKLOAD_NAMESPACE


@pytest.fixture(scope="module")
def workload_images(node_binaries: Binaries) -> NodeImages:
    assert node_binaries.metrics_server is not None
    images = ensure_node_images(metrics_server=node_binaries.metrics_server)
    return images.with_extra(ensure_vpnctl_image())


async def test_tenant_workloads(
    tmp_path: Path, node_binaries: Binaries, workload_images: NodeImages
) -> None:
    wall = time.monotonic()
    assert workload_images.metrics_server is not None
    images = wl.WorkloadImages(
        busybox=workload_images.busybox.ref,
        metrics_server=workload_images.metrics_server.ref,
        vpnctl=workload_images.extra[0].ref,
    )
    now = datetime.datetime.now(datetime.UTC)
    ca = new_ca(common_name="tenant-workloads-ca", now=now, lifetime=datetime.timedelta(days=1))
    tls = wl.issue_serving_tls(NODE_NAMES, ca=ca, now=now)
    objects = wl.workload_objects(NODE_NAMES, images=images, tls=tls, log_lines=LOG_LINES)
    timings: dict[str, float] = {}

    async with two_nodes(
        tmp_path, node_binaries, workload_images, aggregation=True, services_via_node=1
    ) as env:
        c = env.cluster
        await c.kubectl("apply", "-f", "-", input=json.dumps(wl.as_list(objects)))
        applied = time.monotonic()

        def mark(what: str) -> None:
            timings[what] = time.monotonic() - applied

        for node in NODE_NAMES:
            await check_webhook(c, node)
        mark("webhooks answer")
        await check_masquerade(c)

        for node in NODE_NAMES:
            await check_logs(c, node)
        mark("logs complete")

        for node in NODE_NAMES:
            await wait_for(f"{wl.web_pod_name(node)} Ready", lambda n=node: pod_ready(c, n))
            out = await c.kubectl("exec", "-n", NS, wl.web_pod_name(node), "--",
                                  "sha256sum", wl.WEB_BLOB)  # fmt: skip
            assert re.fullmatch(r"[0-9a-f]{64}  /www/blob\n", out), out

        # metrics: nodes, then every pod of ours (a pod's CPU needs two scrapes)
        async def top_nodes() -> dict[str, list[str]] | None:
            rows = await top(c, "nodes")
            return rows if rows is not None and sorted(rows) == NODE_NAMES else None

        await wait_for("kubectl top nodes lists both nodes", top_nodes, 240)
        mark("top nodes answers")
        one_call = time.monotonic()
        await c.kubectl("top", "nodes")
        top_call = time.monotonic() - one_call
        ours = {
            *(f"{NS}/{f(n)}" for n in NODE_NAMES for f in (
                wl.log_pod_name, wl.web_pod_name, wl.webhook_name)),
            f"{ms.METRICS_NAMESPACE}/{ms.METRICS_SERVER}-",
        }  # fmt: skip

        async def top_pods() -> dict[str, list[str]] | None:
            found = await top(c, "pods", "-A")
            listed = found or {}
            missing = [p for p in ours if not any(name.startswith(p) for name in listed)]
            return None if missing else listed

        pod_rows = await wait_for("kubectl top pods lists our pods", top_pods, 240)
        mark("top pods answers")
        metrics_pod = next(p for p in pod_rows if p.startswith("kube-system/metrics-server-"))
        bringup = env.bringup_seconds
        prefix, cgroup_roots, node_dirs = env.prefix, env.cgroup_roots, env.node_dirs

    assert_nothing_left(prefix, cgroup_roots, node_dirs)
    steps = ", ".join(f"{what} +{t:.1f}s" for what, t in timings.items())
    print(
        f"\ntenant workloads: bring-up of control plane and 2 nodes {bringup:.1f}s; "
        f"after apply: {steps}; one `kubectl top nodes` {top_call * 1000:.0f} ms; "
        f"{metrics_pod} {pod_rows[metrics_pod]}; test wall {time.monotonic() - wall:.1f}s"
    )


async def check_webhook(c: TenantCluster, node: str) -> None:
    """Admits a plain ConfigMap labelled for NODE, denies one labelled deny; both
    through the apiserver's webhook call to the Service's ClusterIP (dry-run)."""
    plain = json.dumps(wl.review_object(node, name=f"plain-{node}"))

    async def admitted() -> bool:
        await c.kubectl("create", "--dry-run=server", "-o", "name", "-f", "-", input=plain)
        return True

    await wait_for(f"webhook of {node} admits a plain ConfigMap", admitted, 180)
    denied = json.dumps(wl.review_object(node, name=f"denied-{node}", deny=True))
    with pytest.raises(KubectlError) as refused:
        await c.kubectl("create", "--dry-run=server", "-f", "-", input=denied)
    message = refused.value.stderr
    assert f'admission webhook "{wl.webhook_name(node)}.lab.vpnctl.io" denied' in message
    assert "vpnctl.io/deny=true" in message


async def check_masquerade(c: TenantCluster) -> None:
    """The apiserver's calls entered at node-1 and were masqueraded there (kube-proxy's
    clusterCIDR puts the control plane outside the cluster): node-2's webhook saw
    node-1's LAN address, never the apiserver's own."""
    logs = await c.kubectl("logs", "-n", NS, wl.webhook_name("node-2"))
    peers = set(re.findall(r"event=admission_reviewed .*peer=(\S+)", logs))
    assert peers == {NODE_1_LAN}, logs


async def check_logs(c: TenantCluster, node: str) -> None:
    pod = wl.log_pod_name(node)

    async def complete() -> str | None:
        out = await c.kubectl("logs", "-n", NS, pod)
        return out if out.count("\n") >= LOG_LINES else None

    out = await wait_for(f"{LOG_LINES} lines in the log of {pod}", complete, 120)
    assert check_lines(out.encode(), LOG_LINES) is None
    lines = out.splitlines()
    assert lines[0] == wl.log_line(node, pod, 0)
    assert lines[-1] == wl.log_line(node, pod, LOG_LINES - 1)


async def pod_ready(c: TenantCluster, node: str) -> bool:
    pod = json.loads(await c.kubectl("get", "pod", "-n", NS, wl.web_pod_name(node), "-o", "json"))
    conditions = {x["type"]: x["status"] for x in pod["status"].get("conditions", [])}
    return conditions.get("Ready") == "True"


async def top(c: TenantCluster, *what: str) -> dict[str, list[str]] | None:
    """``kubectl top`` rows by name (``namespace/name`` with ``-A``); None while any
    row still has no figures."""
    out = await c.kubectl("top", *what, "--no-headers")
    rows: dict[str, list[str]] = {}
    for line in out.splitlines():
        cells = line.split()
        if "-A" in what:
            rows[f"{cells[0]}/{cells[1]}"] = cells[2:]
        else:
            rows[cells[0]] = cells[1:]
    if not rows or any("<unknown>" in cells for cells in rows.values()):
        return None
    return rows
