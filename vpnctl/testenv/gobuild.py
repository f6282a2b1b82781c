"""The Go plumbing of ``vpnctl.testenv.build``: a toolchain (found or fetched by
``gotoolchain``), a wrapper module per build, a long command with a heartbeat and its
log, atomic installation into the version-keyed cache, and the file lock that
serialises builders."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from vpnctl.testenv.gotoolchain import ToolchainError, ensure_go

HEARTBEAT_SECONDS = 15.0

Progress = Callable[[str], None]


class BuildError(RuntimeError):
    """A component could not be built; the message says which and where the log is."""


def fmt_elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class GoBuilder:
    """Builds into ``<cache_dir>/<component>-<version>/<component>``."""

    def __init__(self, *, cache_dir: Path, progress: Progress, env: dict[str, str]) -> None:
        self.cache = cache_dir
        self.progress = progress
        self.env = env
        self._go_path: Path | None = None

    def entry(self, component: str, version: str) -> Path:
        return self.cache / f"{component}-{version}"

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        with open(self.cache / ".build.lock", "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.progress(f"another build holds {self.cache / '.build.lock'}; waiting")
                fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    # - go plumbing

    def _go(self) -> str:
        """A Go new enough for every pinned module (``GOTOOLCHAIN=local`` below), found
        or fetched once per builder by ``vpnctl.testenv.gotoolchain``."""
        if self._go_path is None:
            try:
                self._go_path = ensure_go(env=self.env, progress=self.progress)
            except ToolchainError as exc:
                raise BuildError(str(exc)) from exc
        return str(self._go_path)

    def _go_env(self) -> dict[str, str]:
        env = dict(self.env)
        env.update(
            GOFLAGS="-mod=mod",
            GOTOOLCHAIN="local",
            GOWORK="off",
            # Static binaries, like upstream's releases: they run in any netns or chroot.
            CGO_ENABLED="0",
        )
        return env

    def _run(
        self,
        what: str,
        argv: Sequence[str],
        *,
        cwd: Path,
        log: Path,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        """Run a long command with a heartbeat, its output going to ``log``."""
        started = time.monotonic()
        log.parent.mkdir(parents=True, exist_ok=True)
        self.progress(f"{what}: started (log: {log})")
        with open(log, "ab") as out:
            out.write(f"\n$ {' '.join(argv)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env={**self._go_env(), **(extra_env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            try:
                while True:
                    try:
                        proc.wait(timeout=HEARTBEAT_SECONDS)
                        break
                    except subprocess.TimeoutExpired:
                        elapsed = fmt_elapsed(time.monotonic() - started)
                        self.progress(f"{what}: still running, {elapsed} elapsed{_last_line(log)}")
            except BaseException:
                proc.kill()
                proc.wait()
                raise
        elapsed = fmt_elapsed(time.monotonic() - started)
        if proc.returncode != 0:
            raise BuildError(
                f"{what} failed after {elapsed} (exit {proc.returncode}); "
                f"last lines of {log}:\n{_tail(log)}"
            )
        self.progress(f"{what}: done in {elapsed}")

    def _wrapper_module(self, name: str, go_mod: str, go_files: Mapping[str, str]) -> Path:
        """A throw-away module in the cache that requires what we build."""
        src = self.cache / "src" / name
        src.mkdir(parents=True, exist_ok=True)
        mod = src / "go.mod"
        # Rewrite go.mod only when its pins change: go fills in requirements itself.
        marker = src / ".go.mod.in"
        if not marker.exists() or marker.read_text() != go_mod:
            # go.sum stays: stale lines in it are harmless and save sumdb lookups.
            mod.write_text(go_mod)
            marker.write_text(go_mod)
        for filename, text in go_files.items():
            (src / filename).write_text(text)
        return src

    def _install(self, built: dict[str, Path], version: str) -> None:
        """Move each built file into its own version-keyed entry, atomically."""
        for component, path in built.items():
            final = self.entry(component, version)
            staging = Path(tempfile.mkdtemp(prefix=f".tmp-{component}-", dir=self.cache))
            staging.chmod(0o755)
            shutil.move(str(path), staging / component)
            if os.access(final / component, os.X_OK):  # a concurrent builder beat us
                shutil.rmtree(staging)
                continue
            shutil.rmtree(final, ignore_errors=True)  # a damaged entry, if any
            os.rename(staging, final)

    @contextlib.contextmanager
    def _tmpdir(self, component: str) -> Iterator[Path]:
        path = Path(tempfile.mkdtemp(prefix=f".tmp-build-{component}-", dir=self.cache))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def _go_argv(self, verb: str, ldflags: str) -> list[str]:
        """``go build`` or ``go install``: verbose, two jobs, reproducible paths."""
        return [self._go(), verb, "-v", "-p", "2", "-trimpath", "-ldflags", ldflags]

    def _go_build(
        self,
        component: str,
        version: str,
        *,
        src: Path,
        ldflags: str,
        output: str,
        packages: Sequence[str],
        what: str = "go build",
    ) -> None:
        """``go build`` of ``packages`` in the module at ``src`` into ``output``, logged to
        the component's log."""
        self._run(
            f"{component} {version}: {what}",
            [*self._go_argv("build", ldflags), "-o", output, *packages],
            cwd=src,
            log=self.cache / "logs" / f"{component}-{version}.log",
        )

    def _go_install(self, component: str, package: str, version: str, ldflags: str) -> None:
        with self._tmpdir(component) as out:
            self._run(
                f"{component} {version}: go install",
                [*self._go_argv("install", ldflags), f"{package}@{version}"],
                cwd=out,
                log=self.cache / "logs" / f"{component}-{version}.log",
                extra_env={"GOBIN": str(out)},
            )
            self._install({component: out / component}, version)


def _tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _last_line(log: Path) -> str:
    """What go is at: with -v, the package it just compiled."""
    last = _tail(log, 1).strip()
    return f" (at: {last[:100]})" if last and last != "(no log)" else ""
