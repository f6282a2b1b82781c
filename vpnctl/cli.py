"""The `vpnctl` command line: the controller (`run`), the lab and status tables.

Sub-commands import their implementation lazily so `vpnctl lab` does not pay for
the Kubernetes client and `vpnctl run` does not pay for the lab.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vpnctl", description=__doc__)
    p.add_argument("--log-level", default="INFO")
    sub = p.add_subparsers(dest="cmd", required=True)

    lab = sub.add_parser("lab", help="the local miniature of the whole system")
    labsub = lab.add_subparsers(dest="lab_cmd", required=True)
    up = labsub.add_parser("up", help="build the lab and print the connectivity table")
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--proto", choices=["udp", "tcp"], default="udp")
    up.add_argument("--state-dir", default=None)
    up.add_argument("--prefix", default="vlab", help="namespace prefix ([a-z0-9]{1,8})")
    st = labsub.add_parser("status", help="print the connectivity table of a running lab")
    st.add_argument("--state-dir", default=None)
    st.add_argument("--prefix", default="vlab")
    down = labsub.add_parser("down", help="remove everything the lab made")
    down.add_argument("--state-dir", default=None)
    down.add_argument("--prefix", default="vlab")

    from vpnctl.controller.cli import add_run_arguments, add_status_arguments

    run = sub.add_parser("run", help="the controller (in the service cluster)")
    add_run_arguments(run)
    status = sub.add_parser("status", help="tables of the Tunnels and their nodes")
    add_status_arguments(status)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    if args.cmd == "lab":
        try:
            from vpnctl.lab import cli as lab_cli
        except ModuleNotFoundError as e:
            if not (e.name or "").startswith("vpnctl.lab"):
                raise
            print(
                "vpnctl: error: the lab is not part of this installation (the wheel and the "
                "image leave it out); run it from a source checkout with `make lab`",
                file=sys.stderr,
            )
            return 2
        return asyncio.run(lab_cli.run(args))
    if args.cmd in ("run", "status"):
        from vpnctl.controller import cli as controller_cli

        command = controller_cli.run if args.cmd == "run" else controller_cli.status
        return asyncio.run(command(args))
    raise SystemExit(f"unknown command {args.cmd}")
