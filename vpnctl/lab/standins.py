"""Stand-ins for a kubelet and an admission webhook, until the lab runs real ones.

The apiserver dials *in* to exactly these two kinds of endpoint (DESIGN.md), so
they are what the lab's connectivity table has to prove reachable through the
tunnel. They speak the real protocols' shapes: HTTPS with an IP SAN certificate,
the kubelet's `/containerLogs` streamed chunked as a real kubelet does, and
AdmissionReview v1. Log lines are deterministic (`log_line`), so a reader on the
far side of the tunnel can check that nothing was lost or reordered.

Run one with:
    python -m vpnctl.lab.standins kubelet --listen 198.19.0.11:10250 --cert C --key K --name node-1
    python -m vpnctl.lab.standins webhook --listen 198.19.65.2:8443 --cert C --key K
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web

# The webhook's admission logic and the log lines' format moved to the real workloads
# (vpnctl.lab.realnode); the stand-ins answer the same way until they are removed.
from vpnctl.lab.realnode.admission_server import DENY_LABEL as DENY_LABEL
from vpnctl.lab.realnode.admission_server import admission_response as admission_response
from vpnctl.lab.realnode.workloads import log_line as log_line

log = logging.getLogger(__name__)

DEFAULT_LOG_LINES = 100_000
LINES_PER_CHUNK = 2_000


@dataclass(frozen=True, kw_only=True)
class PodRef:
    namespace: str
    name: str
    container: str = "main"


# --- kubelet ---------------------------------------------------------------------------------


def kubelet_app(
    *,
    node_name: str,
    log_lines: int = DEFAULT_LOG_LINES,
    pods: Sequence[PodRef] = (),
    follow_interval: float = 1.0,
) -> web.Application:
    """A kubelet stand-in: /healthz, /pods, /stats/summary, /containerLogs/{ns}/{pod}/{c}.

    Every container's log holds LOG_LINES lines `log_line(node_name, pod, k)`,
    k = 0..LOG_LINES-1; `follow=true` keeps appending one line per FOLLOW_INTERVAL.
    """
    if log_lines < 0:
        raise ValueError(f"log_lines must be >= 0, got {log_lines}")
    pod_list = tuple(pods) or (PodRef(namespace="default", name=f"standin-{node_name}"),)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def list_pods(_: web.Request) -> web.Response:
        items = [
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": p.name, "namespace": p.namespace},
                "spec": {"nodeName": node_name, "containers": [{"name": p.container}]},
                "status": {"phase": "Running"},
            }
            for p in pod_list
        ]
        return web.json_response(
            {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}
        )

    async def stats_summary(_: web.Request) -> web.Response:
        return web.json_response(
            {
                "node": {
                    "nodeName": node_name,
                    "cpu": {"usageNanoCores": 1_000_000},
                    "memory": {"workingSetBytes": 64 * 1024 * 1024},
                },
                "pods": [
                    {"podRef": {"name": p.name, "namespace": p.namespace}} for p in pod_list
                ],
            }
        )

    async def container_logs(request: web.Request) -> web.StreamResponse:
        pod = request.match_info["pod"]
        tail = _int_query(request, "tailLines", default=None)
        limit_bytes = _int_query(request, "limitBytes", default=None)
        follow = request.query.get("follow", "false").lower() in ("true", "1")
        start = 0 if tail is None else max(0, log_lines - tail)

        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        budget = limit_bytes
        for first in range(start, log_lines, LINES_PER_CHUNK):
            last = min(first + LINES_PER_CHUNK, log_lines)
            chunk = "".join(log_line(node_name, pod, k) + "\n" for k in range(first, last))
            data = chunk.encode()
            if budget is not None:
                data = data[:budget]
                budget -= len(data)
            await resp.write(data)
            if budget == 0:
                await resp.write_eof()
                return resp
        k = log_lines
        while follow:
            await asyncio.sleep(follow_interval)
            await resp.write((log_line(node_name, pod, k) + "\n").encode())
            k += 1
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/pods", list_pods)
    app.router.add_get("/stats/summary", stats_summary)
    app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", container_logs)
    return app


def _int_query(request: web.Request, key: str, *, default: int | None) -> int | None:
    raw = request.query.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise web.HTTPBadRequest(text=f"query parameter {key}={raw!r} must be an integer >= 0\n")
    return value


# --- admission webhook --------------------------------------------------------------------


def webhook_app() -> web.Application:
    """An admission webhook stand-in: POST /validate (AdmissionReview v1), GET /healthz."""

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def validate(request: web.Request) -> web.Response:
        try:
            review = await request.json()
            answer = admission_response(review)
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            return web.Response(status=400, text=f"bad AdmissionReview: {e}\n")
        return web.json_response(answer)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/validate", validate)
    return app


# --- serving ------------------------------------------------------------------------------


def server_ssl_context(*, cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    """TLS server context from PEM files; with CLIENT_CA, clients must present a cert."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise SystemExit(f"cannot load TLS certificate {cert} with key {key}: {e}") from e
    if client_ca is not None:
        ctx.load_verify_locations(cafile=client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def serve(
    app: web.Application, *, host: str, port: int, ssl_context: ssl.SSLContext | None
) -> web.AppRunner:
    """Start APP on HOST:PORT; the caller owns the returned runner (`await runner.cleanup()`)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_address=True)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"--listen {text!r} is not HOST:PORT")
    return host, int(port)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vpnctl.lab.standins", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="kind", required=True)
    for kind in ("kubelet", "webhook"):
        s = sub.add_parser(kind)
        s.add_argument("--listen", type=parse_listen, required=True, help="HOST:PORT")
        s.add_argument("--cert", required=True, help="server certificate (PEM)")
        s.add_argument("--key", required=True, help="its private key (PEM)")
        s.add_argument("--client-ca", default=None, help="require client certs from this CA")
        if kind == "kubelet":
            s.add_argument("--name", default="node", help="node name written in log lines")
            s.add_argument("--log-lines", type=int, default=DEFAULT_LOG_LINES)
    return p


async def _amain(args: argparse.Namespace) -> int:
    host, port = args.listen
    if args.kind == "kubelet":
        app = kubelet_app(node_name=args.name, log_lines=args.log_lines)
    else:
        app = webhook_app()
    ctx = server_ssl_context(cert=args.cert, key=args.key, client_ca=args.client_ca)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        runner = await serve(app, host=host, port=port, ssl_context=ctx)
    except OSError as e:
        log.error("event=standin_listen_failed kind=%s address=%s:%d error=%r",
                  args.kind, host, port, str(e))  # fmt: skip
        return 1
    log.info("event=standin_listening kind=%s address=%s:%d", args.kind, host, port)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
    log.info("event=standin_stopped kind=%s address=%s:%d", args.kind, host, port)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")  # fmt: skip
    return asyncio.run(_amain(args))


if __name__ == "__main__":
    sys.exit(main())
