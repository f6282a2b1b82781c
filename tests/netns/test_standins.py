"""The kubelet and webhook stand-ins, served inside a built underlay, probed over HTTPS.

No tunnel yet: the node's kubelet is fetched from the node's own namespace and
the pod's webhook from its node. The point is that the stand-ins speak what the
apiserver expects (chunked container logs with nothing lost, AdmissionReview v1)
and that the probes the lab table is made of tell OK from FAIL.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

import pytest

import certs
from tests.netns.nsutil import NETNS_TIER
from tests.support.polling import aeventually
from vpnctl.lab import netns
from vpnctl.lab.address_plan import LabPlan, NodePlan, make_plan
from vpnctl.lab.probe import probe_admission, probe_https
from vpnctl.lab.standins import DEFAULT_LOG_LINES, DENY_LABEL, log_line
from vpnctl.lab.underlay import build_underlay, destroy_underlay

pytestmark = NETNS_TIER

POD = "web-0"


class StandIn:
    """`python -m vpnctl.lab.standins ...` inside a namespace, its log in a file."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc = proc
        self.log = log

    @classmethod
    async def start(cls, ns: str, argv: list[str], *, log: Path) -> StandIn:
        with log.open("wb") as f:
            proc = await asyncio.create_subprocess_exec(
                *netns.exec_argv(ns, [sys.executable, "-m", "vpnctl.lab.standins", *argv]),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=f,
                stderr=f,
            )
        standin = cls(proc, log)
        try:
            await standin.wait_listening()
        except BaseException:
            await standin.stop()
            raise
        return standin

    async def wait_listening(self, timeout: float = 30.0) -> None:
        def listening() -> bool:
            if "event=standin_listening" in self.log.read_text():
                return True
            assert self.proc.returncode is None, f"stand-in exited:\n{self.log.read_text()}"
            return False

        await aeventually(
            listening, what="the stand-in listening", timeout=timeout, diag=self.log.read_text
        )

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                async with asyncio.timeout(10):
                    return await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
        return await self.proc.wait()


@dataclass(frozen=True, kw_only=True)
class Scene:
    plan: LabPlan
    node: NodePlan
    ca: str
    kubelet: StandIn
    webhook: StandIn
    tmp: Path


def _write_server_cert(ca: certs.Issued, tmp: Path, name: str, ip: IPv4Address) -> list[str]:
    issued = certs.new_server_cert(
        ca, common_name=name, now=datetime.now(UTC), lifetime=timedelta(hours=1), ip_addresses=[ip]
    )
    cert, key = tmp / f"{name}.crt", tmp / f"{name}.key"
    cert.write_bytes(issued.cert_pem)
    key.write_bytes(issued.key_pem)
    key.chmod(0o600)
    return ["--cert", str(cert), "--key", str(key)]


@pytest.fixture
async def scene(tmp_path: Path) -> AsyncIterator[Scene]:
    plan = make_plan(prefix="vt" + secrets.token_hex(3), nodes=1)
    node = plan.nodes[0]
    ca = certs.new_ca(common_name="lab-ca", now=datetime.now(UTC), lifetime=timedelta(hours=1))
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    started: list[StandIn] = []
    try:
        await build_underlay(plan)
        kubelet = await StandIn.start(
            node.ns,
            ["kubelet", "--listen", node.kubelet_address, "--name", node.name,
             *_write_server_cert(ca, tmp_path, node.name, node.internal_ip)],
            log=tmp_path / "kubelet.log",
        )  # fmt: skip
        started.append(kubelet)
        webhook = await StandIn.start(
            node.pod_ns,
            ["webhook", "--listen", node.webhook_address,
             *_write_server_cert(ca, tmp_path, "webhook", node.pod_ip)],
            log=tmp_path / "webhook.log",
        )  # fmt: skip
        started.append(webhook)
        yield Scene(plan=plan, node=node, ca=str(tmp_path / "ca.crt"), kubelet=kubelet,
                    webhook=webhook, tmp=tmp_path)  # fmt: skip
    finally:
        for standin in started:
            await standin.stop()
        await destroy_underlay(plan)


def _expected_log(node: str, pod: str, ks: range) -> bytes:
    return "".join(log_line(node, pod, k) + "\n" for k in ks).encode()


async def test_kubelet_streams_all_log_lines_in_order(scene: Scene) -> None:
    url = f"{scene.node.kubelet_url}/containerLogs/default/{POD}/main?follow=false"
    out = scene.tmp / "logs.txt"
    result = await probe_https(scene.node.ns, url, ca=scene.ca, timeout=60,
                               expect_lines=DEFAULT_LOG_LINES, output=str(out))  # fmt: skip
    assert result.ok, result
    body = out.read_bytes()
    assert result.bytes == len(body)
    assert body == _expected_log(scene.node.name, POD, range(DEFAULT_LOG_LINES))

    tail = await probe_https(scene.node.ns, f"{url}&tailLines=5", ca=scene.ca, output=str(out))
    assert tail.ok, tail
    last_five = range(DEFAULT_LOG_LINES - 5, DEFAULT_LOG_LINES)
    assert out.read_bytes() == _expected_log(scene.node.name, POD, last_five)

    limited = await probe_https(scene.node.ns, f"{url}&limitBytes=7", ca=scene.ca)
    assert (limited.ok, limited.bytes) == (True, 7)


async def test_kubelet_endpoints_and_what_makes_a_probe_fail(scene: Scene) -> None:
    base = scene.node.kubelet_url
    ns = scene.node.ns
    health = await probe_https(ns, f"{base}/healthz", ca=scene.ca, count=3)
    assert health.ok, health
    assert health.latency_ms is not None
    assert health.bytes == 3 * len(b"ok")

    out = scene.tmp / "body.json"
    pods = await probe_https(ns, f"{base}/pods", ca=scene.ca, output=str(out))
    assert pods.ok, pods
    pod_list = json.loads(out.read_text())
    assert pod_list["kind"] == "PodList"
    assert pod_list["items"][0]["spec"]["nodeName"] == scene.node.name
    stats = await probe_https(ns, f"{base}/stats/summary", ca=scene.ca, output=str(out))
    assert stats.ok, stats
    assert json.loads(out.read_text())["node"]["nodeName"] == scene.node.name

    missing = await probe_https(ns, f"{base}/nope", ca=scene.ca)
    assert (missing.ok, missing.error) == (False, "http 404")
    bad_query = await probe_https(ns, f"{base}/containerLogs/a/b/c?tailLines=x", ca=scene.ca)
    assert (bad_query.ok, bad_query.error) == (False, "http 400")
    short = await probe_https(ns, f"{base}/containerLogs/a/b/c?tailLines=3", ca=scene.ca,
                              expect_lines=4)  # fmt: skip
    assert (short.ok, short.error) == (False, "lines: got 3 want 4")

    # A CA that did not sign the kubelet's certificate: TLS fails, the probe says so.
    other = certs.new_ca(common_name="other", now=datetime.now(UTC), lifetime=timedelta(hours=1))
    (scene.tmp / "other.crt").write_bytes(other.cert_pem)
    wrong_ca = await probe_https(ns, f"{base}/healthz", ca=str(scene.tmp / "other.crt"))
    assert not wrong_ca.ok
    assert wrong_ca.error is not None
    assert wrong_ca.error.startswith("tls:"), wrong_ca

    # No tunnel yet, so the apiserver namespace has no way to the kubelet.
    from_api = await probe_https(scene.plan.api_ns, f"{base}/healthz", ca=scene.ca, timeout=3)
    assert (from_api.ok, from_api.error) == (False, "unreachable")


async def test_webhook_allows_unless_labelled_deny(scene: Scene) -> None:
    url = f"{scene.node.webhook_url}/validate"
    allowed = await probe_admission(scene.node.ns, url, ca=scene.ca, count=2)
    assert allowed.ok, allowed
    assert allowed.latency_ms is not None

    labelled = await probe_admission(scene.node.ns, url, ca=scene.ca,
                                     labels={DENY_LABEL: "false", "app": "x"})  # fmt: skip
    assert labelled.ok, labelled

    denied = await probe_admission(scene.node.ns, url, ca=scene.ca, labels={DENY_LABEL: "true"})
    assert not denied.ok
    assert denied.error is not None
    assert denied.error.startswith("admission: denied: ")
    assert f"{DENY_LABEL}=true" in denied.error

    health = await probe_https(scene.node.ns, f"{scene.node.webhook_url}/healthz", ca=scene.ca)
    assert health.ok, health


async def test_standins_stop_cleanly_on_sigterm(scene: Scene) -> None:
    assert await scene.kubelet.stop() == 0
    assert await scene.webhook.stop() == 0
    assert "event=standin_stopped kind=kubelet" in scene.kubelet.log.read_text()
    gone = await probe_https(scene.node.ns, f"{scene.node.kubelet_url}/healthz", ca=scene.ca)
    assert (gone.ok, gone.error) == (False, "refused")


async def test_kubelet_can_require_a_client_certificate(scene: Scene) -> None:
    ca = certs.new_ca(common_name="lab-ca", now=datetime.now(UTC), lifetime=timedelta(hours=1))
    client_ca = scene.tmp / "client-ca.crt"
    client_ca.write_bytes(ca.cert_pem)
    client = certs.new_client_cert(ca, common_name="apiserver", now=datetime.now(UTC),
                                   lifetime=timedelta(hours=1))  # fmt: skip
    (scene.tmp / "client.crt").write_bytes(client.cert_pem)
    (scene.tmp / "client.key").write_bytes(client.key_pem)
    address = f"{scene.node.internal_ip}:10251"
    strict = await StandIn.start(
        scene.node.ns,
        ["kubelet", "--listen", address, "--client-ca", str(client_ca), "--cert",
         str(scene.tmp / f"{scene.node.name}.crt"), "--key",
         str(scene.tmp / f"{scene.node.name}.key")],
        log=scene.tmp / "strict.log",
    )  # fmt: skip
    try:
        url = f"https://{address}/healthz"
        anonymous = await probe_https(scene.node.ns, url, ca=scene.ca)
        # TLS 1.3 refuses the missing certificate after the handshake: the client sees the
        # server hang up, or a reset when its own data was still in flight.
        assert anonymous.ok is False
        assert anonymous.error in ("disconnected", "reset"), anonymous.error
        with_cert = await probe_https(scene.node.ns, url, ca=scene.ca,
                                      cert=str(scene.tmp / "client.crt"),
                                      key=str(scene.tmp / "client.key"))  # fmt: skip
        assert with_cert.ok, with_cert
    finally:
        assert await strict.stop() == 0
