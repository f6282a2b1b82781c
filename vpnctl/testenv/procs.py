"""Long-running child processes (etcd, kube-apiserver, ...) that never outlive us.

Each process writes stdout and stderr to its own log file, which is what a person
reads when a test fails. A process can run inside a network namespace through
``ip netns exec``, which execs the command, so the PID we hold is the real server.

Processes are plain ``subprocess.Popen`` objects rather than asyncio subprocesses:
they are not bound to the event loop that started them, so a session-scoped cluster
survives pytest-asyncio's per-test loops. By default the kernel kills them if we die
(``PR_SET_PDEATHSIG``), so even a SIGKILLed test run leaks nothing. The lab, whose
processes must outlive ``vpnctl lab up``, turns that off.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


class ProcessExited(RuntimeError):
    """A process we started is gone; the message carries the tail of its log."""


def _die_with_parent() -> None:
    # Runs in the child between fork and exec; survives exec, and also `ip netns exec`.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def netns_argv(netns: str | None, argv: Sequence[str]) -> list[str]:
    """``argv`` run inside network namespace ``netns`` (unchanged when it is None)."""
    return ["ip", "netns", "exec", netns, *argv] if netns else list(argv)


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


class ManagedProcess:
    """One server process, its log file, and an orderly way to stop it."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        netns: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        die_with_parent: bool = True,
    ) -> None:
        self.name = name
        self.argv = netns_argv(netns, argv)
        self.log_path = log_path
        self.netns = netns
        self._env = dict(env) if env is not None else None
        self._cwd = cwd
        self._die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the process. Call it from the thread that will outlive it (the loop's):
        the parent-death signal fires when the *thread* that forked exits."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"$ {' '.join(self.argv)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env,
                cwd=self._cwd,
                # Its own session: a Ctrl-C reaches pytest, which stops us in order.
                start_new_session=True,
                preexec_fn=_die_with_parent if self._die_with_parent else None,
            )

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)

    def check_running(self) -> None:
        """Raise ``ProcessExited`` with the log tail if the process has exited."""
        if self._proc is None:
            raise ProcessExited(f"{self.name} was never started")
        code = self._proc.poll()
        if code is not None:
            raise ProcessExited(
                f"{self.name} exited with code {code}; last lines of {self.log_path}:\n"
                f"{self.log_tail()}"
            )

    async def stop(self, *, grace: float = 10.0) -> None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL. Idempotent."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            await asyncio.to_thread(proc.wait, grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.to_thread(proc.wait)

    def kill_now(self) -> None:
        """Synchronous last resort, for finalizers that run without a loop."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()


def environ_without_proxies() -> dict[str, str]:
    """The environment for our servers: no HTTP proxy may divert loopback traffic."""
    return {
        k: v
        for k, v in os.environ.items()
        if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    }


def start_registered(
    processes: dict[str, ManagedProcess],
    name: str,
    argv: Sequence[str],
    *,
    log_path: Path,
    cwd: Path,
    die_with_parent: bool,
    netns: str | None = None,
) -> ManagedProcess:
    """Start ``argv`` as ``name`` (without proxy variables) and record it in ``processes``."""
    proc = ManagedProcess(
        name,
        argv,
        log_path=log_path,
        netns=netns,
        env=environ_without_proxies(),
        cwd=cwd,
        die_with_parent=die_with_parent,
    )
    processes[name] = proc
    proc.start()
    return proc


def check_all_running(
    processes: Iterable[ManagedProcess], *, owner: str, error: type[Exception]
) -> None:
    """Raise ``error("<owner>: <which exited, log tail>")`` if one of ``processes`` is gone."""
    for proc in processes:
        try:
            proc.check_running()
        except ProcessExited as exc:
            raise error(f"{owner}: {exc}") from None
