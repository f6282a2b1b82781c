"""Konnectivity, the peer path of the benchmark, proven end to end: a request through a
tenant apiserver's node proxy reaches an HTTPS target only through konnectivity.

The scene, in two namespaces made here and joined by one veth (198.18.0.0/30):

* ``api`` (198.18.0.1): etcd and kube-apiserver, started with
  ``--egress-selector-config-file`` whose ``cluster`` selection is the konnectivity-server's
  Unix socket (gRPC, and again in http-connect mode); the server itself, its agent port on
  198.18.0.1 with mTLS;
* ``node`` (198.18.0.2, and 198.19.7.10 on its loopback): a konnectivity-agent dialling
  the server, and the HTTPS target on 198.19.7.10:10250, the address a Node object gives
  as its kubelet's.

``api`` has no route to 198.19.7.10 (the test checks it), so the only way a node-proxy
request can reach the target is the agent's connection.

Why the node proxy rather than a Service or pod proxy: it is what the benchmark measures
(kubelet requests), and it needs no kubelet, only a Node object with an address and a
kubelet port in its status, which the admin can write.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

import pytest

import certs
from tests.netns.nsutil import NETNS_TIER, NsEnd, ip, netns_pair, run_in
from tests.support.polling import aeventually
from vpnctl.testenv import Binaries, KubectlError, TenantCluster, ensure_binaries
from vpnctl.testenv.https_target import line
from vpnctl.testenv.konnectivity import (
    KonnectivityAgent,
    KonnectivityPKI,
    KonnectivityServer,
    Mode,
    write_egress_selector,
    write_konnectivity_pki,
)
from vpnctl.testenv.procs import ManagedProcess

pytestmark = [pytest.mark.kube, *NETNS_TIER]

BEHIND_AGENT = "198.19.7.10"  # only on the node namespace's loopback
KUBELET_PORT = 10250
NODE = "node-1"
AGENT = "agent-1"


@dataclass(kw_only=True)
class Scene:
    api: NsEnd
    node: NsEnd
    cluster: TenantCluster
    server: KonnectivityServer
    agents: list[KonnectivityAgent]  # every agent started; the fixture stops them
    binaries: Binaries
    pki: KonnectivityPKI
    workdir: Path


async def _start_target(ns: str, tmp: Path) -> ManagedProcess:
    """The HTTPS target at BEHIND_AGENT:10250, up when this returns."""
    now = datetime.now(UTC)
    ca = certs.new_ca(common_name="target-ca", now=now, lifetime=timedelta(hours=1))
    served = certs.new_server_cert(ca, common_name=NODE, now=now, lifetime=timedelta(hours=1),
                                   ip_addresses=[IPv4Address(BEHIND_AGENT)])  # fmt: skip
    (tmp / "target.crt").write_bytes(served.cert_pem)
    (tmp / "target.key").write_bytes(served.key_pem)
    proc = ManagedProcess(
        "target",
        [sys.executable, "-m", "vpnctl.testenv.https_target", "--name", NODE,
         "--listen", f"{BEHIND_AGENT}:{KUBELET_PORT}",
         "--cert", str(tmp / "target.crt"), "--key", str(tmp / "target.key")],
        log_path=tmp / "target.log",
        netns=ns,
    )  # fmt: skip
    proc.start()

    def listening() -> bool:
        proc.check_running()
        return "event=target_listening" in proc.log_path.read_text()

    await aeventually(listening, what="the HTTPS target listening", timeout=30,
                      diag=proc.log_tail)  # fmt: skip
    return proc


def _connect_error(ns: str, host: str, port: int) -> str:
    """What a TCP connect from ``ns`` to host:port says: 'connected' or the error."""
    code = (
        "import socket, sys\n"
        "try:\n"
        f"    socket.create_connection(({host!r}, {port}), timeout=3).close()\n"
        "    print('connected')\n"
        "except OSError as e:\n"
        "    print(type(e).__name__, e.errno)\n"
    )
    return run_in(ns, sys.executable, "-c", code).stdout.strip()


async def _node_proxy(cluster: TenantCluster, path: str) -> str:
    return await cluster.kubectl("get", "--raw", f"/api/v1/nodes/{NODE}/proxy/{path}",
                                 timeout=30)  # fmt: skip


async def _register_node(cluster: TenantCluster) -> None:
    """A Node object whose kubelet is the target: what the node proxy dials."""
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}
    await cluster.kubectl("create", "-f", "-", input=json.dumps(node))
    status = {
        "status": {
            "addresses": [{"type": "InternalIP", "address": BEHIND_AGENT}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": KUBELET_PORT}},
        }
    }
    await cluster.kubectl("patch", "node", NODE, "--subresource=status", "--type=merge",
                          "-p", json.dumps(status))  # fmt: skip


async def _start_agent(
    binaries: Binaries, tmp: Path, pki: KonnectivityPKI, api: NsEnd, node: NsEnd
) -> KonnectivityAgent:
    assert binaries.konnectivity_agent is not None
    return await KonnectivityAgent.launch(
        binary=binaries.konnectivity_agent, workdir=tmp / "konn-agent", pki=pki,
        agent_id=AGENT, server_host=str(api.addr.ip), netns=node.ns,
    )  # fmt: skip


@pytest.fixture(params=["grpc", "http-connect"])
async def scene(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Scene]:
    mode: Mode = request.param
    binaries = await asyncio.to_thread(ensure_binaries, with_konnectivity=True)
    assert binaries.konnectivity_server is not None
    with netns_pair("k", suffixes=("api", "nd")) as (api, node):
        ip("-n", node.ns, "addr", "add", f"{BEHIND_AGENT}/32", "dev", "lo")
        pki = write_konnectivity_pki(
            tmp_path / "konn-pki", server_addresses=[str(api.addr.ip)], agents=[AGENT]
        )
        target: ManagedProcess | None = None
        server: KonnectivityServer | None = None
        agents: list[KonnectivityAgent] = []
        cluster: TenantCluster | None = None
        try:
            target = await _start_target(node.ns, tmp_path)
            server = await KonnectivityServer.launch(
                binary=binaries.konnectivity_server, workdir=tmp_path / "konn-server",
                pki=pki, agent_address=str(api.addr.ip), netns=api.ns, mode=mode,
            )  # fmt: skip
            egress = write_egress_selector(tmp_path / "egress.yaml", server.uds, mode=mode)
            agents.append(await _start_agent(binaries, tmp_path, pki, api, node))
            await server.wait_ready()  # an agent is connected
            await agents[0].wait_ready()
            cluster = await TenantCluster.launch(
                tmp_path / "tenant", binaries, name="konn", netns=api.ns,
                bind_address=str(api.addr.ip),
                apiserver_extra_args=[f"--egress-selector-config-file={egress}"],
            )  # fmt: skip
            await _register_node(cluster)
            yield Scene(api=api, node=node, cluster=cluster, server=server, agents=agents,
                        binaries=binaries, pki=pki, workdir=tmp_path)  # fmt: skip
        finally:
            if cluster is not None:
                await cluster.stop()
            for agent in agents:
                await agent.stop()
            if server is not None:
                await server.stop()
            if target is not None:
                await target.stop()


async def test_node_proxy_reaches_the_target_only_through_konnectivity(scene: Scene) -> None:
    # No route from the apiserver's namespace to the target; the agent's side has one.
    assert _connect_error(scene.api.ns, BEHIND_AGENT, KUBELET_PORT).startswith("OSError 101")
    assert _connect_error(scene.node.ns, BEHIND_AGENT, KUBELET_PORT) == "connected"

    assert await _node_proxy(scene.cluster, "healthz") == "ok"
    body = await _node_proxy(scene.cluster, "lines?count=5000")
    assert body.splitlines() == [line(NODE, k) for k in range(5000)]

    # Without the agent the same request fails: konnectivity was the path.
    await scene.agents[0].stop()

    async def refused() -> str | None:
        try:
            await _node_proxy(scene.cluster, "healthz")
        except KubectlError as exc:
            return exc.stderr or "failed"
        return None

    await aeventually(refused, what="node proxy failing with the agent stopped", timeout=30)

    # An agent started again is used again (the server keeps no stale backend).
    again = await _start_agent(scene.binaries, scene.workdir, scene.pki, scene.api, scene.node)
    scene.agents.append(again)
    await again.wait_ready()

    async def answered() -> bool:
        try:
            return await _node_proxy(scene.cluster, "healthz") == "ok"
        except KubectlError:
            return False

    await aeventually(answered, what="node proxy answering through the new agent", timeout=30)
