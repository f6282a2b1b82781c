"""An HTTPS target for the netns tier: something behind a node to dial through the tunnel.

The netns tier (tests/netns, bench/dataplane.py) proves the agents' data path without
Kubernetes, so nothing real listens behind the nodes. It needs an endpoint where the
hosted apiserver would dial into the tenant: a node's kubelet port (the server role
TCP-probes it; the tests GET it through the tunnel) and an address behind a node (where
a webhook or a pod would answer). This one process, started once per address, stands in
for both, and for nothing more:

* `GET /healthz` answers `ok`;
* `GET /lines?count=N` streams N numbered lines, chunked (`line(name, k)`, k = 0..N-1), so
  a reader on the far side of the tunnel can measure throughput and check that nothing
  was lost or reordered (`vpnctl.lab.probe.check_lines`); with `&every=S`, one line each
  S seconds, as a followed log (`kubectl logs -f`) trickles.

What it hides, so that no test reads more into a pass than it proves: it is not a
kubelet and not a webhook. It authenticates and authorises nobody (no client
certificates, no tokens, no SubjectAccessReview), has no pods, logs, exec, attach or
port-forward (so no SPDY or websocket upgrade, no long-lived bidirectional streams),
answers no AdmissionReview, and its certificate comes from a CA the fixture made, not
from a cluster. What crosses the tunnel here is plain HTTPS request/response and one
long chunked body; the full lab (`make lab`, real kubelets) proves the rest.

Run one with:
    python -m vpnctl.testenv.https_target --listen 198.19.0.11:10250 --cert C --key K --name node-1
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
import sys
from collections.abc import Sequence

from aiohttp import web

from telemetry.logs import configure_logging

log = logging.getLogger(__name__)

LINES_PER_CHUNK = 2_000
MAX_LINES = 10_000_000


def line(name: str, k: int) -> str:
    """Line K (0-based) of the target NAME's numbered stream, without the newline."""
    return f"{name} line {k:08d}"


def lines_count(raw: str | None) -> int:
    """The `count` query of /lines; ValueError with what to send instead."""
    try:
        count = int(raw) if raw is not None else -1
    except ValueError:
        count = -1
    if not 0 <= count <= MAX_LINES:
        raise ValueError(f"count={raw!r}: give ?count=N with 0 <= N <= {MAX_LINES}")
    return count


def target_app(*, name: str) -> web.Application:
    """/healthz and /lines?count=N[&every=S], the lines tagged with NAME."""

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def lines(request: web.Request) -> web.StreamResponse:
        try:
            count = lines_count(request.query.get("count"))
        except ValueError as e:
            raise web.HTTPBadRequest(text=f"{e}\n") from e
        try:
            every = float(request.query.get("every", "0"))
        except ValueError:
            every = -1.0
        if not 0 <= every <= 60:
            raise web.HTTPBadRequest(text="every=S: give seconds between lines, 0 to 60\n")
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        if every:
            for k in range(count):
                await resp.write(f"{line(name, k)}\n".encode())
                await asyncio.sleep(every)
            await resp.write_eof()
            return resp
        for first in range(0, count, LINES_PER_CHUNK):
            last = min(first + LINES_PER_CHUNK, count)
            await resp.write("".join(line(name, k) + "\n" for k in range(first, last)).encode())
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/lines", lines)
    return app


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"--listen {text!r} is not HOST:PORT")
    return host, int(port)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vpnctl.testenv.https_target", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--listen", type=parse_listen, required=True, help="HOST:PORT")
    p.add_argument("--cert", required=True, help="server certificate (PEM)")
    p.add_argument("--key", required=True, help="its private key (PEM)")
    p.add_argument("--name", default="target", help="written at the start of every line")
    return p


async def _amain(args: argparse.Namespace) -> int:
    host, port = args.listen
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(args.cert, args.key)
    except (OSError, ssl.SSLError) as e:
        log.error("event=target_tls_failed cert=%s key=%s error=%r", args.cert, args.key, str(e))
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(target_app(name=args.name), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=ctx, reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            log.error("event=target_listen_failed address=%s:%d error=%r", host, port, str(e))
            return 1
        log.info("event=target_listening name=%s address=%s:%d", args.name, host, port)
        await stop.wait()
    finally:
        await runner.cleanup()
    log.info("event=target_stopped name=%s address=%s:%d", args.name, host, port)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(level="INFO")
    return asyncio.run(_amain(args))


if __name__ == "__main__":
    sys.exit(main())
