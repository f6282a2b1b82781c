"""A real Prometheus (Debian's, the binary that comes with promtool) scrapes a real
controller registry and a server role's metrics over HTTP and evaluates the chart's own
alert rules.

This is the smallest honest "Prometheus has scraped vpnctl": the registries the
controller (ControllerMetrics) and the server role (ServerMetrics) build, each served by
the HealthServer the binaries use, on 127.0.0.1, with the job and namespace labels the
ServiceMonitor and PodMonitor give them; the rules ``helm template`` renders, with their
``for`` shortened to 1 s through the chart's values. It shows what the promtool tests
cannot: the exposition parses, the labels the rules select on line up with a scrape,
VpnctlNoLeader fires and resolves as ``vpnctl_leader`` changes, VpnctlNodeDisconnected
names the node whose tunnel is cut, and stopping the controller fires
VpnctlControllerDown. Waits are on the Prometheus API, never on the clock.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client import CollectorRegistry

from agent.roles.server_metrics import ServerMetrics
from telemetry.health import HealthServer
from tests.support.monitoring import NAMESPACE, prometheus_rule_groups, render_chart
from tests.support.polling import aeventually
from vpnctl.controller.metrics import ControllerMetrics

JOB = "vpnctl-metrics"  # the metrics Service's name: the job a ServiceMonitor gives
SERVERS_JOB = f"{NAMESPACE}/vpnctl-servers"  # what the PodMonitor gives
TENANT = "tenant-a"
FAST = {
    "monitoring": {
        "enabled": True,
        "prometheusRule": {
            "noLeaderFor": "1s",
            "controllerDownFor": "1s",
            "nodeDisconnectedFor": "1s",
        },
    }
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def prometheus(
    tmp_path: Path, controller_port: int, server_port: int, groups: list[dict[str, Any]]
) -> Iterator[str]:
    """Scrapes the controller as its ServiceMonitor would (job = the metrics Service, the
    controller's namespace) and a tenant's server pod as the PodMonitor would (job =
    "<namespace>/<PodMonitor>", the pod's namespace, which is the tenant's)."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed; scripts/install-system.sh installs it")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "rules.yaml")],
        "scrape_configs": [
            {
                "job_name": JOB,
                "scrape_timeout": "1s",
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{controller_port}"],
                        "labels": {"namespace": NAMESPACE},
                    }
                ],
            },
            {
                "job_name": SERVERS_JOB,
                "scrape_timeout": "1s",
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{server_port}"],
                        "labels": {"namespace": TENANT, "pod": "server-0"},
                    }
                ],
            },
        ],
    }
    (tmp_path / "prometheus.yaml").write_text(yaml.safe_dump(config))
    port = _free_port()
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yaml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def _query(http: aiohttp.ClientSession, api: str, promql: str) -> list[dict[str, Any]]:
    try:
        async with http.get(f"{api}/api/v1/query", params={"query": promql}) as resp:
            if resp.status != 200:
                return []
            body = json.loads(await resp.text())
    except aiohttp.ClientError:
        return []  # not listening yet
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


async def _firing(http: aiohttp.ClientSession, api: str, alert: str) -> bool:
    found = await _query(http, api, f'ALERTS{{alertname="{alert}", alertstate="firing"}}')
    return bool(found)


@pytest.fixture
async def server_pod() -> AsyncIterator[tuple[ServerMetrics, HealthServer]]:
    """A server role's metrics on the port its pod serves them on."""
    registry = CollectorRegistry()
    metrics = ServerMetrics(registry=registry)
    server = HealthServer(registry=registry, host="127.0.0.1")
    await server.start()
    try:
        yield metrics, server
    finally:
        await server.stop()


@pytest.fixture
async def controller() -> AsyncIterator[tuple[ControllerMetrics, HealthServer]]:
    registry = CollectorRegistry()
    metrics = ControllerMetrics(registry=registry)
    server = HealthServer(registry=registry, host="127.0.0.1")
    await server.start()
    try:
        yield metrics, server
    finally:
        await server.stop()


async def test_prometheus_scrapes_the_controller_and_its_alerts_fire(
    controller: tuple[ControllerMetrics, HealthServer],
    server_pod: tuple[ServerMetrics, HealthServer],
    tmp_path: Path,
) -> None:
    metrics, server = controller
    tunnels, pod = server_pod
    tunnels.node_connected.labels("server", "node-1").set(1)
    tunnels.node_connected.labels("server", "node-2").set(1)
    leading = [False]
    metrics.watch_leader(lambda: leading[0])
    groups = prometheus_rule_groups(await render_chart(FAST))
    with prometheus(tmp_path, server.port, pod.port, groups) as api:
        async with aiohttp.ClientSession() as http:
            diag = lambda: (tmp_path / "prometheus.log").read_text()[-2000:]  # noqa: E731

            async def scraped() -> list[dict[str, Any]]:
                return await _query(http, api, f'up{{job="{JOB}", namespace="{NAMESPACE}"}} == 1')

            started = time.monotonic()
            await aeventually(scraped, what="the controller scraped", timeout=30, diag=diag)
            print(f"\nfirst scrape seen {time.monotonic() - started:.1f}s after start")
            for series in ("vpnctl_leader", "vpnctl_build_info", "process_resident_memory_bytes"):
                assert await _query(http, api, series), series

            # Nobody leads: VpnctlNoLeader fires; a replica takes the lease: it resolves.
            async def no_leader() -> bool:
                return await _firing(http, api, "VpnctlNoLeader")

            started = time.monotonic()
            await aeventually(no_leader, what="VpnctlNoLeader firing", timeout=30, diag=diag)
            print(f"VpnctlNoLeader firing {time.monotonic() - started:.1f}s later (for: 1s)")
            leading[0] = True

            async def resolved() -> bool:
                return not await _firing(http, api, "VpnctlNoLeader")

            started = time.monotonic()
            await aeventually(resolved, what="VpnctlNoLeader resolved", timeout=30, diag=diag)
            print(f"VpnctlNoLeader resolved {time.monotonic() - started:.1f}s after leader is 1")
            assert not await _firing(http, api, "VpnctlControllerDown")

            # node-1 loses its tunnel: VpnctlNodeDisconnected names it and its tenant.
            assert not await _firing(http, api, "VpnctlNodeDisconnected")
            tunnels.node_connected.labels("server", "node-1").set(0)

            async def disconnected() -> list[dict[str, Any]]:
                return await _query(
                    http, api, 'ALERTS{alertname="VpnctlNodeDisconnected", alertstate="firing"}'
                )

            started = time.monotonic()
            alerts = await aeventually(
                disconnected, what="VpnctlNodeDisconnected firing", timeout=30, diag=diag
            )
            print(f"VpnctlNodeDisconnected firing {time.monotonic() - started:.1f}s after the cut")
            assert [(a["metric"]["namespace"], a["metric"]["node"]) for a in alerts] == [
                (TENANT, "node-1")
            ]

            # The controller stops: its target goes down and VpnctlControllerDown fires.
            await server.stop()

            async def down() -> bool:
                return await _firing(http, api, "VpnctlControllerDown")

            started = time.monotonic()
            await aeventually(down, what="VpnctlControllerDown firing", timeout=30, diag=diag)
            print(f"VpnctlControllerDown firing {time.monotonic() - started:.1f}s after the stop")
