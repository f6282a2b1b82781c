"""HealthServer on a real socket (127.0.0.1, port 0), queried with a real aiohttp client."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, Counter

from telemetry.health import HealthServer


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def get(http: aiohttp.ClientSession, server: HealthServer, path: str) -> tuple[int, str]:
    async with http.get(f"http://127.0.0.1:{server.port}{path}") as resp:
        return resp.status, await resp.text()


async def test_no_checks_is_ok(http: aiohttp.ClientSession) -> None:
    async with HealthServer(registry=CollectorRegistry(), host="127.0.0.1") as server:
        assert server.port > 0
        assert await get(http, server, "/healthz") == (200, "ok\n")
        assert await get(http, server, "/readyz") == (200, "ok\n")


async def test_failing_checks_give_503_and_one_line_each(http: aiohttp.ClientSession) -> None:
    server = HealthServer(
        registry=CollectorRegistry(),
        host="127.0.0.1",
        liveness={"loop": lambda: True},
        readiness={
            "empty": lambda: "",
            "routes": lambda: "2 routes pending on tun0",
            "tunnel": lambda: False,
            "certs": lambda: None,
        },
    )
    async with server:
        assert await get(http, server, "/healthz") == (200, "ok\n")
        status, body = await get(http, server, "/readyz")
        assert status == 503
        assert body.splitlines() == [
            "empty: failed",
            "routes: 2 routes pending on tun0",
            "tunnel: failed",
        ]


async def test_verbose_lists_every_check(http: aiohttp.ClientSession) -> None:
    server = HealthServer(
        registry=CollectorRegistry(),
        host="127.0.0.1",
        readiness={"a": lambda: True, "b": lambda: "not yet"},
    )
    async with server:
        status, body = await get(http, server, "/readyz?verbose")
        assert status == 503
        assert body.splitlines() == ["a: ok", "b: not yet", "failed"]
        server.add_liveness("only", lambda: None)
        assert await get(http, server, "/healthz?verbose") == (200, "only: ok\nok\n")


async def test_async_checks_and_state_changes(http: aiohttp.ClientSession) -> None:
    state = {"up": False}

    async def tunnel_up() -> str | None:
        await asyncio.sleep(0)
        return None if state["up"] else "tunnel down since 3s"

    async with HealthServer(registry=CollectorRegistry(), host="127.0.0.1") as server:
        server.add_readiness("tunnel", tunnel_up)
        assert await get(http, server, "/readyz") == (503, "tunnel: tunnel down since 3s\n")
        state["up"] = True
        assert await get(http, server, "/readyz") == (200, "ok\n")


async def test_broken_and_hanging_checks_fail_instead_of_erroring(
    http: aiohttp.ClientSession,
) -> None:
    def broken() -> bool:
        raise RuntimeError("watch\nis stale")

    async def hangs() -> bool:
        await asyncio.Event().wait()  # never set: only the check timeout ends this
        return True

    server = HealthServer(
        registry=CollectorRegistry(),
        host="127.0.0.1",
        liveness={"broken": broken, "hangs": hangs},
        check_timeout=0.2,
    )
    async with server:
        status, body = await get(http, server, "/healthz")
        assert status == 503
        assert body.splitlines() == [
            "broken: check raised RuntimeError: watch is stale",
            "hangs: no answer within 0.2s",
        ]


def test_duplicate_or_malformed_check_names_are_rejected() -> None:
    server = HealthServer(registry=CollectorRegistry(), readiness={"routes": lambda: True})
    with pytest.raises(ValueError, match="already registered"):
        server.add_readiness("routes", lambda: True)
    with pytest.raises(ValueError, match="without ':'"):
        server.add_liveness("a: b", lambda: True)


async def test_metrics_come_only_from_the_given_registry(http: aiohttp.ClientSession) -> None:
    ours, other = CollectorRegistry(), CollectorRegistry()
    Counter("vpnctl_test_ours", "ours", registry=ours).inc(3)
    Counter("vpnctl_test_other", "not ours", registry=other).inc()
    async with HealthServer(registry=ours, host="127.0.0.1") as server:
        url = f"http://127.0.0.1:{server.port}/metrics"
        async with http.get(url) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain; version=")
            body = await resp.text()
        assert "vpnctl_test_ours_total 3.0" in body
        assert "vpnctl_test_other" not in body
        # Nothing from the process-wide default registry (python_info, process_*).
        assert "python_info" not in body
        assert "process_" not in body

        async with http.get(url, headers={"Accept": "application/openmetrics-text"}) as resp:
            assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
            assert (await resp.text()).rstrip().endswith("# EOF")


async def test_stop_frees_the_port_and_is_idempotent(http: aiohttp.ClientSession) -> None:
    server = HealthServer(registry=CollectorRegistry(), host="127.0.0.1")
    await server.start()
    port = server.port
    assert (await get(http, server, "/healthz"))[0] == 200
    await server.stop()
    await server.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(http, server, "/healthz")
    # Nothing listens there any more: another socket can listen on the exact port.
    # (SO_REUSEADDR only forgives TIME_WAIT leftovers, never a live listener.)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()
    # ...and a new server can take it.
    async with HealthServer(registry=CollectorRegistry(), host="127.0.0.1", port=port) as again:
        assert again.port == port
        assert (await get(http, again, "/healthz"))[0] == 200


async def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        server = HealthServer(registry=CollectorRegistry(), host="127.0.0.1", port=port)
        with pytest.raises(OSError, match=f"cannot serve health/metrics on 127.0.0.1:{port}"):
            await server.start()
        with pytest.raises(RuntimeError, match="not started"):
            _ = server.port


async def test_metrics_on_a_port_of_their_own(http: aiohttp.ClientSession) -> None:
    """The controller's chart scrapes http-metrics and probes http-health: with
    metrics_port, /metrics answers there and only there, the probes on the other port."""
    registry = CollectorRegistry()
    Counter("split_total", "a counter", registry=registry).inc()
    server = HealthServer(registry=registry, host="127.0.0.1", metrics_port=0)
    async with server:
        assert server.metrics_port not in (0, server.port)
        async with http.get(f"{server.metrics_url}/metrics") as resp:
            assert resp.status == 200
            assert "split_total 1.0" in await resp.text()
        async with http.get(f"{server.metrics_url}/healthz") as resp:
            assert resp.status == 404
        assert await get(http, server, "/healthz") == (200, "ok\n")
        assert (await get(http, server, "/metrics"))[0] == 404
        metrics_port = server.metrics_port
    with pytest.raises(aiohttp.ClientConnectionError):
        await http.get(f"http://127.0.0.1:{metrics_port}/metrics")


async def test_metrics_port_in_use_releases_the_health_port() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        server = HealthServer(registry=CollectorRegistry(), host="127.0.0.1", metrics_port=taken)
        with pytest.raises(OSError, match=f"cannot serve metrics on 127.0.0.1:{taken}"):
            await server.start()
        with pytest.raises(RuntimeError, match="not started"):
            _ = server.port
