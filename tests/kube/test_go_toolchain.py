"""A newcomer's Go: the bootstrap run with no Go on PATH fetches the approved toolchain
from the Go module proxy, checks it against its pinned hash, unpacks it, and the result
builds and runs a Go program.

The unpacked toolchain goes to a temporary cache; the 76 MB module zip is kept in the
shared ``$VPNCTL_CACHE/go/downloads`` (``~/.cache/vpnctl``), so only a machine's first
run downloads it, and every run re-checks its hash and unpacks it afresh (~10-20 s).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vpnctl.testenv.gotoolchain import (
    GO_MINIMUM,
    GO_TOOLCHAIN,
    WELL_KNOWN_GOS,
    default_cache_dir,
    parse_go_version,
    platform_tag,
)

pytestmark = pytest.mark.kube

REPO = Path(__file__).resolve().parents[2]


def _machine_proxy() -> str:
    """The proxy a newcomer's Debian go would report; here from the machine's own Go,
    since the bootstrap's PATH below holds none."""
    if os.environ.get("GOPROXY"):
        return os.environ["GOPROXY"]
    for go in (shutil.which("go"), *map(str, WELL_KNOWN_GOS)):
        if go and os.access(go, os.X_OK):
            done = subprocess.run([go, "env", "GOPROXY"], capture_output=True, text=True)
            if done.returncode == 0 and done.stdout.strip():
                return done.stdout.strip()
    pytest.fail("no GOPROXY and no Go on this machine to ask for one")


def _bootstrap(env: dict[str, str], downloads: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "vpnctl.testenv.gotoolchain",
            "--path-only",
            "--download-dir",
            str(downloads),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_bootstrap_without_go_on_path_builds_a_program(tmp_path: Path) -> None:
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    env = {
        "HOME": str(tmp_path / "home"),
        "PATH": str(empty_bin),
        "VPNCTL_CACHE": str(tmp_path / "cache"),
        "GOPROXY": _machine_proxy(),
    }
    assert shutil.which("go", path=env["PATH"]) is None
    downloads = default_cache_dir() / "downloads"

    first = _bootstrap(env, downloads)
    assert first.returncode == 0, first.stderr
    go = Path(first.stdout.strip())
    assert go == tmp_path / "cache" / "go" / f"{GO_TOOLCHAIN}.{platform_tag()}" / "bin" / "go"
    assert f"{GO_TOOLCHAIN} ready" in first.stderr

    version = subprocess.run(
        [str(go), "version"], env={**env, "GOTOOLCHAIN": "local"}, capture_output=True, text=True
    )
    assert version.stdout.startswith(f"go version {GO_TOOLCHAIN} "), version
    parsed = parse_go_version(version.stdout)
    assert parsed is not None
    assert parsed >= GO_MINIMUM

    # The whole GOROOT came along with its tools executable: it compiles and links.
    module = tmp_path / "hello"
    module.mkdir()
    (module / "go.mod").write_text("module example.invalid/hello\n\ngo 1.26.0\n")
    (module / "main.go").write_text(
        'package main\n\nimport "os"\n\nfunc main() { os.Stdout.WriteString("built by "'
        " + os.Args[1] + \"\\n\") }\n"
    )
    build_env = {
        **env,
        "GOTOOLCHAIN": "local",
        "GOPROXY": "off",
        "GOFLAGS": "-mod=mod",
        "CGO_ENABLED": "0",
        "GOCACHE": str(tmp_path / "gocache"),
        "GOPATH": str(tmp_path / "gopath"),
    }
    built = subprocess.run(
        [str(go), "build", "-o", str(tmp_path / "hello-bin"), "."],
        cwd=module,
        env=build_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    ran = subprocess.run(
        [str(tmp_path / "hello-bin"), GO_TOOLCHAIN], capture_output=True, text=True, check=True
    )
    assert ran.stdout == f"built by {GO_TOOLCHAIN}\n"

    # A second run finds the unpacked toolchain and neither fetches nor unpacks.
    again = _bootstrap(env, downloads)
    assert again.returncode == 0, again.stderr
    assert Path(again.stdout.strip()) == go
    assert again.stderr == ""


def test_a_suitable_go_on_path_is_used_as_it_is(tmp_path: Path) -> None:
    installed = next(
        (p for p in WELL_KNOWN_GOS if os.access(p, os.X_OK)), None
    ) or shutil.which("go")
    if installed is None:
        pytest.skip("no Go installed on this machine")
    version = parse_go_version(
        subprocess.run([str(installed), "version"], capture_output=True, text=True).stdout
    )
    if version is None or version < GO_MINIMUM:
        pytest.skip(f"the installed Go ({version}) is older than {GO_MINIMUM}")
    env = {
        "HOME": str(tmp_path / "home"),
        "PATH": str(Path(installed).parent),
        "VPNCTL_CACHE": str(tmp_path / "cache"),
    }
    done = _bootstrap(env, tmp_path / "downloads")
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == Path(installed)
    assert not (tmp_path / "downloads").exists()
    assert not (tmp_path / "cache" / "go" / f"{GO_TOOLCHAIN}.{platform_tag()}").exists()
