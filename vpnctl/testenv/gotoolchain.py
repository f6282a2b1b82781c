"""A Go that can build the pinned modules, even on a machine that has only Debian's.

Every build in ``vpnctl.testenv.build`` runs with ``GOTOOLCHAIN=local``: the go
command builds with itself and never switches on its own, so the Go found must
already be new enough for every ``go`` line in the modules we build (helm v3.21.4,
controller-tools v0.23.0 and etcd v3.6.16 say ``go 1.26.0``). Debian 12's
``golang-go`` is Go 1.19, which is too old, and too old to switch toolchains itself
(``GOTOOLCHAIN`` arrived in Go 1.21).

So, as ``GOTOOLCHAIN=go1.27.3`` would, we take the toolchain from the Go module
proxy, where it is the module ``golang.org/toolchain`` at
``v0.0.1-go1.27.3.<os>-<arch>``: a zip of a whole GOROOT. It is checked against the
module hash pinned below (the ``h1:`` hash the checksum database records, so the
bytes are the ones every ``go`` would accept), unpacked outside the repository
(``<cache>/go/go1.27.3.linux-amd64/``) and its commands made executable (the module
zip keeps no file modes; the go command does the same after its own download).

Resolution, first match wins:

1. ``go`` on ``PATH``, if its version is at least ``GO_MINIMUM``;
2. the well-known places a Go is installed by hand (``/usr/local/go``), same test;
3. our unpacked toolchain in the cache;
4. download, check and unpack it.

The proxy is ``$GOPROXY`` or, when that is unset, what any Go on the machine reports
(Debian's too: ``go env GOPROXY``), so no address is written here. Standard library
only: ``python3 -m vpnctl.testenv.gotoolchain`` works before the venv exists.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

# The newest `go` line among the modules vpnctl.testenv.build pins (see the docstring).
GO_MINIMUM = (1, 26, 0)
# The toolchain the package index approves for machines whose Go is older.
GO_TOOLCHAIN = "go1.27.3"
# h1: module hashes of golang.org/toolchain@v0.0.1-<GO_TOOLCHAIN>.<goos>-<goarch>, as
# the checksum database has them. Another platform needs its line here.
TOOLCHAIN_SUMS = {
    "linux-amd64": "h1:r0ub+FnqzZxoWm/dSUOI9DcIqYWn/mNYGFJcv7PyBzs=",
}
WELL_KNOWN_GOS = (Path("/usr/local/go/bin/go"),)
# Where a Go too old to build may still be asked for the proxy (Debian's golang-go).
PROXY_ORACLES = (Path("/usr/bin/go"), Path("/usr/lib/go/bin/go"))
DOWNLOAD_TIMEOUT_SECONDS = 60.0

Progress = Callable[[str], None]


class ToolchainError(RuntimeError):
    """No suitable Go could be found or made; the message says what to do."""


def _stderr(message: str) -> None:
    print(f"[go-toolchain] {message}", file=sys.stderr, flush=True)


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$VPNCTL_CACHE/go``, by default ``~/.cache/vpnctl/go``."""
    env = os.environ if env is None else env
    root = env.get("VPNCTL_CACHE") or str(Path(env.get("HOME") or Path.home()) / ".cache/vpnctl")
    return Path(root) / "go"


def parse_go_version(text: str) -> tuple[int, int, int] | None:
    """``go version go1.26.8 linux/amd64`` (or a bare ``go1.22``) -> (1, 26, 8)."""
    match = re.search(r"\bgo(\d+)\.(\d+)(?:\.(\d+))?", text)
    if match is None:
        return None
    return int(match[1]), int(match[2]), int(match[3] or 0)


def go_version(go: Path, env: Mapping[str, str]) -> tuple[int, int, int] | None:
    """What ``go version`` says, run with ``GOTOOLCHAIN=local`` so it cannot switch."""
    try:
        done = subprocess.run(
            [str(go), "version"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**env, "GOTOOLCHAIN": "local"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_go_version(done.stdout) if done.returncode == 0 else None


def platform_tag() -> str:
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        machine, machine
    )
    return f"{sys.platform}-{arch}"


def module_version(tag: str) -> str:
    return f"v0.0.1-{GO_TOOLCHAIN}.{tag}"


def zip_hash(path: Path) -> str:
    """The module's ``h1:`` hash: SHA-256 over the sorted ``<sha256>  <name>`` lines of
    the zip's files, as the go command computes it (golang.org/x/mod/sumdb/dirhash)."""
    lines = []
    with zipfile.ZipFile(path) as archive:
        for name in sorted(archive.namelist()):
            if name.endswith("/"):
                continue
            digest = hashlib.sha256()
            with archive.open(name) as member:
                for chunk in iter(lambda: member.read(1 << 20), b""):
                    digest.update(chunk)
            lines.append(f"{digest.hexdigest()}  {name}\n")
    summary = hashlib.sha256("".join(lines).encode()).digest()
    return "h1:" + base64.b64encode(summary).decode()


class _Resolver:
    def __init__(
        self,
        *,
        cache_dir: Path,
        env: Mapping[str, str],
        well_known: Sequence[Path],
        download_dir: Path,
        progress: Progress,
    ) -> None:
        self.cache = cache_dir
        self.env = dict(env)
        self.well_known = well_known
        self.downloads = download_dir
        self.progress = progress
        self.tag = platform_tag()
        self.root = cache_dir / f"{GO_TOOLCHAIN}.{self.tag}"

    def suitable(self, go: Path) -> bool:
        version = go_version(go, self.env)
        return version is not None and version >= GO_MINIMUM

    def installed(self) -> Path | None:
        on_path = shutil.which("go", path=self.env.get("PATH", ""))
        candidates = [Path(on_path)] if on_path else []
        candidates += [p for p in self.well_known if os.access(p, os.X_OK)]
        for go in candidates:
            if self.suitable(go):
                return go
        return None

    def cached(self) -> Path | None:
        go = self.root / "bin" / "go"
        return go if os.access(go, os.X_OK) and self.suitable(go) else None

    def proxies(self) -> list[str]:
        """$GOPROXY, else what a Go on this machine reports; only http(s) entries."""
        value = self.env.get("GOPROXY", "")
        if not value:
            on_path = shutil.which("go", path=self.env.get("PATH", ""))
            oracles = [Path(on_path)] if on_path else []
            oracles += [*self.well_known, *PROXY_ORACLES]
            for go in oracles:
                if not os.access(go, os.X_OK):
                    continue
                with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                    done = subprocess.run(
                        [str(go), "env", "GOPROXY"],
                        capture_output=True,
                        text=True,
                        timeout=60,
                        check=False,
                        env={**self.env, "GOTOOLCHAIN": "local"},
                    )
                    if done.returncode == 0 and done.stdout.strip():
                        value = done.stdout.strip()
                        break
        urls = [p.strip().rstrip("/") for p in re.split(r"[,|]", value)]
        return [u for u in urls if u.startswith(("https://", "http://"))]

    def download(self) -> Path:
        """The module zip in the download folder, checked against its pinned hash."""
        want = TOOLCHAIN_SUMS.get(self.tag)
        if want is None:
            raise ToolchainError(
                f"no pinned hash of the {GO_TOOLCHAIN} toolchain for {self.tag}; install Go "
                f">= {'.'.join(map(str, GO_MINIMUM))} on PATH, or add its h1: hash to "
                "TOOLCHAIN_SUMS in vpnctl/testenv/gotoolchain.py"
            )
        version = module_version(self.tag)
        target = self.downloads / f"golang.org-toolchain-{version}.zip"
        if target.is_file() and zip_hash(target) == want:
            return target
        proxies = self.proxies()
        if not proxies:
            raise ToolchainError(
                f"no Go >= {'.'.join(map(str, GO_MINIMUM))} on PATH and no Go module proxy "
                "to fetch one from: set GOPROXY, or install Debian's golang-go "
                "(scripts/install-system.sh does) so `go env GOPROXY` can say"
            )
        self.downloads.mkdir(parents=True, exist_ok=True)
        failures = []
        for proxy in proxies:
            url = f"{proxy}/golang.org/toolchain/@v/{version}.zip"
            partial = target.with_name(target.name + f".{os.getpid()}.partial")
            started = time.monotonic()
            self.progress(f"downloading golang.org/toolchain@{version} from {proxy}")
            try:
                with (
                    urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as answer,
                    open(partial, "wb") as out,
                ):
                    shutil.copyfileobj(answer, out, 1 << 20)
            except (urllib.error.URLError, OSError, TimeoutError) as exc:
                partial.unlink(missing_ok=True)
                failures.append(f"{url}: {exc}")
                continue
            got = zip_hash(partial)
            if got != want:
                partial.unlink(missing_ok=True)
                failures.append(f"{url}: module hash {got}, pinned {want}")
                continue
            os.replace(partial, target)
            size = target.stat().st_size / 1e6
            self.progress(f"downloaded {size:.0f} MB in {time.monotonic() - started:.1f}s")
            return target
        raise ToolchainError("could not fetch the Go toolchain:\n  " + "\n  ".join(failures))

    def unpack(self, archive: Path) -> Path:
        """The zip's GOROOT into ``self.root``, atomically, commands executable."""
        prefix = f"golang.org/toolchain@{module_version(self.tag)}/"
        staging = Path(tempfile.mkdtemp(prefix=".tmp-go-", dir=self.cache))
        try:
            with zipfile.ZipFile(archive) as zipped:
                for info in zipped.infolist():
                    if not info.filename.startswith(prefix) or info.is_dir():
                        continue
                    rel = info.filename.removeprefix(prefix)
                    dest = (staging / rel).resolve()
                    if not dest.is_relative_to(staging.resolve()):
                        raise ToolchainError(f"{archive}: {info.filename} leaves the GOROOT")
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with zipped.open(info) as src, open(dest, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                    executable = rel.startswith(("bin/", "pkg/tool/"))
                    dest.chmod(0o755 if executable else 0o644)
            staging.chmod(0o755)
            if not os.access(staging / "bin" / "go", os.X_OK):
                raise ToolchainError(f"{archive} holds no bin/go under {prefix}")
            shutil.rmtree(self.root, ignore_errors=True)  # a damaged entry, if any
            os.rename(staging, self.root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self.root / "bin" / "go"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        self.cache.mkdir(parents=True, exist_ok=True)
        with open(self.cache / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def ensure(self) -> Path:
        found = self.installed() or self.cached()
        if found:
            return found
        with self.lock():
            found = self.cached()  # another process may have unpacked it meanwhile
            if found:
                return found
            started = time.monotonic()
            go = self.unpack(self.download())
            if not self.suitable(go):
                raise ToolchainError(f"{go} was unpacked but `go version` fails or is too old")
            elapsed = time.monotonic() - started
            self.progress(f"{GO_TOOLCHAIN} ready in {self.root} ({elapsed:.1f}s)")
            return go


def ensure_go(
    *,
    env: Mapping[str, str] | None = None,
    cache_dir: Path | None = None,
    download_dir: Path | None = None,
    well_known: Sequence[Path] = WELL_KNOWN_GOS,
    progress: Progress | None = None,
) -> Path:
    """The path of a ``go`` at least ``GO_MINIMUM``, fetching ``GO_TOOLCHAIN`` if none is
    installed. ``download_dir`` (default: ``<cache_dir>/downloads``) keeps the checked
    module zip, so a fresh ``cache_dir`` unpacks without downloading again. Blocking."""
    env = os.environ if env is None else env
    cache = cache_dir or default_cache_dir(env)
    return _Resolver(
        cache_dir=cache,
        env=env,
        well_known=well_known,
        download_dir=download_dir or cache / "downloads",
        progress=progress or _stderr,
    ).ensure()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m vpnctl.testenv.gotoolchain",
        description=f"Print the path of a Go >= {'.'.join(map(str, GO_MINIMUM))}, "
        f"fetching {GO_TOOLCHAIN} from the Go module proxy when none is installed.",
    )
    parser.add_argument(
        "--path-only",
        action="store_true",
        help="look for an installed Go on PATH only, not in /usr/local/go",
    )
    parser.add_argument(
        "--download-dir",
        type=Path,
        default=None,
        help="where the checked module zip is kept (default: <cache>/downloads)",
    )
    args = parser.parse_args(argv)
    try:
        go = ensure_go(
            well_known=() if args.path_only else WELL_KNOWN_GOS, download_dir=args.download_dir
        )
    except ToolchainError as exc:
        print(f"go-toolchain: FAILED: {exc}", file=sys.stderr)
        return 1
    print(go)
    return 0


if __name__ == "__main__":
    sys.exit(main())
