"""What every role shares: logging, readiness reasons, file watching, material checks,
atomic writes, the openvpn process and the task/signal frame around it all.

Why it is shaped this way:

* One asyncio TaskGroup per role. Every long-running task is wrapped by `guarded`, so a
  task that dies is logged with its name and then escalates: the group cancels the
  others, the role cleans up (stops openvpn, removes its firewall, stops serving) and
  the process exits non-zero for its own supervisor (kubelet, systemd, the lab) to
  restart. Nothing is swallowed.
* SIGTERM/SIGINT only set an event; the role's `finally` blocks do the shutdown, so a
  graceful stop and a crash clean up the same way.
* Bad input never crash-loops: certificates, keys and desired state are checked before
  they reach openvpn, a failure becomes a readiness reason and a counted config error,
  and the role waits for the file to change and tries again.
* No module-level state: the clock, the registry and the paths are passed in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import tempfile
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge

import certs
from agent.desired import Common, FileSignature, file_signature
from agent.openvpn.supervisor import Supervisor
from telemetry.health import HealthServer
from telemetry.logs import LogFormat, configure_logging, pairs

T = TypeVar("T")
Clock = Callable[[], datetime]

_TLS_CRYPT_V2_CLIENT_HEADER = b"-----BEGIN OpenVPN tls-crypt-v2 client key-----"
_TLS_CRYPT_V2_SERVER_HEADER = b"-----BEGIN OpenVPN tls-crypt-v2 server key-----"
_MAX_MATERIAL_BYTES = 1024 * 1024


# --- logging ------------------------------------------------------------------------------


def kv(**fields: object) -> str:
    """`k=v` pairs for one log line, in logfmt (`telemetry.logs.pairs`)."""
    return pairs(**fields)


class EventLog:
    """One event per line: `event=<name> role=<role> k=v ...`."""

    def __init__(self, *, logger: logging.Logger, role: str) -> None:
        self._log = logger
        self._role = role

    def __call__(self, event: str, *, level: int = logging.INFO, **fields: object) -> None:
        self._log.log(level, "%s", kv(event=event, role=self._role, **fields))

    def warning(self, event: str, **fields: object) -> None:
        self(event, level=logging.WARNING, **fields)

    def error(self, event: str, **fields: object) -> None:
        self(event, level=logging.ERROR, **fields)


def setup_logging(*, level: int | str = logging.INFO, fmt: LogFormat = "logfmt") -> None:
    """One record a line on stderr, in the format every vpnctl binary writes."""
    configure_logging(level=level, fmt=fmt)


# --- readiness and common metrics ----------------------------------------------------------


class Conditions:
    """Named readiness conditions: each is either fine (None) or failing with a reason.

    Registered with the HealthServer as one readiness check per name, so /readyz shows
    exactly which part is unhappy and why.
    """

    def __init__(self) -> None:
        self._reasons: dict[str, str | None] = {}

    def declare(self, name: str, reason: str | None) -> None:
        """Create condition NAME with its initial state (normally a "not yet" reason)."""
        self._reasons[name] = reason

    def set(self, name: str, reason: str | None) -> None:
        if name not in self._reasons:
            raise KeyError(f"condition {name!r} was never declared")
        self._reasons[name] = reason

    def ok(self, name: str) -> None:
        self.set(name, None)

    def reason(self, name: str) -> str | None:
        return self._reasons[name]

    @property
    def ready(self) -> bool:
        return all(r is None for r in self._reasons.values())

    def failing(self) -> dict[str, str]:
        return {n: r for n, r in self._reasons.items() if r is not None}

    def register(self, health: HealthServer) -> None:
        for name in self._reasons:
            health.add_readiness(name, self._check(name))

    def _check(self, name: str) -> Callable[[], str | None]:
        return lambda: self._reasons[name]


@dataclass(frozen=True)
class CommonMetrics:
    """Metrics every role exports, all labelled with `role`."""

    role: str
    openvpn_running: Gauge
    openvpn_starts: Counter
    openvpn_exits: Counter
    config_errors: Counter
    ready: Gauge

    @classmethod
    def create(cls, *, registry: CollectorRegistry, role: str) -> CommonMetrics:
        return cls(
            role=role,
            openvpn_running=Gauge(
                "vpnctl_agent_openvpn_running",
                "1 while the supervised openvpn process is running.",
                ["role"],
                registry=registry,
            ),
            openvpn_starts=Counter(
                "vpnctl_agent_openvpn_starts",
                "openvpn processes started by the agent (the first one included).",
                ["role"],
                registry=registry,
            ),
            openvpn_exits=Counter(
                "vpnctl_agent_openvpn_exits",
                "openvpn processes that exited, by how (clean, error, signal).",
                ["role", "how"],
                registry=registry,
            ),
            config_errors=Counter(
                "vpnctl_agent_config_errors",
                "Inputs refused (certificate material, desired state, CRL), by source.",
                ["role", "source"],
                registry=registry,
            ),
            ready=Gauge(
                "vpnctl_agent_ready",
                "1 when every readiness condition of the role holds.",
                ["role"],
                registry=registry,
            ),
        )


# --- files ---------------------------------------------------------------------------------


class FileWatch:
    """Tells whether any of a few files changed since the last look (by inode, size, mtime).

    Polling, not inotify: the files live on ConfigMap/Secret volumes whose updates are
    symlink swaps that inotify watchers famously miss, and a stat every half second costs
    nothing.
    """

    def __init__(self, paths: Iterable[str]) -> None:
        self.paths = tuple(paths)
        self._seen: tuple[FileSignature | None, ...] | None = None

    def snapshot(self) -> tuple[FileSignature | None, ...]:
        return tuple(file_signature(p) for p in self.paths)

    def changed(self) -> bool:
        """True on the first call and whenever a file changed, appeared or vanished."""
        now = self.snapshot()
        if now == self._seen:
            return False
        self._seen = now
        return True

    async def wait_changed(self, *, interval: float) -> None:
        while not self.changed():
            await asyncio.sleep(interval)


def atomic_write(path: str, data: bytes, *, mode: int = 0o644, mtime: float | None = None) -> None:
    """Write DATA to PATH so readers see the old or the new file, never a mix.

    tmp file in the same directory, fsync, optional mtime, rename over the target.
    """
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if mtime is not None:
            os.utime(tmp, (mtime, mtime))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_small(path: str, *, what: str) -> bytes:
    """Read a PEM-sized file; raise MaterialError naming the file on any problem."""
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_MATERIAL_BYTES + 1)
    except FileNotFoundError:
        raise MaterialError(f"{what} {path} does not exist; mount or create it") from None
    except OSError as e:
        raise MaterialError(f"{what} {path} cannot be read: {e.strerror}") from None
    if len(data) > _MAX_MATERIAL_BYTES:
        raise MaterialError(f"{what} {path} is over {_MAX_MATERIAL_BYTES} bytes; wrong file?")
    return data


# --- certificate material ------------------------------------------------------------------


class MaterialError(ValueError):
    """Certificate, key, CA or tls-crypt-v2 file unusable; the message names the file."""


@dataclass(frozen=True, kw_only=True)
class MaterialPaths:
    ca: str
    cert: str
    key: str
    tls_crypt_v2: str
    usage: certs.check.CheckedUsage  # "server" or "client"

    @property
    def all(self) -> tuple[str, ...]:
        return (self.ca, self.cert, self.key, self.tls_crypt_v2)


def check_material(paths: MaterialPaths, *, now: datetime) -> certs.CertInfo:
    """Validate what openvpn is about to load: parse, chain, key match, time, usage.

    openvpn would refuse bad material too, but only by exiting with an OpenSSL error in
    its log, over and over under the supervisor. Checking first turns that into one
    clear reason on /readyz.
    """
    ca = read_small(paths.ca, what="CA certificate")
    cert = read_small(paths.cert, what="certificate")
    key = read_small(paths.key, what="private key")
    tc = read_small(paths.tls_crypt_v2, what="tls-crypt-v2 key")
    try:
        certs.validate(ca, now=now, usage="ca")
    except certs.PKIError as e:
        raise MaterialError(f"CA certificate {paths.ca}: {e}") from None
    try:
        info = certs.validate(cert, key_pem=key, ca_pem=ca, now=now, usage=paths.usage)
    except certs.KeyMismatch as e:
        raise MaterialError(f"private key {paths.key} / certificate {paths.cert}: {e}") from None
    except certs.PKIError as e:
        raise MaterialError(f"certificate {paths.cert}: {e}") from None
    header = _TLS_CRYPT_V2_SERVER_HEADER if paths.usage == "server" else _TLS_CRYPT_V2_CLIENT_HEADER
    if header not in tc:
        raise MaterialError(
            f"tls-crypt-v2 key {paths.tls_crypt_v2} has no {header.decode()!r} block; "
            f"install the {paths.usage}'s tls-crypt-v2 key"
        )
    return info


async def wait_for_material(
    paths: MaterialPaths,
    *,
    clock: Clock,
    conditions: Conditions,
    condition: str,
    metrics: CommonMetrics,
    events: EventLog,
    poll_interval: float = 0.5,
) -> certs.CertInfo:
    """Return once the material is valid; until then report why and wait for a change.

    Each distinct failure is logged and counted once (not once per poll), readiness
    carries the reason, and the files are only re-checked after one of them changed.
    """
    watch = FileWatch(paths.all)
    while True:
        watch.changed()  # remember this version; a retry needs a newer one
        try:
            info = check_material(paths, now=clock())
        except MaterialError as e:
            reason = str(e)
            conditions.set(condition, reason)
            metrics.config_errors.labels(metrics.role, "material").inc()
            events.error("material_invalid", error=reason, action="waiting for the files to change")
            await watch.wait_changed(interval=poll_interval)
            continue
        conditions.ok(condition)
        events("material_valid", cn=info.common_name, serial=f"{info.serial:x}",
               not_after=info.not_after.isoformat())  # fmt: skip
        return info


async def watch_material(
    paths: MaterialPaths,
    *,
    clock: Clock,
    conditions: Conditions,
    condition: str,
    metrics: CommonMetrics,
    events: EventLog,
    supervisor: Supervisor,
    on_change: Callable[[], None] | None = None,
    poll_interval: float = 0.5,
) -> None:
    """After `wait_for_material`: restart openvpn on every valid change of the files.

    Invalid new material is reported and ignored: openvpn keeps running on what it has.
    `on_change` runs just before the restart (the node role marks it as a forced reconnect).
    """
    watch = FileWatch(paths.all)
    watch.changed()
    while True:
        await watch.wait_changed(interval=poll_interval)
        try:
            info = check_material(paths, now=clock())
        except MaterialError as e:
            conditions.set(condition, f"{e} (openvpn keeps the previous material)")
            metrics.config_errors.labels(metrics.role, "material").inc()
            events.error("material_invalid", error=str(e), action="keeping openvpn running")
            continue
        conditions.ok(condition)
        events("material_changed", cn=info.common_name, serial=f"{info.serial:x}",
               action="restart openvpn")  # fmt: skip
        if on_change is not None:
            on_change()
        await restart_openvpn(supervisor, events=events, reason="material_changed")


# --- openvpn ---------------------------------------------------------------------------------


def render_to(path: str, text: str) -> None:
    atomic_write(path, text.encode(), mode=0o600)


def openvpn_supervisor(
    *,
    common: Common,
    config_path: str,
    metrics: CommonMetrics,
    rng: random.Random,
    extra_on_start: Callable[[int], None] | None = None,
    extra_on_exit: Callable[[int], None] | None = None,
) -> Supervisor:
    """A Supervisor for `openvpn --config CONFIG_PATH` that keeps the common metrics."""
    role = metrics.role

    def on_start(pid: int) -> None:
        metrics.openvpn_running.labels(role).set(1)
        metrics.openvpn_starts.labels(role).inc()
        if extra_on_start is not None:
            extra_on_start(pid)

    def on_exit(rc: int) -> None:
        metrics.openvpn_running.labels(role).set(0)
        how = "clean" if rc == 0 else ("signal" if rc < 0 else "error")
        metrics.openvpn_exits.labels(role, how).inc()
        if extra_on_exit is not None:
            extra_on_exit(rc)

    metrics.openvpn_running.labels(role).set(0)
    return Supervisor(
        name=f"openvpn-{role}",
        argv=[common.openvpn_binary, "--config", config_path],
        rng=rng,
        log_path=common.openvpn_log,
        on_start=on_start,
        on_exit=on_exit,
    )


async def restart_openvpn(supervisor: Supervisor, *, events: EventLog, reason: str) -> None:
    """Restart the supervised openvpn; a no-op (logged) if its run() has not begun yet."""
    if not supervisor.running:
        events("openvpn_restart_skipped", reason=reason, why="not running yet")
        return
    try:
        await supervisor.restart()
    except RuntimeError as e:  # run() ended or not started: nothing to restart
        events.warning("openvpn_restart_skipped", reason=reason, why=str(e))


# --- tasks and signals ----------------------------------------------------------------------


class Stopping(Exception):
    """Raised inside the role's TaskGroup when SIGTERM/SIGINT asks for a graceful stop."""


async def guarded(name: str, coro: Awaitable[T], *, events: EventLog) -> T:
    """Await CORO; if it raises, log which task died and re-raise (escalate)."""
    try:
        return await coro
    except (asyncio.CancelledError, Stopping):
        raise
    except BaseException as e:
        events.error("task_died", task=name, error=f"{type(e).__name__}: {e}")
        raise


def spawn(
    tg: asyncio.TaskGroup, name: str, coro: Coroutine[Any, Any, Any], *, events: EventLog
) -> asyncio.Task[Any]:
    return tg.create_task(guarded(name, coro, events=events), name=name)


async def wait_for_stop(stop: asyncio.Event) -> None:
    """A TaskGroup member that turns the stop signal into `Stopping`, ending the group."""
    await stop.wait()
    raise Stopping


def install_signal_handlers(stop: asyncio.Event, *, events: EventLog) -> None:
    loop = asyncio.get_running_loop()

    def handler(sig: signal.Signals) -> None:
        events("signal", signal=sig.name, action="graceful shutdown")
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, handler, sig)


async def run_group(
    tasks: Mapping[str, Callable[[], Coroutine[Any, Any, Any]]],
    *,
    stop: asyncio.Event,
    events: EventLog,
) -> None:
    """Run every task in one TaskGroup until STOP is set or one of them dies.

    Returns normally on a graceful stop; re-raises the first real failure.
    """
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(wait_for_stop(stop), name="stop")
            for name, factory in tasks.items():
                spawn(tg, name, factory(), events=events)
    except* Stopping:
        events("stopping")
