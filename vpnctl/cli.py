"""The `vpnctl` command line: the controller (`run`), the lab and status tables.

Sub-commands import their implementation lazily so `vpnctl lab` does not pay for
the Kubernetes client and `vpnctl run` does not pay for the lab.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from telemetry.logs import FORMATS, LEVELS, configure_logging
from vpnctl import __version__

LOG_DEFAULTS = {"log_level": "INFO", "log_format": "logfmt"}


def _logging_options() -> argparse.ArgumentParser:
    """--log-level and --log-format, accepted before or after the sub-command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level", default=argparse.SUPPRESS, choices=LEVELS, type=str.upper,
        help="DEBUG, INFO, WARNING or ERROR (default: INFO)",
    )  # fmt: skip
    common.add_argument(
        "--log-format", default=argparse.SUPPRESS, choices=FORMATS,
        help="one record a line, logfmt or JSON (default: logfmt)",
    )  # fmt: skip
    return common


def _parser() -> argparse.ArgumentParser:
    common = _logging_options()
    p = argparse.ArgumentParser(
        prog="vpnctl",
        description="Reverse connectivity from hosted Kubernetes control planes to their "
        "tenants' worker nodes: the controller, its status tables and the local lab.",
        parents=[common],
    )
    p.add_argument("--version", action="version", version=f"vpnctl {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)

    lab = sub.add_parser("lab", help="the local miniature of the whole system", parents=[common])
    labsub = lab.add_subparsers(dest="lab_cmd", required=True)
    up = labsub.add_parser(
        "up", help="build the lab and print the connectivity table", parents=[common]
    )
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--proto", choices=["udp", "tcp"], default="udp")
    up.add_argument("--state-dir", default=None)
    up.add_argument("--prefix", default="vlab", help="namespace prefix ([a-z0-9]{1,8})")
    up.add_argument(
        "--node-cert-lifetime",
        default=None,
        help="the lab controller's --node-cert-lifetime (e.g. 3m: each node renews its "
        "certificate every 2 minutes; default: the controller's)",
    )
    st = labsub.add_parser(
        "status", help="print the connectivity table of a running lab", parents=[common]
    )
    st.add_argument("--state-dir", default=None)
    st.add_argument("--prefix", default="vlab")
    down = labsub.add_parser("down", help="remove everything the lab made", parents=[common])
    down.add_argument("--state-dir", default=None)
    down.add_argument("--prefix", default="vlab")

    from vpnctl.controller.cli import add_run_arguments, add_status_arguments

    run = sub.add_parser("run", help="the controller (in the service cluster)", parents=[common])
    add_run_arguments(run)
    status = sub.add_parser(
        "status", help="tables of the Tunnels and their nodes", parents=[common]
    )
    add_status_arguments(status)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = _parser().parse_args(argv)
    # Not set_defaults(): parents share their actions, so a default set on the top
    # parser would also be written by every sub-parser, over a value given before it.
    for dest, default in LOG_DEFAULTS.items():
        if not hasattr(args, dest):
            setattr(args, dest, default)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(level=args.log_level, fmt=args.log_format)
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
