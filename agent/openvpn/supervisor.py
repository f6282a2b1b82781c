"""Run one child process (openvpn) forever: restart it with jittered, capped backoff.

Why this exists instead of a `while True: subprocess.run()`: a probe showed that a new openvpn
server started while the old one is still exiting dies (the port and tun are still held),
and its clients then hang. So the one invariant here is **the old process has exited (been
reaped) before a new one starts**. Only the `run()` loop ever starts a process, and only after
it has awaited the previous one's exit; `restart()` and `stop()` just signal and wait.

The child runs in its own process group so that `stop()` also removes anything it spawned.
Backoff doubles per consecutive failure from `backoff_initial` up to `backoff_max`, with
+-`jitter` (a fraction) from the injected `rng`, and resets once a process stayed up for
`healthy_after` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

from agent.agent_clock import SYSTEM_CLOCK, AgentClock

_log = logging.getLogger(__name__)


def backoff_delay(
    *, failures: int, initial: float, maximum: float, jitter: float, rng: random.Random
) -> float:
    """Seconds to wait before the next start after `failures` consecutive quick exits (>= 1).

    The base doubles per failure and is capped at `maximum`; jitter scales it by a factor in
    [1 - jitter, 1 + jitter], and the result never exceeds `maximum`.
    """
    base = min(maximum, initial * (2.0 ** max(0, failures - 1)))
    return max(0.0, min(maximum, base * (1.0 + rng.uniform(-jitter, jitter))))


class Supervisor:
    def __init__(
        self,
        *,
        name: str,
        argv: Sequence[str],
        rng: random.Random,
        log_path: str | None = None,
        backoff_initial: float = 0.2,
        backoff_max: float = 10.0,
        jitter: float = 0.2,
        stop_timeout: float = 5.0,
        healthy_after: float = 10.0,
        env: Mapping[str, str] | None = None,
        on_start: Callable[[int], None] | None = None,
        on_exit: Callable[[int], None] | None = None,
        clock: AgentClock = SYSTEM_CLOCK,
    ) -> None:
        if not argv:
            raise ValueError(f"supervisor {name!r}: argv is empty; pass the command to run")
        if not 0 <= jitter < 1:
            raise ValueError(f"supervisor {name!r}: jitter must be in [0, 1), got {jitter}")
        if backoff_initial <= 0 or backoff_max < backoff_initial:
            raise ValueError(
                f"supervisor {name!r}: need 0 < backoff_initial <= backoff_max, "
                f"got {backoff_initial} and {backoff_max}"
            )
        self.name = name
        self.argv = tuple(argv)
        self._rng = rng
        self._clock = clock
        self._log_path = log_path
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._jitter = jitter
        self._stop_timeout = stop_timeout
        self._healthy_after = healthy_after
        # None inherits our environment; a mapping is the child's whole environment.
        self._env = dict(env) if env is not None else None
        self._on_start = on_start
        self._on_exit = on_exit

        self.pid: int | None = None
        self.restarts = 0
        self.last_returncode: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._stopping = False
        self._restart_requested = False
        self._wake = asyncio.Event()  # ends a backoff wait early (restart or stop)
        self._started = asyncio.Event()  # set while a process is running
        self._generation = 0  # number of processes started so far
        self._gen_changed = asyncio.Condition()
        self._control = asyncio.Lock()  # serialises restart() and stop()
        self._run_active = False
        self._run_done = asyncio.Event()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    # --- public API ------------------------------------------------------------------------

    async def run(self) -> None:
        """Start, wait for exit, back off, restart; until stop(). Cancelling it stops the child.

        A supervisor lives once: after stop() (even one that came before run()), run() returns.
        """
        if self._run_active:
            raise RuntimeError(f"supervisor {self.name!r}: run() is already active")
        self._run_active = True
        self._run_done.clear()
        failures = 0
        try:
            while not self._stopping:
                self._wake.clear()
                # A restart() that arrived during a backoff is consumed by this start.
                self._restart_requested = False
                started_at = self._clock.monotonic()
                proc = await self._spawn()
                if proc is not None:
                    await proc.wait()
                    await self._reaped(proc)
                if self._stop_requested():
                    break
                uptime = self._clock.monotonic() - started_at
                if self._take_restart_request():
                    failures = 0
                    continue
                failures = 1 if uptime >= self._healthy_after else failures + 1
                delay = backoff_delay(
                    failures=failures,
                    initial=self._backoff_initial,
                    maximum=self._backoff_max,
                    jitter=self._jitter,
                    rng=self._rng,
                )
                _log.warning(
                    "supervisor=%s event=backoff failures=%d uptime=%.1fs retry_in=%.1fs",
                    self.name,
                    failures,
                    uptime,
                    delay,
                )
                await self._backoff(delay)
        finally:
            try:
                proc = self._proc
                await self._terminate()
                if proc is not None and self._proc is proc and proc.returncode is not None:
                    await self._reaped(proc)
            finally:
                self._run_active = False
                self._run_done.set()
                await self._bump_generation()  # wakes a restart() waiting for a new process
                _log.info("supervisor=%s event=stopped restarts=%d", self.name, self.restarts)

    async def restart(self) -> None:
        """Terminate the current process, wait until it has exited, and have run() start a new one.

        Returns once the new process has started. Never two processes at once: the new one is
        started by run() only after the old one has been reaped.
        """
        async with self._control:
            if not self._run_active or self._stopping:
                raise RuntimeError(f"supervisor {self.name!r}: restart() needs an active run()")
            generation = self._generation
            self._restart_requested = True
            _log.info("supervisor=%s event=restart-requested pid=%s", self.name, self.pid)
            await self._terminate()
            self._wake.set()
            async with self._gen_changed:
                await self._gen_changed.wait_for(
                    lambda: self._generation > generation or not self._run_active
                )

    async def stop(self) -> None:
        """Terminate the process (its whole group), wait for it, and make run() return."""
        async with self._control:
            self._stopping = True
            self._wake.set()
            await self._terminate()
            if self._run_active:
                await self._run_done.wait()

    async def wait_started(self, timeout: float) -> int:
        """Wait until a process is running and return its pid; TimeoutError after `timeout` s."""
        async with asyncio.timeout(timeout):
            while True:
                await self._started.wait()
                if self.pid is not None and self.running:
                    return self.pid
                # Started and already exited: wait for the next one.
                self._started.clear()

    # --- internals -------------------------------------------------------------------------

    async def _backoff(self, delay: float) -> None:
        """Wait DELAY on the clock, or less if restart() or stop() wakes us."""
        waits = [
            asyncio.ensure_future(self._clock.sleep(delay)),
            asyncio.ensure_future(self._wake.wait()),
        ]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    async def _spawn(self) -> asyncio.subprocess.Process | None:
        attempt = self._generation + 1
        log_file: IO[bytes] | None = None
        kwargs: dict[str, Any] = {}
        try:
            if self._log_path is not None:
                # Closed below once the child holds its own copy of the descriptor.
                log_file = await asyncio.to_thread(open, self._log_path, "ab")
                kwargs = {"stdout": log_file, "stderr": log_file}
            proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                env=self._env,
                process_group=0,
                **kwargs,
            )
        except OSError as exc:
            self._generation = attempt
            self.last_returncode = None
            _log.error(
                "supervisor=%s event=spawn-failed attempt=%d argv0=%s error=%r",
                self.name,
                attempt,
                self.argv[0],
                str(exc),
            )
            await self._bump_generation()
            return None
        finally:
            if log_file is not None:
                log_file.close()
        self._proc = proc
        self.pid = proc.pid
        if attempt > 1:
            self.restarts += 1
        self._generation = attempt
        _log.info("supervisor=%s event=start attempt=%d pid=%d", self.name, attempt, proc.pid)
        self._started.set()
        await self._bump_generation()
        if self._on_start is not None:
            self._on_start(proc.pid)
        return proc

    def _stop_requested(self) -> bool:
        # A method, not the attribute, so type narrowing does not assume it is unchanged
        # across the awaits above.
        return self._stopping

    def _take_restart_request(self) -> bool:
        requested, self._restart_requested = self._restart_requested, False
        return requested

    async def _bump_generation(self) -> None:
        async with self._gen_changed:
            self._gen_changed.notify_all()

    async def _reaped(self, proc: asyncio.subprocess.Process) -> None:
        rc = proc.returncode
        assert rc is not None
        # Anything the child left in its group goes with it.
        _killpg(proc.pid, signal.SIGKILL)
        self._started.clear()
        self.last_returncode = rc
        level = logging.INFO if self._stopping or self._restart_requested else logging.WARNING
        _log.log(level, "supervisor=%s event=exit pid=%d exit_code=%d", self.name, proc.pid, rc)
        if self._proc is proc:
            self._proc = None
            self.pid = None
        if self._on_exit is not None:
            self._on_exit(rc)

    async def _terminate(self) -> None:
        """SIGTERM the group, SIGKILL after stop_timeout, and wait until the child is reaped."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        _log.info("supervisor=%s event=terminate pid=%d", self.name, proc.pid)
        _killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), timeout=self._stop_timeout)
        except TimeoutError:
            _log.warning(
                "supervisor=%s event=kill pid=%d reason=no-exit-after-%.1fs",
                self.name,
                proc.pid,
                self._stop_timeout,
            )
            _killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        except asyncio.CancelledError:
            _killpg(proc.pid, signal.SIGKILL)
            raise


def _killpg(pgid: int, sig: signal.Signals) -> None:
    """Signal openvpn's process group. A refusal is loud: openvpn runs as another user
    once it dropped privileges, and without CAP_KILL the agent cannot stop it (it would
    wait for an exit that never comes)."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    except PermissionError as exc:
        _log.error(
            "event=signal_refused pgid=%d signal=%s error=%r hint=%r",
            pgid,
            sig.name,
            str(exc),
            "the agent needs CAP_KILL to signal openvpn after it dropped to its user",
        )
        if sig == signal.SIGKILL:
            raise OpenVPNSignalRefused(
                f"cannot SIGKILL openvpn (process group {pgid}): {exc}; the container "
                "needs CAP_KILL"
            ) from exc


class OpenVPNSignalRefused(RuntimeError):
    """openvpn could not be killed: stopping would wait for ever."""
