"""`python -m agent <role> --config FILE`: run one agent role until SIGTERM.

Exit codes: 0 after a graceful stop, 2 for an unusable config file (the message says
which field and what to do), 1 when a task died (logged as `event=task_died`), so the
process manager restarts the agent. Bad certificate material, desired state or CRL do
*not* end the process: the role reports them on /readyz and waits for a fix.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys

from prometheus_client import CollectorRegistry

from agent.agent_clock import SYSTEM_CLOCK
from agent.apiserver_slot import wait_for_slot
from agent.config_reader import InputError
from agent.event_log import EventLog, setup_logging
from agent.netlink import Kernel, PyRoute2Kernel
from agent.role_config import ROLES, ClientRoleConfig, Role, load_role_config
from agent.roles.apiserver import ApiserverRole
from agent.roles.client_role import ClientRole
from agent.roles.node import NodeRole
from agent.roles.server import ServerRole
from agent.roles.task_frame import install_signal_handlers
from agent.tundev import TunDeviceError, ensure_tun_device
from telemetry.command_line import HelpFormatter, add_version_flag
from telemetry.logs import FORMATS, LEVELS

log = logging.getLogger("agent")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m agent",
        description="vpnctl agent: the process beside openvpn (node, server or apiserver "
        "role). Runs until SIGTERM; exit 2 for an unusable config file, 1 when a task died.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("role", choices=ROLES, help="which role to run")
    p.add_argument(
        "--config", required=True, metavar="FILE",
        help="the role's JSON config file (required)",
    )  # fmt: skip
    p.add_argument(
        "--log-level", default="INFO", choices=LEVELS, type=str.upper,
        help="DEBUG, INFO, WARNING or ERROR",
    )  # fmt: skip
    p.add_argument(
        "--log-format", default="logfmt", choices=FORMATS,
        help="one record a line on stderr, logfmt or JSON",
    )  # fmt: skip
    add_version_flag(p, name="vpnctl-agent")
    return p


async def _open_kernel() -> Kernel:
    return await PyRoute2Kernel.open()


async def run(role: Role, config_path: str) -> int:
    events = EventLog(logger=log, role=role)
    try:
        cfg = load_role_config(config_path, role=role)
    except InputError as e:
        events.error("config_invalid", path=config_path, problems=" | ".join(e.problems))
        print(str(e), file=sys.stderr)
        return 2
    registry = CollectorRegistry(auto_describe=True)
    rng = random.Random()
    stop = asyncio.Event()
    install_signal_handlers(stop, events=events)
    runner: ServerRole | ClientRole
    if role == "server":
        assert not isinstance(cfg, ClientRoleConfig)
        runner = ServerRole(
            cfg=cfg, registry=registry, clock=SYSTEM_CLOCK, rng=rng, kernel_factory=_open_kernel
        )
    else:
        assert isinstance(cfg, ClientRoleConfig)
        if role == "node":
            runner = NodeRole(
                cfg=cfg, registry=registry, clock=SYSTEM_CLOCK, rng=rng, kernel_factory=_open_kernel
            )
        else:  # re-reads its routes from the file (agent/roles/apiserver.py)
            slotted = await wait_for_slot(
                cfg, clock=SYSTEM_CLOCK, events=events, stopping=stop.is_set
            )
            if slotted is None:
                return 0
            cfg = slotted
            runner = ApiserverRole(
                cfg=cfg, registry=registry, clock=SYSTEM_CLOCK, rng=rng,
                kernel_factory=_open_kernel, config_path=config_path,
            )  # fmt: skip
    try:  # every role's openvpn needs it; without it openvpn says why itself, too
        events("tun_device", result=ensure_tun_device())
    except TunDeviceError as e:
        events.error("tun_device_missing", error=str(e))
    try:
        await runner.run(stop)
    except BaseExceptionGroup as eg:  # a task died: already logged with its name
        events.error("exiting", reason="task died", error=f"{eg!r}")
        return 1
    except OSError as e:  # e.g. the health port is taken: the message says what to do
        events.error("exiting", reason="startup failed", error=str(e))
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(level=args.log_level, fmt=args.log_format)
    return asyncio.run(run(args.role, args.config))


if __name__ == "__main__":
    sys.exit(main())
