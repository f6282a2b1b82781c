"""Data-path benchmark: the tunnel against the direct path, UDP against TCP, with and without loss.

For each transport it brings up the lab's data plane (one node) and measures, in the
same run and side by side, HTTPS to the HTTPS target on the node's kubelet address
(`vpnctl.testenv.https_target`: /healthz, and /lines for one large chunked body):

* `direct`: from the tenant's router namespace, on the node's own LAN (no tunnel) —
  the floor any tunnel is compared with;
* `tunnel`: from the apiserver namespace, through openvpn, the way the hosted
  apiserver reaches a kubelet;
* `tunnel, 2% loss`: the same with 2% of the server's underlay packets dropped in both
  directions (iptables `statistic`; netem is not available here). This is where TCP
  over TCP hurts.

Ratios are computed within one run only, because this machine is noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import secrets
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vpnctl.lab import netns
from vpnctl.lab.address_plan import make_plan
from vpnctl.lab.dataplane import DataPlane, prepare_dataplane, start_dataplane
from vpnctl.lab.underlay import build_underlay, destroy_underlay

LOSS = 0.02
STREAM_LINES = 100_000


async def _httpbench(ns: str, dp: DataPlane, *, count: int, fresh: int) -> dict[str, Any]:
    node = dp.plan.nodes[0]
    url = f"{dp.node_target_url(node)}/healthz"
    big = f"{dp.node_target_url(node)}/lines?count={STREAM_LINES}"
    out = await netns.run(
        sys.executable, "-m", "bench.httpbench", url, "--ca", str(dp.target_ca_path),
        "--count", str(count), "--fresh", str(fresh), "--big-url", big,
        ns=ns, timeout=600,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out)
    return result


async def _set_loss(dp: DataPlane, probability: float | None) -> None:
    ns = dp.plan.srv_ns
    for chain, flag in (("INPUT", "-i"), ("OUTPUT", "-o")):
        rule = [chain, flag, "eth0", "-m", "statistic", "--mode", "random",
                "--probability", str(probability or LOSS), "-j", "DROP"]  # fmt: skip
        if probability is None:
            await netns.run("iptables", "-D", *rule, ns=ns, check=False)
        else:
            await netns.run("iptables", "-A", *rule, ns=ns)


async def bench_transport(proto: str, *, count: int, fresh: int) -> dict[str, Any]:
    plan = make_plan(prefix=f"vb{secrets.token_hex(3)}", nodes=1)
    with tempfile.TemporaryDirectory(prefix="vpnctl-bench-") as tmp:
        dp = prepare_dataplane(plan=plan, proto=proto, base=Path(tmp))
        await build_underlay(plan)
        try:
            await start_dataplane(dp)
            results = {
                "direct": await _httpbench(plan.rtr_ns, dp, count=count, fresh=fresh),
                "tunnel": await _httpbench(plan.api_ns, dp, count=count, fresh=fresh),
            }
            await _set_loss(dp, LOSS)
            try:
                results["tunnel_loss"] = await _httpbench(plan.api_ns, dp, count=count, fresh=fresh)
            finally:
                await _set_loss(dp, None)
            return results
        finally:
            dp.stop_all()
            await destroy_underlay(plan)


def _row(label: str, r: dict[str, Any], base: dict[str, Any]) -> str:
    ka, fr, st = r["keepalive"], r["fresh"], r["stream"]
    ratio = ka["p50_ms"] / base["keepalive"]["p50_ms"]
    return (
        f"| {label} | {ka['p50_ms']:.2f} | {ka['p99_ms']:.2f} | {fr['p50_ms']:.2f} | "
        f"{st['seconds'] * 1000:.0f} ({st['mb_per_s']:.0f} MB/s) | {ratio:.2f}x |"
    )


async def run(*, count: int, fresh: int) -> str:
    lines = [
        f"Data path, {datetime.now(UTC):%Y-%m-%d}, {platform.node()}, "
        f"{platform.machine()}, kernel {platform.release()}; {count} keep-alive GETs, "
        f"{fresh} fresh TLS connections, one {STREAM_LINES:,}-line stream "
        f"(~{STREAM_LINES * 33 / 1e6:.1f} MB) per row.",
        "",
        "| path | keep-alive p50 ms | keep-alive p99 ms | new TLS conn p50 ms | "
        "100k-line stream ms | p50 vs direct |",
        "|---|---|---|---|---|---|",
    ]
    for proto in ("udp", "tcp"):
        r = await bench_transport(proto, count=count, fresh=fresh)
        lines.append(_row(f"direct (LAN, {proto} lab)", r["direct"], r["direct"]))
        lines.append(_row(f"tunnel over {proto}", r["tunnel"], r["direct"]))
        lines.append(_row(f"tunnel over {proto}, {LOSS:.0%} loss", r["tunnel_loss"], r["direct"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.dataplane", description=__doc__)
    p.add_argument("--count", type=int, default=300)
    p.add_argument("--fresh", type=int, default=30)
    p.add_argument("--out", default=None, help="also write the table to this file")
    args = p.parse_args(argv)
    table = asyncio.run(run(count=args.count, fresh=args.fresh))
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
