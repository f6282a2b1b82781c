"""`/healthz`, `/readyz` and `/metrics` from one small aiohttp app that owns its runner.

Every agent role and the controller serve the same three endpoints, so they share this
one implementation:

* Liveness and readiness are named checks. A check returns True or None when fine, and
  False or a reason string when not; it may be async. The endpoints answer 200 `ok`, or
  503 with one `name: reason` line per failing check, in the style of kube-apiserver's
  healthz (`?verbose` lists every check).
* `/metrics` renders the CollectorRegistry it was given and nothing else: there is no
  global REGISTRY anywhere in vpnctl, so two agents in one test process never mix.
* The server owns its AppRunner and releases the port on `stop()`, so tests can start
  and stop it freely on port 0.
* `/metrics` may have a port of its own (`metrics_port`): the controller's chart scrapes
  one port through its Service and probes another, so a scrape never queues behind a
  probe and a NetworkPolicy can open one without the other. Then the health port does
  not serve `/metrics`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

log = logging.getLogger(__name__)

CheckResult = bool | str | None
Check = Callable[[], CheckResult | Awaitable[CheckResult]]
"""A health check: True/None = ok; False or a string (the reason) = failing."""

DEFAULT_CHECK_TIMEOUT: Final = 5.0


async def _evaluate(check: Check, *, timeout: float) -> str | None:
    """Run one check; None if it passes, else the reason it fails, on one line."""
    try:
        async with asyncio.timeout(timeout):
            result = check()
            if inspect.isawaitable(result):
                result = await result
    except TimeoutError:
        result = f"no answer within {timeout:g}s"
    except Exception as exc:  # a broken check is a failing check, not a 500
        result = f"check raised {type(exc).__name__}: {exc}"
    if result is True or result is None:
        return None
    # One line per check, whatever the reason contains.
    reason = " ".join(str(result).split()) if result is not False else ""
    return reason or "failed"


class HealthServer:
    """Serves /healthz (liveness), /readyz (readiness) and /metrics on one port, or
    /metrics on a second one when ``metrics_port`` is given."""

    def __init__(
        self,
        *,
        registry: CollectorRegistry,
        host: str = "0.0.0.0",
        port: int = 0,
        liveness: Mapping[str, Check] | None = None,
        readiness: Mapping[str, Check] | None = None,
        check_timeout: float = DEFAULT_CHECK_TIMEOUT,
        metrics_host: str | None = None,
        metrics_port: int | None = None,
    ) -> None:
        self._registry = registry
        self._metrics_host = host if metrics_host is None else metrics_host
        self._requested_metrics_port = metrics_port
        self._host = host
        self._requested_port = port
        self._check_timeout = check_timeout
        self._liveness: dict[str, Check] = {}
        self._readiness: dict[str, Check] = {}
        for name, check in (liveness or {}).items():
            self.add_liveness(name, check)
        for name, check in (readiness or {}).items():
            self.add_readiness(name, check)
        self._runner: web.AppRunner | None = None
        self._metrics_runner: web.AppRunner | None = None
        self._port: int | None = None
        self._metrics_port: int | None = None

    # ---------------------------------------------------------------- checks

    def add_liveness(self, name: str, check: Check) -> None:
        """Register a liveness check; failing it means "restart me"."""
        self._add(self._liveness, "liveness", name, check)

    def add_readiness(self, name: str, check: Check) -> None:
        """Register a readiness check; failing it means "don't count on me yet"."""
        self._add(self._readiness, "readiness", name, check)

    @staticmethod
    def _add(checks: dict[str, Check], kind: str, name: str, check: Check) -> None:
        if not name or any(c.isspace() or c == ":" for c in name):
            raise ValueError(f"{kind} check name {name!r} must be non-empty, without ':' or spaces")
        if name in checks:
            raise ValueError(f"{kind} check {name!r} is already registered; pick another name")
        checks[name] = check

    # ---------------------------------------------------------------- lifecycle

    @property
    def port(self) -> int:
        """The bound port (the real one when started with port 0)."""
        if self._port is None:
            raise RuntimeError("HealthServer is not started; call start() first")
        return self._port

    @property
    def metrics_port(self) -> int:
        """The bound port of /metrics: its own, or the health port."""
        if self._port is None:
            raise RuntimeError("HealthServer is not started; call start() first")
        return self._port if self._metrics_port is None else self._metrics_port

    @property
    def url(self) -> str:
        return f"http://{_local(self._host)}:{self.port}"

    @property
    def metrics_url(self) -> str:
        """Where /metrics answers (without the path)."""
        host = self._host if self._metrics_port is None else self._metrics_host
        return f"http://{_local(host)}:{self.metrics_port}"

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("HealthServer is already started")
        separate = self._requested_metrics_port is not None
        app = web.Application()
        app.router.add_get("/healthz", self._handle_healthz)
        app.router.add_get("/livez", self._handle_healthz)
        app.router.add_get("/readyz", self._handle_readyz)
        if not separate:
            app.router.add_get("/metrics", self._handle_metrics)
        what = "health" if separate else "health/metrics"
        runner, self._port = await _serve(app, self._host, self._requested_port, what)
        self._runner = runner
        log.info("event=health_server_started host=%s port=%d", self._host, self._port)
        if self._requested_metrics_port is not None:
            metrics_app = web.Application()
            metrics_app.router.add_get("/metrics", self._handle_metrics)
            try:
                self._metrics_runner, self._metrics_port = await _serve(
                    metrics_app, self._metrics_host, self._requested_metrics_port, "metrics"
                )
            except OSError:
                await self.stop()  # the health port too: start() is all or nothing
                self._port = None
                raise
            log.info(
                "event=metrics_server_started host=%s port=%d",
                self._metrics_host,
                self._metrics_port,
            )

    async def stop(self) -> None:
        """Stop serving and release the port(s). Safe to call twice."""
        runner, self._runner = self._runner, None
        metrics_runner, self._metrics_runner = self._metrics_runner, None
        if metrics_runner is not None:
            await metrics_runner.cleanup()
            log.info("event=metrics_server_stopped port=%s", self._metrics_port)
        if runner is not None:
            await runner.cleanup()
            log.info("event=health_server_stopped port=%s", self._port)

    async def __aenter__(self) -> HealthServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---------------------------------------------------------------- handlers

    async def _handle_healthz(self, request: web.Request) -> web.Response:
        return await self._report(request, self._liveness)

    async def _handle_readyz(self, request: web.Request) -> web.Response:
        return await self._report(request, self._readiness)

    async def _report(self, request: web.Request, checks: Mapping[str, Check]) -> web.Response:
        names = list(checks)
        reasons = await asyncio.gather(
            *(_evaluate(checks[n], timeout=self._check_timeout) for n in names)
        )
        results = list(zip(names, reasons, strict=True))
        failing = [(n, r) for n, r in results if r is not None]
        if "verbose" in request.query:
            lines = [f"{n}: {r if r is not None else 'ok'}" for n, r in results]
            lines.append("failed" if failing else "ok")
        elif failing:
            lines = [f"{n}: {r}" for n, r in failing]
        else:
            lines = ["ok"]
        return web.Response(
            status=503 if failing else 200,
            text="\n".join(lines) + "\n",
            content_type="text/plain",
            headers={"Cache-Control": "no-store"},
        )

    async def _handle_metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = encoder(self._registry)
        return web.Response(body=body, headers={"Content-Type": content_type})


def _local(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


async def _serve(
    app: web.Application, host: str, port: int, what: str
) -> tuple[web.AppRunner, int]:
    """``app`` on host:port; its runner and the bound port. OSError says which port."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise OSError(
            exc.errno,
            f"cannot serve {what} on {host}:{port}: {exc.strerror}; "
            "pick a free port or stop what holds it",
        ) from exc
    return runner, int(runner.addresses[0][1])
