"""Small async helpers around the `ip` command, for building the lab.

The lab drives iproute2 and iptables as subprocesses rather than netlink: the
agent owns netlink (`agent.netlink`), and building the lab with a different tool
means a bug there cannot hide itself by also having set the scene. Every helper
is idempotent where the kernel allows it (`replace`, "already exists" tolerated),
so a half-built lab can be built again or torn down.

Nothing here ever touches the root namespace: every mutating command names the
namespace it acts in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Sequence

from vpnctl.lab.address_plan import lab_namespace_re

log = logging.getLogger(__name__)

DEFAULT_COMMAND_TIMEOUT = 30.0


class LabError(RuntimeError):
    """A command the lab ran failed; the message has the command, exit code and stderr."""

    def __init__(self, message: str, *, argv: Sequence[str] = (), returncode: int | None = None,
                 stderr: str = "") -> None:  # fmt: skip
        super().__init__(message)
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr


def exec_argv(ns: str | None, argv: Sequence[str]) -> list[str]:
    """ARGV run inside namespace NS (`ip netns exec NS ...`), or as is when NS is None."""
    if ns is None:
        return list(argv)
    return ["ip", "netns", "exec", ns, *argv]


async def run(
    *argv: str,
    ns: str | None = None,
    check: bool = True,
    timeout: float = DEFAULT_COMMAND_TIMEOUT,
) -> str:
    """Run ARGV (inside NS if given) and return its stdout.

    Raises LabError with the command, exit code and stderr when it fails and CHECK
    is set, or when it outlives TIMEOUT (it is killed first).
    """
    cmd = exec_argv(ns, argv)
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise LabError(
            f"command timed out after {timeout:g}s: {' '.join(cmd)}", argv=cmd
        ) from None
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    stdout = out.decode(errors="replace")
    stderr = err.decode(errors="replace").strip()
    if check and proc.returncode != 0:
        raise LabError(
            f"command failed (exit {proc.returncode}): {' '.join(cmd)}: {stderr or '(no stderr)'}",
            argv=cmd,
            returncode=proc.returncode,
            stderr=stderr,
        )
    return stdout


async def ip(*argv: str, ns: str | None = None, check: bool = True) -> str:
    """`ip [-n NS] ARGV...` (uses `-n`, which is cheaper than `ip netns exec`)."""
    if ns is None:
        return await run("ip", *argv, check=check)
    return await run("ip", "-n", ns, *argv, check=check)


# --- namespaces -----------------------------------------------------------------------


async def list_namespaces() -> list[str]:
    """Names of all named network namespaces (`ip netns list`)."""
    out = await run("ip", "netns", "list")
    # Lines look like "name (id: 3)" or just "name".
    return [line.split()[0] for line in out.splitlines() if line.strip()]


async def list_lab_namespaces(prefix: str) -> list[str]:
    """Namespaces that a lab with PREFIX made (strict match: `<prefix>-wan`, `-n3`, ...)."""
    pattern = lab_namespace_re(prefix)
    return sorted(n for n in await list_namespaces() if pattern.fullmatch(n))


async def ns_exists(name: str) -> bool:
    return name in await list_namespaces()


async def add_netns(name: str) -> None:
    """Create namespace NAME with `lo` up; an existing one is kept."""
    if not await ns_exists(name):
        try:
            await run("ip", "netns", "add", name)
        except LabError as e:
            if "File exists" not in e.stderr:
                raise
    await ip("link", "set", "lo", "up", ns=name)


async def delete_netns(name: str) -> None:
    """Delete namespace NAME; one that is already gone is fine.

    Deleting a namespace destroys the interfaces in it (a veth takes its peer along),
    but not the processes: kill those first (`kill_netns_processes`).
    """
    try:
        await run("ip", "netns", "delete", name)
    except LabError as e:
        if not await ns_exists(name):
            return
        raise LabError(f"cannot delete namespace {name}: {e}", argv=e.argv,
                       returncode=e.returncode, stderr=e.stderr) from e  # fmt: skip


async def netns_pids(name: str) -> list[int]:
    """PIDs of processes whose network namespace is NAME; none if NAME is gone."""
    out = await run("ip", "netns", "pids", name, check=False)
    return [int(tok) for tok in out.split() if tok.isdigit()]


async def kill_netns_processes(name: str, *, grace: float = 3.0) -> list[int]:
    """SIGTERM every process inside NAME, SIGKILL what remains after GRACE seconds.

    Returns the PIDs that were signalled. Polls with a deadline; never sleeps blindly.
    """
    pids = await netns_pids(name)
    if not pids:
        return []
    log.info("event=netns_kill ns=%s pids=%s", name, ",".join(map(str, pids)))
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while True:
        remaining = await netns_pids(name)
        if not remaining:
            return pids
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.05)
    log.warning("event=netns_kill_forced ns=%s pids=%s", name, ",".join(map(str, remaining)))
    _signal_all(remaining, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while await netns_pids(name):
        if time.monotonic() >= deadline:
            raise LabError(
                f"processes {remaining} in namespace {name} survived SIGKILL for 5s; "
                "look for a process stuck in the kernel (D state) with `ps -o pid,stat,cmd`"
            )
        await asyncio.sleep(0.05)
    return pids


def _signal_all(pids: Sequence[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


# --- links ------------------------------------------------------------------------------


async def link_exists(name: str, *, ns: str) -> bool:
    out = await ip("-o", "link", "show", "dev", name, ns=ns, check=False)
    return bool(out.strip())


async def add_veth(*, ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
    """A veth pair with end NAME_A in NS_A and NAME_B in NS_B, both up.

    The pair is created inside NS_A with its peer placed directly in NS_B, so it
    never exists in the root namespace. An existing NAME_A in NS_A is kept.
    """
    if not await link_exists(name_a, ns=ns_a):
        await ip("link", "add", name_a, "type", "veth", "peer", "name", name_b,
                 "netns", ns_b, ns=ns_a)  # fmt: skip
    await set_up(name_a, ns=ns_a)
    await set_up(name_b, ns=ns_b)


async def add_bridge(name: str, *, ns: str) -> None:
    """A bridge NAME in NS, up; STP off, so ports forward at once."""
    if not await link_exists(name, ns=ns):
        await ip("link", "add", name, "type", "bridge", "stp_state", "0", ns=ns)
    await set_up(name, ns=ns)


async def set_master(port: str, *, bridge: str, ns: str) -> None:
    await ip("link", "set", port, "master", bridge, ns=ns)


async def set_up(name: str, *, ns: str) -> None:
    await ip("link", "set", name, "up", ns=ns)


# --- addresses, routes, sysctls --------------------------------------------------------------


async def replace_address(dev: str, cidr: str, *, ns: str) -> None:
    """Address CIDR (e.g. 198.18.0.1/24) on DEV in NS; idempotent."""
    await ip("addr", "replace", cidr, "dev", dev, ns=ns)


async def replace_route(dst: str, *, ns: str, via: str | None = None,
                        dev: str | None = None) -> None:  # fmt: skip
    """Route DST (a CIDR or `default`) in NS, via a gateway and/or out of a device."""
    argv = ["route", "replace", dst]
    if via is not None:
        argv += ["via", via]
    if dev is not None:
        argv += ["dev", dev]
    await ip(*argv, ns=ns)


async def route_get(dst: str, *, ns: str) -> str | None:
    """`ip route get DST` in NS: the route line, or None when there is no route."""
    try:
        out = await ip("route", "get", dst, ns=ns)
    except LabError:
        return None
    return out.strip() or None


async def set_sysctl(key: str, value: str, *, ns: str) -> None:
    """`sysctl -w KEY=VALUE` inside NS (net.* sysctls are per namespace)."""
    await run("sysctl", "-q", "-w", f"{key}={value}", ns=ns)


async def get_sysctl(key: str, *, ns: str) -> str:
    return (await run("sysctl", "-n", key, ns=ns)).strip()
