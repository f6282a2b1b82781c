"""The netns tier's HTTPS target, served inside a built underlay, probed over HTTPS.

No tunnel here: the target on a node is fetched from the node's own namespace. The
point is that what the data-plane tests and the bench read through the tunnel is what
the target sends (every numbered line, in order), and that the lab's probes tell OK
from FAIL against it.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import certs
from tests.netns.nsutil import NETNS_TIER
from tests.support.polling import aeventually
from vpnctl.lab import netns
from vpnctl.lab.address_plan import LabPlan, NodePlan, make_plan
from vpnctl.lab.probe import probe_https
from vpnctl.lab.underlay import build_underlay, destroy_underlay
from vpnctl.testenv.https_target import line

pytestmark = NETNS_TIER

NAME = "target-1"
LINES = 100_000


class Target:
    """`python -m vpnctl.testenv.https_target ...` inside a namespace, its log in a file."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc = proc
        self.log = log

    @classmethod
    async def start(cls, ns: str, argv: list[str], *, log: Path) -> Target:
        with log.open("wb") as f:
            proc = await asyncio.create_subprocess_exec(
                *netns.exec_argv(ns, [sys.executable, "-m", "vpnctl.testenv.https_target", *argv]),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=f,
                stderr=f,
            )
        target = cls(proc, log)
        try:
            await target.wait_listening()
        except BaseException:
            await target.stop()
            raise
        return target

    async def wait_listening(self, timeout: float = 30.0) -> None:
        def listening() -> bool:
            if "event=target_listening" in self.log.read_text():
                return True
            assert self.proc.returncode is None, f"target exited:\n{self.log.read_text()}"
            return False

        await aeventually(
            listening, what="the target listening", timeout=timeout, diag=self.log.read_text
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
    target: Target
    url: str
    tmp: Path


@pytest.fixture
async def scene(tmp_path: Path) -> AsyncIterator[Scene]:
    plan = make_plan(prefix="vt" + secrets.token_hex(3), nodes=1)
    node = plan.nodes[0]
    now = datetime.now(UTC)
    ca = certs.new_ca(common_name="targets", now=now, lifetime=timedelta(hours=1))
    issued = certs.new_server_cert(ca, common_name=NAME, now=now, lifetime=timedelta(hours=1),
                                   ip_addresses=[node.internal_ip])  # fmt: skip
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    (tmp_path / "tls.crt").write_bytes(issued.cert_pem)
    (tmp_path / "tls.key").write_bytes(issued.key_pem)
    (tmp_path / "tls.key").chmod(0o600)
    target: Target | None = None
    try:
        await build_underlay(plan)
        target = await Target.start(
            node.ns,
            ["--listen", node.kubelet_address, "--name", NAME,
             "--cert", str(tmp_path / "tls.crt"), "--key", str(tmp_path / "tls.key")],
            log=tmp_path / "target.log",
        )  # fmt: skip
        yield Scene(plan=plan, node=node, ca=str(tmp_path / "ca.crt"), target=target,
                    url=f"https://{node.kubelet_address}", tmp=tmp_path)  # fmt: skip
    finally:
        if target is not None:
            await target.stop()
        await destroy_underlay(plan)


async def test_streams_every_numbered_line_in_order(scene: Scene) -> None:
    out = scene.tmp / "lines.txt"
    result = await probe_https(scene.node.ns, f"{scene.url}/lines?count={LINES}", ca=scene.ca,
                               timeout=60, expect_lines=LINES, output=str(out))  # fmt: skip
    assert result.ok, result
    body = out.read_bytes()
    assert result.bytes == len(body)
    assert body == "".join(line(NAME, k) + "\n" for k in range(LINES)).encode()


async def test_what_makes_a_probe_of_it_fail(scene: Scene) -> None:
    ns, base = scene.node.ns, scene.url
    health = await probe_https(ns, f"{base}/healthz", ca=scene.ca, count=3)
    assert health.ok, health
    assert health.latency_ms is not None
    assert health.bytes == 3 * len(b"ok")

    missing = await probe_https(ns, f"{base}/nope", ca=scene.ca)
    assert (missing.ok, missing.error) == (False, "http 404")
    bad_count = await probe_https(ns, f"{base}/lines?count=x", ca=scene.ca)
    assert (bad_count.ok, bad_count.error) == (False, "http 400")
    short = await probe_https(ns, f"{base}/lines?count=3", ca=scene.ca, expect_lines=4)
    assert (short.ok, short.error) == (False, "lines: got 3 want 4")

    # A CA that did not sign the target's certificate: TLS fails, the probe says so.
    other = certs.new_ca(common_name="other", now=datetime.now(UTC), lifetime=timedelta(hours=1))
    (scene.tmp / "other.crt").write_bytes(other.cert_pem)
    wrong_ca = await probe_https(ns, f"{base}/healthz", ca=str(scene.tmp / "other.crt"))
    assert not wrong_ca.ok
    assert wrong_ca.error is not None
    assert wrong_ca.error.startswith("tls:"), wrong_ca

    # No tunnel, so the apiserver namespace has no way to the node.
    from_api = await probe_https(scene.plan.api_ns, f"{base}/healthz", ca=scene.ca, timeout=3)
    assert (from_api.ok, from_api.error) == (False, "unreachable")


async def test_stops_cleanly_on_sigterm(scene: Scene) -> None:
    assert await scene.target.stop() == 0
    assert f"event=target_stopped name={NAME}" in scene.target.log.read_text()
    gone = await probe_https(scene.node.ns, f"{scene.url}/healthz", ca=scene.ca)
    assert (gone.ok, gone.error) == (False, "refused")
