"""Probes that run *inside* a lab namespace: HTTPS requests and TCP connects.

The lab's orchestrator lives in the root namespace, and switching namespaces
(setns) moves only the calling thread, which asyncio and its resolver threads
would not honour. So each probe is a short subprocess,
`ip netns exec NS python -m vpnctl.lab.probe --json ...`, that prints one JSON
object: {"ok", "latency_ms", "error", "bytes"}. The async wrappers
(`probe_https`, `probe_post`, `probe_tcp`) start it, bound it with a
deadline and parse the answer into a ProbeResult.

Errors are short words meant for a table cell: `timeout`, `refused`,
`unreachable`, `tls: ...`, `http 503`, `lines: ...`.

Hostnames in the lab are IP addresses, so the servers' certificates carry IP SANs
and the CA given with --ca is the only trust root.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import re
import ssl
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from vpnctl.lab.netns import exec_argv

# Python start-up plus aiohttp import inside `ip netns exec`, on a busy 2-core box.
SUBPROCESS_MARGIN = 10.0
_LINE_NUMBER_RE = re.compile(rb" line (\d+)$")


@dataclass(frozen=True, kw_only=True)
class ProbeResult:
    ok: bool
    latency_ms: float | None = None  # median over the attempts; None when none succeeded
    error: str | None = None
    bytes: int = 0
    rate: bool = False  # a stream: the table shows bytes / latency, not the latency

    @classmethod
    def from_json(cls, text: str) -> ProbeResult:
        data = json.loads(text)
        latency = data.get("latency_ms")
        return cls(
            ok=bool(data["ok"]),
            latency_ms=None if latency is None else float(latency),
            error=data.get("error"),
            bytes=int(data.get("bytes", 0)),
        )


# --- async wrappers (run in the orchestrator, root namespace) ----------------------------------


async def probe_https(
    ns: str,
    url: str,
    *,
    ca: str,
    timeout: float = 5.0,
    count: int = 1,
    expect_lines: int | None = None,
    output: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    python: str = sys.executable,
) -> ProbeResult:
    """GET URL COUNT times from inside NS, trusting only CA; ok on HTTP 200 every time.

    With EXPECT_LINES, the body must be that many lines ending in consecutive
    `line <k>` numbers (a pod's log in the lab, `vpnctl.testenv.https_target`'s /lines in
    the netns tier). With OUTPUT, the last body is written to that file.
    """
    argv = ["https-get", url, "--ca", ca, "--count", str(count), "--timeout", str(timeout)]
    if expect_lines is not None:
        argv += ["--expect-lines", str(expect_lines)]
    if output is not None:
        argv += ["--output", output]
    argv += _client_cert_args(cert, key)
    return await _run_probe(ns, argv, python=python, deadline=timeout * count)


async def probe_post(
    ns: str,
    url: str,
    *,
    ca: str,
    body: object,
    timeout: float = 5.0,
    count: int = 1,
    cert: str | None = None,
    key: str | None = None,
    python: str = sys.executable,
) -> ProbeResult:
    """POST BODY as JSON to URL COUNT times from inside NS; ok on any 2xx every time.

    With a client certificate this is an API request, e.g. a server-side dry-run create
    that the apiserver's admission webhooks must allow.
    """
    argv = ["https-post", url, "--ca", ca, "--count", str(count), "--timeout", str(timeout),
            "--body", json.dumps(body)]  # fmt: skip
    argv += _client_cert_args(cert, key)
    return await _run_probe(ns, argv, python=python, deadline=timeout * count)


async def probe_tcp(
    ns: str, host: str, port: int, *, timeout: float = 3.0, python: str = sys.executable
) -> ProbeResult:
    """Open (and close) a TCP connection to HOST:PORT from inside NS."""
    argv = ["tcp-connect", f"{host}:{port}", "--timeout", str(timeout)]
    return await _run_probe(ns, argv, python=python, deadline=timeout)


def _client_cert_args(cert: str | None, key: str | None) -> list[str]:
    if (cert is None) != (key is None):
        raise ValueError("give both cert and key for a client certificate, or neither")
    return [] if cert is None or key is None else ["--cert", cert, "--key", key]


async def _run_probe(ns: str, argv: list[str], *, python: str, deadline: float) -> ProbeResult:
    cmd = exec_argv(ns, [python, "-m", "vpnctl.lab.probe", "--json", *argv])
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(deadline + SUBPROCESS_MARGIN):
            out, err = await proc.communicate()
    except TimeoutError:
        return ProbeResult(ok=False, error="timeout")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    try:
        return ProbeResult.from_json(out.decode().strip().splitlines()[-1])
    except (ValueError, KeyError, IndexError):
        detail = err.decode(errors="replace").strip().splitlines()
        last = detail[-1] if detail else f"exit {proc.returncode}"
        return ProbeResult(ok=False, error=f"probe failed: {last}")


# --- the probe itself (runs inside the namespace) ------------------------------------------


def _client_ssl(ca: str, cert: str | None, key: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    if cert is not None and key is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def describe_error(exc: BaseException) -> str:
    """A few words for a table cell."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"tls: {exc.certificate_error}"
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return f"tls: {exc}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        # Also what a TLS 1.3 server's refusal of our client certificate looks like.
        return "disconnected"
    os_error = getattr(exc, "os_error", None) if isinstance(exc, aiohttp.ClientOSError) else None
    os_error = os_error or (exc if isinstance(exc, OSError) else None)
    if isinstance(os_error, OSError) and os_error.errno is not None:
        return {
            errno.ECONNREFUSED: "refused",
            errno.ENETUNREACH: "unreachable",
            errno.EHOSTUNREACH: "host unreachable",
            errno.ECONNRESET: "reset",
        }.get(os_error.errno, f"{errno.errorcode.get(os_error.errno, '?')}")
    return f"{type(exc).__name__}: {exc}"


def check_lines(body: bytes, expect: int) -> str | None:
    """None when BODY is EXPECT lines numbered consecutively, else what is wrong."""
    lines = body.splitlines()
    if len(lines) != expect:
        return f"lines: got {len(lines)} want {expect}"
    previous: int | None = None
    for i, line in enumerate(lines):
        m = _LINE_NUMBER_RE.search(line)
        if m is None:
            return f"lines: line {i} has no number"
        k = int(m.group(1))
        if previous is not None and k != previous + 1:
            return f"lines: line {i} is number {k} after {previous}"
        previous = k
    return None


async def _https(args: argparse.Namespace) -> dict[str, Any]:
    ctx = _client_ssl(args.ca, args.cert, args.key)
    latencies: list[float] = []
    total = 0
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ctx, limit=1), timeout=timeout
        ) as session:
            for _ in range(args.count):
                t0 = time.perf_counter()
                if args.cmd == "https-post":
                    resp_cm = session.post(
                        args.url, data=args.body, headers={"Content-Type": "application/json"}
                    )
                else:
                    resp_cm = session.get(args.url)
                async with resp_cm as resp:
                    body = await resp.read()
                    elapsed = time.perf_counter() - t0
                total += len(body)
                if args.output is not None:
                    await asyncio.to_thread(Path(args.output).write_bytes, body)
                if not _status_ok(args.cmd, resp.status):
                    reason = _api_reason(body) if args.cmd == "https-post" else ""
                    error = f"http {resp.status}" + (f": {reason}" if reason else "")
                    return _result(ok=False, error=error, bytes_=total)
                expect = args.expect_lines
                problem = None if expect is None else check_lines(body, expect)
                if problem is not None:
                    return _result(ok=False, error=problem, bytes_=total)
                latencies.append(elapsed * 1000)
    except Exception as e:  # every failure becomes a cell in the table
        return _result(ok=False, error=describe_error(e), bytes_=total, latencies=latencies)
    return _result(ok=True, bytes_=total, latencies=latencies)


def _status_ok(cmd: str, status: int) -> bool:
    return 200 <= status < 300 if cmd == "https-post" else status == 200


def _api_reason(body: bytes) -> str:
    """The message of a Kubernetes Status answer, shortened for a table cell."""
    try:
        message = str(json.loads(body).get("message") or "")
    except (ValueError, AttributeError):
        return ""
    return message if len(message) <= 160 else message[:157] + "..."


async def _tcp(args: argparse.Namespace) -> dict[str, Any]:
    host, _, port = args.target.rpartition(":")
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(args.timeout):
            _, writer = await asyncio.open_connection(host, int(port))
    except Exception as e:
        return _result(ok=False, error=describe_error(e))
    elapsed = time.perf_counter() - t0
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return _result(ok=True, latencies=[elapsed * 1000])


def _result(
    *, ok: bool, error: str | None = None, bytes_: int = 0, latencies: Sequence[float] = ()
) -> dict[str, Any]:
    median = round(statistics.median(latencies), 3) if latencies else None
    return asdict(ProbeResult(ok=ok, latency_ms=median, error=error, bytes=bytes_))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vpnctl.lab.probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object (the default)")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("https-get", "https-post"):
        s = sub.add_parser(name)
        s.add_argument("url")
        s.add_argument("--ca", required=True, help="the only trusted CA (PEM)")
        s.add_argument("--cert", default=None, help="client certificate (PEM)")
        s.add_argument("--key", default=None, help="client key (PEM)")
        s.add_argument("--count", type=_positive_int, default=1)
        s.add_argument("--timeout", type=float, default=5.0, help="seconds per request")
        s.add_argument("--expect-lines", type=int, default=None)
        s.add_argument("--output", default=None, help="write the last body to this file")
        s.add_argument("--body", default="{}", help="JSON request body (https-post)")
    t = sub.add_parser("tcp-connect")
    t.add_argument("target", help="HOST:PORT")
    t.add_argument("--timeout", type=float, default=3.0)
    return p


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    result = asyncio.run(_tcp(args) if args.cmd == "tcp-connect" else _https(args))
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
