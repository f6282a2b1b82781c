"""One HTTPS latency/throughput measurement, run inside a network namespace.

`ip netns exec NS python -m bench.httpbench URL --ca CA` prints one JSON object: the
latency distribution of COUNT sequential GETs on one kept-alive connection, of FRESH
GETs each on a new TCP+TLS connection, and the time to stream one large body (BIG_URL).
Sequential on purpose: it measures the path, not the server's concurrency. With
`--concurrency N --duration S` it also runs N clients at once, each on its own kept-alive
connection, for S seconds: requests per second and the latency distribution
(`concurrent`). On this 2-core machine that figure includes the client's and the target's
own CPU, so only ratios between paths of one run mean anything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import statistics
import sys
import time
from collections.abc import Sequence

import aiohttp


def _quantiles(samples: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def q(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]

    return {
        "p50_ms": q(0.5) * 1000,
        "p90_ms": q(0.9) * 1000,
        "p99_ms": q(0.99) * 1000,
        "mean_ms": statistics.fmean(ordered) * 1000,
    }


async def _measure(args: argparse.Namespace) -> dict[str, object]:
    ctx = ssl.create_default_context(cafile=args.ca)
    timeout = aiohttp.ClientTimeout(total=60)
    out: dict[str, object] = {}
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ctx, limit=1), timeout=timeout
    ) as session:
        async with session.get(args.url) as r:  # warm-up: connection and TLS
            await r.read()
        lat = []
        for _ in range(args.count):
            t = time.perf_counter()
            async with session.get(args.url) as r:
                await r.read()
                r.raise_for_status()
            lat.append(time.perf_counter() - t)
        out["keepalive"] = _quantiles(lat)
        if args.big_url:
            t = time.perf_counter()
            async with session.get(args.big_url) as r:
                body = await r.read()
                r.raise_for_status()
            secs = time.perf_counter() - t
            mbps = len(body) / secs / 1e6
            out["stream"] = {"bytes": len(body), "seconds": secs, "mb_per_s": mbps}
    fresh = []
    for _ in range(args.fresh):
        t = time.perf_counter()
        async with (
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=ctx, force_close=True), timeout=timeout
            ) as session,
            session.get(args.url) as r,
        ):
            await r.read()
            r.raise_for_status()
        fresh.append(time.perf_counter() - t)
    out["fresh"] = _quantiles(fresh)
    if args.concurrency:
        out["concurrent"] = await _concurrent(args, ctx, timeout)
    return out


async def _concurrent(
    args: argparse.Namespace, ctx: ssl.SSLContext, timeout: aiohttp.ClientTimeout
) -> dict[str, float]:
    lat: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ctx, limit=args.concurrency), timeout=timeout
    ) as session:

        async def client(until: float) -> None:
            nonlocal errors
            while time.perf_counter() < until:
                t = time.perf_counter()
                try:
                    async with session.get(args.url) as r:
                        await r.read()
                        r.raise_for_status()
                except (aiohttp.ClientError, TimeoutError):
                    errors += 1
                    continue
                lat.append(time.perf_counter() - t)

        start = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for _ in range(args.concurrency):
                tg.create_task(client(start + args.duration))
        elapsed = time.perf_counter() - start
    if not lat:
        raise SystemExit(
            f"no request to {args.url} succeeded in {args.duration}s ({errors} failed)"
        )
    return {"clients": args.concurrency, "rps": len(lat) / elapsed, "errors": errors,
            **_quantiles(lat)}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.httpbench")
    p.add_argument("url")
    p.add_argument("--ca", required=True)
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--fresh", type=int, default=30)
    p.add_argument("--big-url", default=None)
    p.add_argument("--concurrency", type=int, default=0, help="clients at once (0: skip)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds of concurrent load")
    args = p.parse_args(argv)
    print(json.dumps(asyncio.run(_measure(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
