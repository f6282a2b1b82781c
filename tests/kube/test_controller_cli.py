"""`vpnctl run` as a process against the real apiserver, and `vpnctl status`."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
import yaml

from tests.support.capi import create_kubeconfig_secret, create_tenant
from tests.support.polling import aeventually
from vpnctl.cli import parse_args
from vpnctl.controller import cli
from vpnctl.controller.interfaces import TenantRef
from vpnctl.kube import LEASE, TUNNEL, Kube
from vpnctl.reconcile.conditions import rfc3339
from vpnctl.testenv import ServiceCluster
from vpnctl.testenv.cluster import free_ports

from .controllerfix import (
    FakeObservations,
    FakeTenantSide,
    all_connected,
    controller_settings,
    running_controller,
    wait_condition,
    wait_ready,
)
from .kubefix import kube  # noqa: F401

pytestmark = pytest.mark.kube


async def test_status_prints_the_tunnels_and_their_nodes(
    kube: Kube,  # noqa: F811
    namespace: str,
    service_cluster: ServiceCluster,
) -> None:
    observations = FakeObservations(default=all_connected(["one-node-1", "one-node-2"]))
    # The server's connect time for one-node-1: it reaches the Tunnel's status (the real
    # CRD keeps the field) and is what SINCE shows.
    connected_at = datetime.now(UTC) - timedelta(days=10)
    observations.default["one-node-1"] = replace(
        observations.default["one-node-1"], connected_since=connected_at
    )
    observations.per_tenant[TenantRef(namespace, "two")] = all_connected(["two-node-1"])
    async with running_controller(
        kube, controller_settings(namespace), side=FakeTenantSide(), observations=observations
    ):
        await create_tenant(kube, namespace, "one", nodes=2)
        await create_tenant(kube, namespace, "two", nodes=1)
        await wait_ready(kube, namespace, "one", nodes=2, connected=2)
        await wait_ready(kube, namespace, "two", nodes=1, connected=1)

    one = await kube.get(TUNNEL, "one", namespace)
    assert one is not None
    rows = {r["name"]: r for r in one["status"]["nodes"]}
    assert rows["one-node-1"]["connectedSince"] == rfc3339(connected_at)
    assert rows["one-node-1"]["rttSeconds"] == 0.002
    assert "connectedSince" not in rows["one-node-2"]

    def args(*extra: str) -> argparse.Namespace:
        # --kubeconfig is a global flag: given after the sub-command here
        return parse_args(["status", "--kubeconfig", str(service_cluster.kubeconfig_path), *extra])

    out = io.StringIO()
    assert await cli.status(args("-n", namespace, "one"), out=out) == 0
    tenants, nodes = out.getvalue().strip().split("\n\n")
    assert tenants.splitlines()[0].split() == [
        "NAMESPACE", "CLUSTER", "READY", "REASON", "NODES", "CONNECTED", "AGE"
    ]  # fmt: skip
    assert tenants.splitlines()[1].split()[:6] == [
        namespace,
        "one",
        "True",
        "TunnelReady",
        "2",
        "2",
    ]
    # The fake observations carry an RTT: it shows in milliseconds
    assert nodes.splitlines()[0].split() == [
        "NODE", "TUNNEL-IP", "CONNECTED", "SINCE", "RTT", "KUBELET"
    ]  # fmt: skip
    row = nodes.splitlines()[1].split()
    assert row == ["one-node-1", "100.127.255.3", "yes", "10d", "2.0ms", "OK"]

    out = io.StringIO()
    assert await cli.status(args("-n", namespace), out=out) == 0
    text = out.getvalue()
    assert "two-node-1" in text
    assert "one-node-2" in text
    out = io.StringIO()
    assert await cli.status(args("-n", namespace, "nothere"), out=out) == 1
    assert out.getvalue() == "No tunnels found.\n"

    out = io.StringIO()
    assert await cli.status(args("-n", namespace, "-o", "json", "one"), out=out) == 0
    one = json.loads(out.getvalue())
    assert (one["kind"], one["metadata"]["name"]) == ("Tunnel", "one")
    assert "managedFields" not in one["metadata"]
    assert [n["name"] for n in one["status"]["nodes"]] == ["one-node-1", "one-node-2"]
    out = io.StringIO()
    assert await cli.status(args("-n", namespace, "-o", "yaml"), out=out) == 0
    listed = yaml.safe_load(out.getvalue())
    assert listed["kind"] == "List"
    assert [t["metadata"]["name"] for t in listed["items"]] == ["one", "two"]
    assert all(t["apiVersion"] == "vpnctl.io/v1alpha1" for t in listed["items"])


async def test_vpnctl_run_serves_health_reconciles_and_stops_on_sigterm(
    kube: Kube,  # noqa: F811
    namespace: str,
    service_cluster: ServiceCluster,
) -> None:
    port = free_ports(1)[0]
    argv = [
        sys.executable, "-m", "vpnctl", "--log-level", "INFO", "run",
        "--kubeconfig", str(service_cluster.kubeconfig_path),
        "--namespace", namespace,
        "--leader-elect", "--identity", "cli-replica", "--lease-namespace", namespace,
        "--health-address", f"127.0.0.1:{port}",
        "--agent-image", "vpnctl:test",
        "--default-service-type", "ClusterIP",
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:

        async def healthz() -> bool:
            try:
                async with (
                    aiohttp.ClientSession() as s,
                    s.get(f"http://127.0.0.1:{port}/healthz") as r,
                ):
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await aeventually(healthz, timeout=30, interval=0.2, what="vpnctl run /healthz")
        # A tenant whose apiserver is nowhere (a closed port on loopback): the real tenant
        # side says so, the service side is built all the same.
        await create_tenant(kube, namespace, "cli", nodes=1, kubeconfig=False)
        await create_kubeconfig_secret(
            kube, namespace, "cli", text=_kubeconfig("https://127.0.0.1:1")
        )
        tunnel = await wait_condition(
            kube,
            namespace,
            "cli",
            "AgentInstalled",
            status="False",
            reason="TenantUnreachable",
            timeout=30,
        )
        assert tunnel["status"]["conditions"]
        await wait_condition(kube, namespace, "cli", "PKIReady", status="True", timeout=10)
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
            metrics = await r.text()
        assert "vpnctl_reconciles_total" in metrics
        assert "vpnctl_certificate_expiry_timestamp_seconds" in metrics
        assert "vpnctl_leader 1.0" in metrics
        lease = await kube.get(LEASE, "vpnctl-controller", namespace)
        assert lease is not None
        assert lease["spec"]["holderIdentity"] == "cli-replica"

        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 20)
        assert code == 0
        print(f"\nvpnctl run stopped {time.monotonic() - started:.2f}s after SIGTERM")
        lease = await kube.get(LEASE, "vpnctl-controller", namespace)
        assert lease is not None
        assert not lease["spec"].get("holderIdentity")  # handed back
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        assert proc.stderr is not None
        log = (await proc.stderr.read()).decode(errors="replace")
        if os.environ.get("VPNCTL_SHOW_LOG"):
            print(log)
    assert "Traceback" not in log
    assert "event=controller_stopped" in log


def _kubeconfig(server: str) -> str:
    from tests.support.capi import kubeconfig_text

    return kubeconfig_text("cli", server=server)
