"""The image as `make image` builds it here: from Debian's packages, without a registry.

The module fixture runs `scripts/build-image.py`, which reuses the cached image when
nothing that goes in has changed (well under a second) and builds it otherwise (about
1.5 min, the base included). The image is then run with buildah and runc (crun fails
on this host's hybrid cgroups) and read through `buildah mount`.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.image,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for buildah's system storage"),
    pytest.mark.timeout(1200),
]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "build-image.py"
SITE = Path("opt/vpnctl/lib/python3.11/site-packages")
UID = 65532


def build_image() -> tuple[dict[str, Any], float]:
    if shutil.which("buildah") is None or shutil.which("runc") is None:
        pytest.fail(
            "buildah and runc are missing: run scripts/install-image-tools.sh (make test does)"
        )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--json"],
        capture_output=True,
        text=True,
        timeout=1100,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, f"build-image failed:\n{done.stderr[-4000:]}"
    return json.loads(done.stdout), elapsed


@pytest.fixture(scope="module")
def image() -> dict[str, Any]:
    info, _ = build_image()
    return info


@pytest.fixture(scope="module")
def config(image: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run(
        ["buildah", "inspect", "--type", "image", image["ref"]],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return dict(json.loads(out)["OCIv1"]["config"])


@pytest.fixture(scope="module")
def container(image: dict[str, Any]) -> Iterator[str]:
    name = subprocess.run(
        ["buildah", "from", "--pull-never", image["ref"]],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.strip()
    try:
        yield name
    finally:
        subprocess.run(["buildah", "rm", name], capture_output=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def rootfs(container: str) -> Iterator[Path]:
    mounted = subprocess.run(
        ["buildah", "mount", container], capture_output=True, text=True, timeout=60, check=True
    ).stdout.strip()
    try:
        yield Path(mounted)
    finally:
        subprocess.run(
            ["buildah", "umount", container], capture_output=True, timeout=60, check=False
        )


def run_in(container: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """Runs ARGV in the image as its default user (no --user: the image's USER counts)."""
    return subprocess.run(
        ["buildah", "run", "--runtime", "runc", "--network", "none", container, "--", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_runs_as_uid_65532(container: str, config: dict[str, Any]) -> None:
    assert config.get("User") == f"{UID}:{UID}"
    ids = run_in(container, "python", "-c", "import os; print(os.getuid(), os.getgid())")
    assert ids.returncode == 0, ids.stderr
    assert ids.stdout.split() == [str(UID), str(UID)]
    assert config.get("Entrypoint") == ["vpnctl"]


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["vpnctl", "--help"], "usage: vpnctl"),
        (["vpnctl", "run", "--help"], "--leader-elect"),
        (["python", "-m", "agent", "--help"], "{node,server,apiserver}"),
        (["openvpn", "--version"], "OpenVPN 2.6"),
        (["nft", "--version"], "nftables"),
    ],
)
def test_commands_answer_in_the_image(container: str, argv: list[str], expect: str) -> None:
    done = run_in(container, *argv)
    assert done.returncode == 0, done.stderr
    assert expect in done.stdout + done.stderr


def test_lab_in_the_image_says_where_it_lives(container: str) -> None:
    done = run_in(container, "vpnctl", "lab", "down")
    assert done.returncode == 2
    assert "run it from a source checkout with `make lab`" in done.stderr
    assert "Traceback" not in done.stderr


def test_no_test_or_lab_code_and_no_build_leftovers(rootfs: Path) -> None:
    site = rootfs / SITE
    assert (site / "vpnctl" / "cli.py").is_file(), f"vpnctl is not installed in {SITE}"
    for absent in ("vpnctl/lab", "vpnctl/testenv", "tests"):
        assert not (site / absent).exists(), f"{absent} is in the image"
    for pkg in ("vpnctl", "agent", "certs"):
        dirs = [p for p in (site / pkg).rglob("*") if p.is_dir() and p.name in ("tests", "lab")]
        assert dirs == [], f"test or lab code in the image: {dirs}"
    # The build stage's sources, pip (the runtime installs nothing) and apt's lists.
    for absent in ("src", "opt/vpnctl/bin/pip", f"{SITE}/pip"):
        assert not (rootfs / absent).exists(), f"/{absent} is in the image"
    assert list((rootfs / "mnt").iterdir()) == [], "the wheelhouse mount left files in /mnt"
    assert list((rootfs / "var/lib/apt/lists").glob("*_Packages")) == []


def pem_certs(text: str) -> set[bytes]:
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", text, re.S)
    return {base64.b64decode("".join(b.split())) for b in blocks}


def test_no_host_ca_in_the_image(rootfs: Path, config: dict[str, Any]) -> None:
    # The CAs this host adds to Debian's set (the package registries' TLS here).
    host_local = set()
    for crt in Path("/usr/local/share/ca-certificates").rglob("*.crt"):
        host_local |= pem_certs(crt.read_text(errors="replace"))
    image_certs: dict[Path, set[bytes]] = {}
    for where in ("etc/ssl", "usr/local/share/ca-certificates", "usr/share/ca-certificates", "opt"):
        for path in (rootfs / where).rglob("*"):
            if path.is_file() and not path.is_symlink() and path.suffix in (".crt", ".pem"):
                image_certs[path] = pem_certs(path.read_text(errors="replace"))
    bundle = rootfs / "etc/ssl/certs/ca-certificates.crt"
    assert image_certs.get(bundle), "the image has no CA bundle of its own"
    leaked = {str(p.relative_to(rootfs)) for p, certs in image_certs.items() if certs & host_local}
    assert leaked == set(), f"host CA certificates baked into the image: {sorted(leaked)}"
    env = " ".join(config.get("Env") or [])
    for var in ("PIP_", "SSL_CERT", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        assert var not in env, f"{var} in the image's environment: {env}"


def test_oci_labels(config: dict[str, Any]) -> None:
    labels = config.get("Labels") or {}
    with (REPO / "pyproject.toml").open("rb") as f:
        version = tomllib.load(f)["project"]["version"]
    assert labels.get("org.opencontainers.image.version") == version
    assert re.fullmatch(
        r"[0-9a-f]{40}(-dirty)?", labels.get("org.opencontainers.image.revision", "")
    )
    assert labels.get("org.opencontainers.image.source", "").startswith("https://")
    assert labels.get("org.opencontainers.image.title") == "vpnctl"
    # An SPDX expression; NOASSERTION while pyproject.toml declares no license.
    assert re.fullmatch(r"[A-Za-z0-9.+() -]+", labels.get("org.opencontainers.image.licenses", ""))
    created = dt.datetime.fromisoformat(labels["org.opencontainers.image.created"])
    assert created.tzinfo is not None
    assert created <= dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    revision = labels["org.opencontainers.image.revision"]
    if not revision.endswith("-dirty"):
        # A clean build is stamped with its commit's time, not the clock's.
        committed = subprocess.run(
            ["git", "-C", str(REPO), "show", "-s", "--format=%ct", revision],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert created == dt.datetime.fromtimestamp(int(committed), dt.UTC)


def test_second_build_reuses_the_cache(image: dict[str, Any]) -> None:
    again, elapsed = build_image()
    assert again["ref"] == image["ref"] == f"localhost/vpnctl:{again['key']}"
    assert again["cached"] is True
    assert elapsed < 15, f"a build with nothing changed took {elapsed:.1f}s"
    archive = Path(again["archive"])
    cache_root = Path(os.environ.get("VPNCTL_CACHE") or Path.home() / ".cache" / "vpnctl")
    assert archive.parent == cache_root / "images", "the archive is not in the cache"
    # An OCI archive `ctr images import` takes, naming the image.
    with tarfile.open(archive) as tar:
        assert "oci-layout" in tar.getnames()
        index_member = tar.extractfile("index.json")
        assert index_member is not None
        index = json.load(index_member)
    names = [
        m.get("annotations", {}).get("org.opencontainers.image.ref.name")
        for m in index["manifests"]
    ]
    assert image["ref"] in names or image["key"] in names, names
