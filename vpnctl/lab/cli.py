"""`vpnctl lab up|status|down`: the local miniature, its connectivity table, its removal.

`up` builds the underlay (network namespaces only; nothing in the root namespace),
issues the tenant PKI, starts the agent roles and stand-ins as real processes, waits
until every agent is ready and prints one row per node: the kubelet, `kubectl logs`
(100,000 lines through the tunnel) and the webhook behind the node, each OK or FAIL with
its latency, measured from the apiserver's namespace. It exits non-zero on any FAIL.
A lab that is already up is taken down first, so `make lab` can be run again and again.

Where the bytes go is shown too: the route from the apiserver namespace to each node
and how much crossed its tun device while the table was measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from vpnctl.lab import netns
from vpnctl.lab.dataplane import DataPlane, kill_recorded, prepare_dataplane, start_dataplane
from vpnctl.lab.plan import LabPlan, NodePlan, make_plan
from vpnctl.lab.probe import probe_admission, probe_https
from vpnctl.lab.table import NodeRow, any_failed, render
from vpnctl.lab.underlay import build_underlay, destroy_underlay

DEFAULT_PREFIX = "vlab"
DEFAULT_STATE_ROOT = Path("/run/vpnctl-lab")
LOG_LINES = 100_000


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _state_dir(args: argparse.Namespace) -> Path:
    prefix = getattr(args, "prefix", DEFAULT_PREFIX)
    return Path(args.state_dir) if args.state_dir else DEFAULT_STATE_ROOT / prefix


async def run(args: argparse.Namespace) -> int:
    try:
        if args.lab_cmd == "up":
            return await up(
                state=_state_dir(args), nodes=args.nodes, proto=args.proto, prefix=args.prefix
            )
        if args.lab_cmd == "status":
            return await status(state=_state_dir(args))
        if args.lab_cmd == "down":
            return await down(state=_state_dir(args), prefix=args.prefix)
    except (netns.LabError, OSError) as e:
        _say(f"vpnctl lab {args.lab_cmd}: {e}")
        return 1
    raise SystemExit(f"unknown lab command {args.lab_cmd}")


async def up(*, state: Path, nodes: int, proto: str, prefix: str = DEFAULT_PREFIX) -> int:
    t0 = time.monotonic()
    plan = make_plan(prefix=prefix, nodes=nodes)
    if await netns.list_lab_namespaces(prefix) or state.exists():
        _say("lab: a previous lab is still there; taking it down first")
        await down(state=state, prefix=prefix)
    _say(f"lab: building the underlay ({len(plan.namespaces)} network namespaces)")
    await build_underlay(plan)
    try:
        _say("lab: issuing the tenant PKI and writing the role configs")
        dp = prepare_dataplane(plan=plan, proto=proto, base=state)
        (state / "lab.json").write_text(
            json.dumps({"prefix": plan.prefix, "nodes": nodes, "proto": proto}, indent=2)
        )
        _say(f"lab: starting openvpn server, apiserver client and {nodes} node agent(s) ({proto})")
        await start_dataplane(dp)
    except BaseException:
        _say("lab: bring-up failed; logs are in " + str(state))
        raise
    _say(f"lab: all agents ready after {time.monotonic() - t0:.1f}s; probing through the tunnel")
    return await _report(dp)


async def status(*, state: Path) -> int:
    try:
        meta = json.loads((state / "lab.json").read_text())
    except FileNotFoundError:
        _say(f"lab: no lab state in {state}; run `vpnctl lab up`")
        return 1
    plan = make_plan(prefix=meta["prefix"], nodes=int(meta["nodes"]))
    dp = _reopen(plan, state=state, proto=meta["proto"])
    return await _report(dp)


async def down(*, state: Path, prefix: str = DEFAULT_PREFIX) -> int:
    killed = kill_recorded(state)
    with contextlib.suppress(FileNotFoundError, KeyError, json.JSONDecodeError):
        prefix = json.loads((state / "lab.json").read_text())["prefix"]
    names = await netns.list_lab_namespaces(prefix)
    nodes = sum(1 for n in names if n.startswith(f"{prefix}-n")) or 1
    await destroy_underlay(make_plan(prefix=prefix, nodes=nodes))
    shutil.rmtree(state, ignore_errors=True)
    left = await netns.list_lab_namespaces(prefix)
    _say(f"lab: down ({len(killed)} process group(s) stopped, {len(names)} namespace(s) removed)")
    if left:
        _say(f"lab: still present: {', '.join(left)}")
        return 1
    return 0


def _reopen(plan: LabPlan, *, state: Path, proto: str) -> DataPlane:
    """A DataPlane view of a running lab, enough to probe it (no processes owned)."""
    import certs

    ca = certs.Issued(cert_pem=(state / "pki" / "kubelet-ca.pem").read_bytes(), key_pem=b"")
    from vpnctl.lab.dataplane import Pki

    pki = Pki(
        base=state / "pki",
        ca=ca,
        ca_path=state / "pki" / "ca.pem",
        tc_server=b"",
        server_cert=state / "pki" / "server.pem",
        server_key=state / "pki" / "server.key",
        server_tc=state / "pki" / "tc-server.key",
    )
    return DataPlane(
        proto=proto, base=state, plan=plan, pki=pki, serving_ca=ca,
        kubelet_ca=state / "pki" / "kubelet-ca.pem", agent_count=len(plan.nodes),
    )  # fmt: skip


async def _probe_node(dp: DataPlane, node: NodePlan) -> NodeRow:
    ca = str(dp.kubelet_ca)
    ns = dp.plan.api_ns
    kubelet, logs, webhook = await asyncio.gather(
        probe_https(ns, f"{node.kubelet_url}/healthz", ca=ca, count=5),
        probe_https(
            ns,
            f"{node.kubelet_url}/containerLogs/default/pod-{node.name}/app",
            ca=ca,
            expect_lines=LOG_LINES,
            timeout=20.0,
        ),
        probe_admission(ns, f"{node.webhook_url}/validate", ca=ca, count=5),
    )
    return NodeRow(
        node=node.name,
        internal_ip=str(node.internal_ip),
        tunnel_ip=str(node.tunnel_ip),
        kubelet=kubelet,
        logs=logs,
        webhook=webhook,
    )


async def _tun_bytes(ns: str) -> int:
    out = await netns.run("ip", "-n", ns, "-s", "-j", "link", "show", "tun0", check=False)
    try:
        stats: dict[str, Any] = json.loads(out)[0]["stats64"]
        return int(stats["rx"]["bytes"]) + int(stats["tx"]["bytes"])
    except (ValueError, LookupError, TypeError):
        return 0


async def _report(dp: DataPlane) -> int:
    before = await _tun_bytes(dp.plan.api_ns)
    rows = [await _probe_node(dp, n) for n in dp.plan.nodes]
    crossed = await _tun_bytes(dp.plan.api_ns) - before
    print(render(rows))
    first = dp.plan.nodes[0]
    route = await netns.route_get(str(first.internal_ip), ns=dp.plan.api_ns)
    print(
        f"\npath: from {dp.plan.api_ns}, `ip route get {first.internal_ip}` -> "
        f"{' '.join((route or 'no route').split())}; {crossed:,} bytes crossed tun0 while probing"
    )
    return 1 if any_failed(rows) else 0
