"""`vpnctl lab up|status|down`: the miniature of the whole system, its table, its removal.

`up` builds the lab of `vpnctl.lab.system`: a service cluster with vpnctl running
against it, a tenant as Cluster API would create it, its hosted kube-apiserver with the
apiserver sidecar, the tenant's OpenVPN server pod, and worker nodes with the node agent
(its certificate obtained through the CSR flow), kubelet and webhook stand-ins, all in
network namespaces. It shows progress while it builds, then prints vpnctl's own status
table and the connectivity table (`vpnctl.lab.checks`): per node, `kubectl logs`, a
webhook and the kubelet, each through the real tenant apiserver and the tunnel, OK or
FAIL with its latency. It exits non-zero on any FAIL. A lab that is already up is taken
down first, so `make lab` can be run again and again.

`status` prints the tables of a running lab; `down` removes everything the lab made:
processes, namespaces, state. The root namespace is never touched.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from vpnctl.lab import netns
from vpnctl.lab.address_plan import DEFAULT_PREFIX, PlanError, make_plan

DEFAULT_STATE_ROOT = Path("/run/vpnctl-lab")


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _state_dir(args: argparse.Namespace) -> Path:
    prefix = getattr(args, "prefix", DEFAULT_PREFIX)
    return Path(args.state_dir) if args.state_dir else DEFAULT_STATE_ROOT / prefix


async def run(args: argparse.Namespace) -> int:
    from vpnctl.lab.lab_state import LabUpError
    from vpnctl.testenv import BuildError, ClusterStartError

    try:
        if args.lab_cmd == "up":
            return await up(
                state=_state_dir(args), nodes=args.nodes, proto=args.proto, prefix=args.prefix,
                node_cert_lifetime=args.node_cert_lifetime,
            )  # fmt: skip
        if args.lab_cmd == "status":
            return await status(state=_state_dir(args))
        if args.lab_cmd == "down":
            return await down(state=_state_dir(args), prefix=args.prefix)
    except (netns.LabError, LabUpError, ClusterStartError, BuildError, PlanError, OSError) as e:
        _say(f"vpnctl lab {args.lab_cmd}: {e}")
        return 1
    raise SystemExit(f"unknown lab command {args.lab_cmd}")


async def up(
    *,
    state: Path,
    nodes: int,
    proto: str,
    prefix: str = DEFAULT_PREFIX,
    node_cert_lifetime: str | None = None,
) -> int:
    from vpnctl.lab.checks import report
    from vpnctl.lab.system import bring_up

    if node_cert_lifetime is not None:
        from vpnctl.controller.cli import node_cert_lifetime as checked_lifetime

        try:
            checked_lifetime(node_cert_lifetime)
        except ValueError as exc:
            _say(f"vpnctl lab up: --node-cert-lifetime: {exc}")
            return 2
    plan = make_plan(prefix=prefix, nodes=nodes)
    if await netns.list_lab_namespaces(prefix) or state.exists():
        _say("lab: a previous lab is still there; taking it down first")
        await down(state=state, prefix=prefix)
    try:
        lab = await bring_up(plan=plan, state=state, proto=proto, say=_say,
                             node_cert_lifetime=node_cert_lifetime)  # fmt: skip
    except BaseException:
        _say(f"lab: bring-up failed; logs are in {state / 'logs'} and {state}/*/logs; "
             f"`vpnctl lab down --prefix {prefix}` removes what was built")  # fmt: skip
        raise
    _say("lab: ready; probing through the tunnel")
    return await report(lab)


async def status(*, state: Path) -> int:
    from vpnctl.lab.checks import report
    from vpnctl.lab.lab_state import Lab

    try:
        lab = Lab.open(state)
    except (FileNotFoundError, KeyError, json.JSONDecodeError):
        _say(f"lab: no lab state in {state}; run `vpnctl lab up`")
        return 1
    for name, c in sorted(lab.kubelet_status().get("containers", {}).items()):
        _say(f"lab: {name}: pid={c.get('pid')} restarts={c.get('restarts')} "
             f"ready={c.get('ready')} log={c.get('log')}")  # fmt: skip
    return await report(lab)


async def down(*, state: Path, prefix: str = DEFAULT_PREFIX) -> int:
    from vpnctl.lab.system import tear_down

    with contextlib.suppress(FileNotFoundError, KeyError, json.JSONDecodeError):
        prefix = json.loads((state / "lab.json").read_text())["prefix"]
    killed, names, left = await tear_down(state=state, prefix=prefix)
    _say(f"lab: down ({killed} process(es) stopped, {len(names)} namespace(s) removed)")
    if left:
        _say(f"lab: still present: {', '.join(left)}")
        return 1
    return 0
