"""The `vpnctl` command line: the controller (`run`), the lab and status tables.

Sub-commands import their implementation lazily so `vpnctl lab` does not pay for
the Kubernetes client and `vpnctl run` does not pay for the lab.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from telemetry.command_line import HelpFormatter, add_version_flag
from telemetry.logs import FORMATS, LEVELS, configure_logging

# Flags every sub-command takes, before or after its name (kubectl's global flags). Their
# defaults are filled in after parsing: see parse_args.
GLOBAL_DEFAULTS: dict[str, str | None] = {
    "log_level": "INFO",
    "log_format": "logfmt",
    "kubeconfig": None,
    "context": None,
}
KUBE_FLAGS = ("kubeconfig", "context")
# Everything `vpnctl lab` does needs root: network namespaces, veths, routes, mounts.
LAB_NEEDS_ROOT = (
    "vpnctl lab: needs root (it creates network namespaces, links and mounts); "
    "run it as root, e.g. `sudo make lab`"
)


def _global_options(*, kube: bool) -> argparse.ArgumentParser:
    """--log-level and --log-format (and, where a cluster is talked to, --kubeconfig and
    --context), accepted before or after the sub-command."""
    common = argparse.ArgumentParser(add_help=False)
    logs = common.add_argument_group("logging")
    logs.add_argument(
        "--log-level", default=argparse.SUPPRESS, choices=LEVELS, type=str.upper,
        help="DEBUG, INFO, WARNING or ERROR (default: INFO)",
    )  # fmt: skip
    logs.add_argument(
        "--log-format", default=argparse.SUPPRESS, choices=FORMATS,
        help="one record a line on stderr, logfmt or JSON (default: logfmt)",
    )  # fmt: skip
    if kube:
        where = common.add_argument_group("cluster (run and status)")
        where.add_argument(
            "--kubeconfig", default=argparse.SUPPRESS, metavar="FILE",
            help="kubeconfig of the service cluster (default: $KUBECONFIG, else in-cluster "
            "when run in a pod, else ~/.kube/config)",
        )  # fmt: skip
        where.add_argument(
            "--context", default=argparse.SUPPRESS,
            help="kubeconfig context (default: the kubeconfig's current-context)",
        )  # fmt: skip
    return common


def _parser() -> argparse.ArgumentParser:
    kube = _global_options(kube=True)
    local = _global_options(kube=False)

    def sub_parser(
        parent: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        *,
        help: str,
        description: str | None = None,
        common: argparse.ArgumentParser = local,
    ) -> argparse.ArgumentParser:
        return parent.add_parser(
            name, help=help, description=description or help, parents=[common],
            formatter_class=HelpFormatter,
        )  # fmt: skip

    p = argparse.ArgumentParser(
        prog="vpnctl",
        description="Reverse connectivity from hosted Kubernetes control planes to their "
        "tenants' worker nodes: the controller, its status tables and the local lab.",
        parents=[kube],
        formatter_class=HelpFormatter,
    )
    add_version_flag(p, name="vpnctl")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    lab = sub_parser(
        sub, "lab", help="the local miniature of the whole system (needs root)",
        description="The local miniature of the whole system: a service cluster running "
        "vpnctl, a tenant with its hosted apiserver, and worker nodes, in network "
        "namespaces. Needs root.",
    )  # fmt: skip
    labsub = lab.add_subparsers(dest="lab_cmd", required=True, metavar="COMMAND")
    up = sub_parser(
        labsub, "up", help="build the lab and print the connectivity table",
        description="Build the lab (taking a previous one down first) and print vpnctl's "
        "status and the connectivity table; exit 1 if any check fails.",
    )  # fmt: skip
    up.add_argument("--nodes", type=int, default=3, help="tenant worker nodes")
    up.add_argument("--proto", choices=["udp", "tcp"], default="udp", help="the tunnel's transport")
    _add_lab_place(up)
    up.add_argument(
        "--node-cert-lifetime",
        default=None,
        help="the lab controller's --node-cert-lifetime, at least 5m (e.g. 6m: each node "
        "renews its certificate about every 2.3 minutes; default: the controller's)",
    )
    st = sub_parser(labsub, "status", help="print the connectivity table of a running lab")
    _add_lab_place(st)
    down = sub_parser(labsub, "down", help="remove everything the lab made")
    _add_lab_place(down)

    from vpnctl.controller.cli import add_run_arguments, add_status_arguments

    run = sub_parser(
        sub, "run", help="the controller (in the service cluster)", common=kube,
        description="Run the controller until SIGTERM: it follows Cluster API Clusters and "
        "Machines and the Tunnels, and serves /healthz, /readyz and /metrics.",
    )  # fmt: skip
    add_run_arguments(run)
    status = sub_parser(
        sub, "status", help="tables of the Tunnels and their nodes", common=kube,
        description="The Tunnels and their nodes as the controller last wrote them "
        "(Tunnel status), as tables or as the objects (-o json|yaml).",
    )  # fmt: skip
    add_status_arguments(status)
    return p


def _add_lab_place(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state-dir", default=None, metavar="DIR",
        help="where the lab keeps its state and logs (default: /run/vpnctl-lab/PREFIX)",
    )  # fmt: skip
    p.add_argument(
        "--prefix", default="vlab",
        help="prefix of the lab's network namespaces ([a-z0-9]{1,8})",
    )  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = _parser().parse_args(argv)
    # Not set_defaults(): parents share their actions, so a default set on the top
    # parser would also be written by every sub-parser, over a value given before it.
    for dest, default in GLOBAL_DEFAULTS.items():
        if not hasattr(args, dest):
            setattr(args, dest, default)
    return args


def lab_refusal(args: argparse.Namespace, *, euid: int) -> str | None:
    """Why `vpnctl lab` won't start with ARGS as user EUID, or None."""
    if euid != 0:
        return LAB_NEEDS_ROOT
    given = [f"--{flag}" for flag in KUBE_FLAGS if getattr(args, flag, None) is not None]
    if given:
        return (
            f"vpnctl lab: {' and '.join(given)} are for `run` and `status`; "
            "the lab makes its own clusters"
        )
    return None


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
        refusal = lab_refusal(args, euid=os.geteuid())
        if refusal is not None:
            print(refusal, file=sys.stderr)
            return 2
        return asyncio.run(lab_cli.run(args))
    if args.cmd in ("run", "status"):
        from vpnctl.controller import cli as controller_cli

        command = controller_cli.run if args.cmd == "run" else controller_cli.status
        return asyncio.run(command(args))
    raise SystemExit(f"unknown command {args.cmd}")
