"""Small probes and commands of ``vpnctl.testenv.cluster``: free ports, HTTP(S) status
of a component, and short commands with a timeout."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import ipaddress
import socket
import ssl
from collections.abc import Sequence

from vpnctl.testenv.procs import environ_without_proxies


class ClusterStartError(RuntimeError):
    """A control-plane component did not come up; carries the tail of its log."""


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports free right now on ``host`` (in our namespace)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


def first_service_ip(cidr: str) -> str:
    return str(next(ipaddress.ip_network(cidr).hosts()))


def https_status(
    host: str, port: int, path: str, context: ssl.SSLContext, timeout: float = 2.0
) -> int:
    conn = http.client.HTTPSConnection(host, port, context=context, timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def http_get(host: str, port: int, path: str, timeout: float = 2.0) -> tuple[int, str]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


async def run_short(argv: Sequence[str], timeout: float = 30.0) -> tuple[int, str]:
    """Run a short command; return (exit code, stdout+stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=environ_without_proxies(),
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return -1, f"timed out after {timeout}s"
    return proc.returncode or 0, out.decode(errors="replace")


async def run_checked(argv: Sequence[str]) -> None:
    code, out = await run_short(argv)
    if code != 0:
        raise ClusterStartError(f"{' '.join(argv)} exited {code}: {out.strip()}")


async def https_probe(host: str, port: int, path: str, context: ssl.SSLContext) -> str | None:
    """None when ``GET path`` answers 200, else what it answered or why it failed."""
    try:
        status = await asyncio.to_thread(https_status, host, port, path, context)
    except (OSError, http.client.HTTPException) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if status == 200 else f"HTTP {status}"
