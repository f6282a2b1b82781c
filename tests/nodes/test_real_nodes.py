"""Two real tenant nodes (containerd, kubelet, kube-proxy) against a real tenant
control plane (apiserver, controller-manager, scheduler): pods, logs, exec,
port-forward, pod-to-pod and ClusterIP traffic, and a DaemonSet. The topology is
``two_nodes``'s (tests/nodes/two_nodes.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

import pytest

from tests.nodes.two_nodes import NODES, assert_nothing_left, two_nodes, wait_for
from vpnctl.lab.realnode.node_images import NodeImages
from vpnctl.testenv import Binaries, TenantCluster

pytestmark = [
    pytest.mark.nodes,
    pytest.mark.timeout(600),
    pytest.mark.skipif(os.geteuid() != 0, reason="real nodes need root: netns, cgroups, mounts"),
]

BLOB_MIB = 4


def pod(name: str, node: str, *, labels: dict[str, str], command: str, image: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": node},
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {
                        "name": "main",
                        "image": image,
                        "imagePullPolicy": "Never",
                        "command": ["/bin/sh", "-c", command],
                    }
                ],
            },
        }
    )


async def pod_json(cluster: TenantCluster, name: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(await cluster.kubectl("get", "pod", name, "-o", "json"))
    return out


async def test_two_real_nodes(
    tmp_path: Path, node_binaries: Binaries, node_images: NodeImages
) -> None:
    wall = time.monotonic()
    image = node_images.busybox.ref
    async with two_nodes(tmp_path, node_binaries, node_images) as env:
        c = env.cluster
        prefix = env.prefix
        # Both nodes Ready (waited for above) and registered with the podCIDR we gave.
        nodes = json.loads(await c.kubectl("get", "nodes", "-o", "json"))["items"]
        assert sorted(n["metadata"]["name"] for n in nodes) == ["node-1", "node-2"]
        for n in nodes:
            ready = {x["type"]: x["status"] for x in n["status"]["conditions"]}["Ready"]
            assert ready == "True", n["metadata"]["name"]
        usage = {node.spec.name: node.usage() for node in env.nodes}
        usage_at = time.monotonic()

        # A web pod on each node: busybox httpd serving a few MB of random data.
        serve = (
            f"mkdir -p /www && head -c {BLOB_MIB * 1048576} /dev/urandom > /www/blob && "
            "echo serving-$(hostname) && exec httpd -f -p 8080 -h /www"
        )
        for i, (name, _, _) in enumerate(NODES, start=1):
            await c.kubectl(
                "apply",
                "-f",
                "-",
                input=pod(f"web-{i}", name, labels={"app": f"web-{i}"}, command=serve, image=image),
            )
        pods: dict[str, dict[str, Any]] = {}
        for i in (1, 2):

            async def running(i: int = i) -> dict[str, Any] | None:
                p = await pod_json(c, f"web-{i}")
                ok = p["status"].get("phase") == "Running" and p["status"].get("podIP")
                return p if ok else None

            pods[f"web-{i}"] = await wait_for(f"web-{i} Running", running)
        assert pods["web-1"]["spec"]["nodeName"] == "node-1"
        assert pods["web-2"]["spec"]["nodeName"] == "node-2"
        ip1, ip2 = pods["web-1"]["status"]["podIP"], pods["web-2"]["status"]["podIP"]
        assert ip1.startswith("198.18.64."), ip1
        assert ip2.startswith("198.18.65."), ip2

        for i in (1, 2):
            # logs through the apiserver to the kubelet (:10250, real TLS)
            async def logged(i: int = i) -> bool:
                return f"serving-web-{i}" in await c.kubectl("logs", f"web-{i}")

            await wait_for(f"logs of web-{i}", logged, timeout=60)
            # exec with stdin: a few MB in, its checksum out
            data = secrets.token_bytes(BLOB_MIB * 1048576)
            out = await c.kubectl("exec", "-i", f"web-{i}", "--", "sha256sum", input=data)
            assert out.split()[0] == hashlib.sha256(data).hexdigest()

            # port-forward: a few MB out of the pod, checksum equal to the pod's own
            expected = (
                await c.kubectl("exec", f"web-{i}", "--", "sha256sum", "/www/blob")
            ).split()[0]
            got = await port_forward_fetch(c, f"web-{i}", "/blob")
            assert len(got) == BLOB_MIB * 1048576
            assert hashlib.sha256(got).hexdigest() == expected

        # busybox-static's wget segfaults (static glibc resolver), so HTTP goes through
        # nc; the body is the last BLOB_MIB MiB of the response.
        def fetch(url_host: str, port: int) -> str:
            return (
                f"printf 'GET /blob HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {url_host} {port} "
                f"| tail -c {BLOB_MIB * 1048576} | sha256sum"
            )

        blob_sums = {}
        for name in ("web-1", "web-2"):
            out = await c.kubectl("exec", name, "--", "sha256sum", "/www/blob")
            blob_sums[name] = out.split()[0]
        # pod to pod across nodes, by pod IP, both ways
        for src, dst, dst_ip in (("web-1", "web-2", ip2), ("web-2", "web-1", ip1)):
            out = await c.kubectl("exec", src, "--", "sh", "-c", fetch(dst_ip, 8080))
            assert out.split()[0] == blob_sums[dst], f"{src} -> {dst} ({dst_ip})"

        # a ClusterIP Service, through kube-proxy's iptables rules, from the other node
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web-2"},
            "spec": {"selector": {"app": "web-2"}, "ports": [{"port": 80, "targetPort": 8080}]},
        }
        await c.kubectl("apply", "-f", "-", input=json.dumps(service))
        svc = json.loads(await c.kubectl("get", "svc", "web-2", "-o", "json"))
        cluster_ip = svc["spec"]["clusterIP"]

        async def via_service() -> bool:
            out = await c.kubectl("exec", "web-1", "--", "sh", "-c", fetch(cluster_ip, 80))
            return out.split()[:1] == [blob_sums["web-2"]]

        await wait_for(f"Service {cluster_ip} from node-1", via_service, timeout=60)

        # a DaemonSet: the scheduler's and controller-manager's work, one pod per node
        await c.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps(
                {
                    "apiVersion": "apps/v1",
                    "kind": "DaemonSet",
                    "metadata": {"name": "everywhere"},
                    "spec": {
                        "selector": {"matchLabels": {"app": "everywhere"}},
                        "template": {
                            "metadata": {"labels": {"app": "everywhere"}},
                            "spec": {
                                "terminationGracePeriodSeconds": 1,
                                "containers": [
                                    {
                                        "name": "main",
                                        "image": image,
                                        "imagePullPolicy": "Never",
                                        "command": ["/bin/sh", "-c", "exec sleep 3600"],
                                    }
                                ],
                            },
                        },
                    },
                }
            ),
        )

        async def ds_ready() -> bool:
            ds = json.loads(await c.kubectl("get", "ds", "everywhere", "-o", "json"))
            st = ds.get("status", {})
            return bool(st.get("desiredNumberScheduled") == 2 and st.get("numberReady") == 2)

        await wait_for("DaemonSet ready on both nodes", ds_ready)
        ds_pods = json.loads(await c.kubectl("get", "pods", "-l", "app=everywhere", "-o", "json"))
        assert sorted(p["spec"]["nodeName"] for p in ds_pods["items"]) == ["node-1", "node-2"]
        # Idle-ish cost per daemon: RSS now, CPU share since the nodes were Ready.
        window = time.monotonic() - usage_at
        cost = {
            node.spec.name: {
                name: f"{rss:.0f} MiB, {100 * (cpu - usage[node.spec.name][name][1]) / window:.1f}%"
                for name, (rss, cpu) in node.usage().items()
            }
            for node in env.nodes
        }
        prefix, cgroup_roots, node_dirs = env.prefix, env.cgroup_roots, env.node_dirs
        bringup = env.bringup_seconds

    # Nothing of ours is left: processes, mounts, cgroups, namespaces.
    assert_nothing_left(prefix, cgroup_roots, node_dirs)
    print(
        f"\nreal nodes: bring-up of 2 nodes {bringup:.1f}s, test wall "
        f"{time.monotonic() - wall:.1f}s, per daemon (RSS, CPU over {window:.0f}s) {cost}"
    )


async def port_forward_fetch(c: TenantCluster, pod_name: str, path: str) -> bytes:
    """Run ``kubectl port-forward`` in the control plane's namespace and fetch ``path``
    through it with curl in the same namespace."""
    argv = c.kubectl_argv("port-forward", f"pod/{pod_name}", ":8080", "--address", "127.0.0.1")
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        # "Forwarding from 127.0.0.1:NNNNN -> 8080"
        assert b"Forwarding from" in line, line
        port = line.split(b"->")[0].rsplit(b":", 1)[1].strip().decode()
        fetch = await asyncio.create_subprocess_exec(
            "ip",
            "netns",
            "exec",
            c.netns or "",
            "curl",
            "-sS",
            "--noproxy",
            "*",
            f"http://127.0.0.1:{port}{path}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(fetch.communicate(), 60)
        assert fetch.returncode == 0, err
        return out
    finally:
        proc.terminate()
        await proc.wait()
