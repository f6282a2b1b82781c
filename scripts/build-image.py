#!/usr/bin/env python3
"""Builds vpnctl's one image (controller and every agent role) here, without a registry.

This machine reaches Debian's mirror and PyPI but no container registry, so:

1. the base is made from Debian's packages with mmdebstrap (minbase plus what the roles
   run), imported into buildah's storage as ``localhost/vpnctl-base:<recipe hash>``;
2. the Python dependencies, exactly ``requirements/runtime.lock`` and the build backend
   of ``requirements/build.lock``, are downloaded as wheels on the host, where PyPI's
   TLS is trusted, in pip's hash-checking mode, and handed to the build through a
   volume mounted only during ``RUN`` (``WHEELHOUSE``), where pip checks the hashes
   again: no host CA bundle and no index credential enters a layer;
3. ``buildah bud`` builds the repository's ``Dockerfile`` unchanged, with
   ``BASE_IMAGE`` pointing at that base, and never pulls.

The result is keyed by a hash of everything that goes in (Dockerfile, packaging files,
the shipped source files, the base recipe, this script's recipe version): it is tagged
``localhost/vpnctl:<key>`` in buildah's storage and saved as an OCI archive in
``$VPNCTL_CACHE/images/`` (default ``~/.cache/vpnctl/images``) for
``ctr -n k8s.io images import``. A second run with nothing changed finds both and only
prints the reference. The revision label names the commit the image was built from
(``-dirty`` when its inputs differed from that commit); a later commit whose inputs are
the same reuses the image and keeps that label; the created label is that commit's time
(the build's own time when dirty), so the labels follow the inputs, not the clock.
stdout carries the reference alone (or JSON with ``--json``); progress goes to stderr.

Needs root (buildah's system storage, mmdebstrap's root mode) and the tools that
``scripts/install-image-tools.sh`` installs (``make image`` runs it first).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import datetime as dt
import fcntl
import fnmatch
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Bump when the way the image is made changes in a way the inputs below don't show.
RECIPE_VERSION = "1"
IMAGE_NAME = "localhost/vpnctl"
ARCHIVE_RE = re.compile(r"vpnctl-[0-9a-f]{16}\.oci\.tar")
BASE_NAME = "localhost/vpnctl-base"
UID = 65532

# The base recipe. The packages are the Dockerfile's RUNTIME_PACKAGES, so its install
# step finds nothing missing and the image build never reaches a mirror.
BASE_SUITE = "bookworm"
BASE_VARIANT = "minbase"
# bookworm's python3; the host builds the dependency wheels, so it must match.
BASE_PYTHON = (3, 11)
BASE_PACKAGES = (
    "python3",
    "python3-venv",
    "openvpn",
    "iproute2",
    "iptables",
    "nftables",
    "conntrack",
    "ca-certificates",
)
BASE_SOURCES = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
# What debian:bookworm-slim leaves out too: documentation (copyright files stay),
# manual pages, translations.
BASE_DPKGOPTS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/info/*",
)
# mmdebstrap leaves apt's caches and lists unless told.
BASE_HOOKS = (
    'chroot "$1" apt-get clean',
    'rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/apt/*',
)

# The build context: packaging files, the dependency locks and the source trees;
# pyproject.toml and setup.py decide what of the trees ships, and the hash follows
# that decision.
RUNTIME_LOCK = "requirements/runtime.lock"
BUILD_LOCK = "requirements/build.lock"
CONTEXT_FILES = ("Dockerfile", "pyproject.toml", "setup.py", RUNTIME_LOCK, BUILD_LOCK)
SOURCE_TREES = ("vpnctl", "agent", "certs", "telemetry")


class ImageError(Exception):
    """A failure a person fixes; the message says what and how."""


def log(msg: str) -> None:
    print(f"build-image: {msg}", file=sys.stderr, flush=True)


def default_cache_dir() -> Path:
    root = os.environ.get("VPNCTL_CACHE") or str(Path.home() / ".cache" / "vpnctl")
    return Path(root) / "images"


def run(cmd: Sequence[str], *, what: str, capture: bool = False) -> str:
    """Runs a command; on failure raises with its last output lines and the command."""
    proc = subprocess.run(
        list(cmd),
        stdout=subprocess.PIPE if capture else sys.stderr,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or "").strip().splitlines()[-15:])
        raise ImageError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    if not capture and proc.stderr:
        sys.stderr.write(proc.stderr)
    return proc.stdout or ""


def check_host() -> None:
    if os.geteuid() != 0:
        raise ImageError(
            "needs root: buildah's system storage and mmdebstrap's root mode; run `sudo make image`"
        )
    if sys.version_info[:2] != BASE_PYTHON:
        want = ".".join(map(str, BASE_PYTHON))
        raise ImageError(
            f"the dependency wheels are built with this interpreter ({sys.version.split()[0]}) "
            f"but the image runs Python {want} ({BASE_SUITE}); run with a Python {want} "
            "(`make image` uses .venv/bin/python)"
        )
    missing = [t for t in ("buildah", "mmdebstrap", "runc") if shutil.which(t) is None]
    if missing:
        raise ImageError(
            f"missing {', '.join(missing)}; run scripts/install-image-tools.sh "
            "(`make image` runs it for you)"
        )


# --- what goes in ----------------------------------------------------------------


def _excluded_packages(repo: Path) -> list[str]:
    """`[tool.setuptools.packages.find] exclude` patterns (dotted names, fnmatch)."""
    with (repo / "pyproject.toml").open("rb") as f:
        data = tomllib.load(f)
    find = data.get("tool", {}).get("setuptools", {}).get("packages", {}).get("find", {})
    return list(find.get("exclude", []))


def _excluded_modules(repo: Path) -> set[tuple[str, str]]:
    """setup.py's TEST_SUPPORT_MODULES, read without running setup.py."""
    tree = ast.parse((repo / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value_node = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value_node = [node.target], node.value
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == "TEST_SUPPORT_MODULES" for t in targets):
            value = ast.literal_eval(value_node)
            return {(str(p), str(m)) for p, m in value}
    raise ImageError(f"{repo / 'setup.py'} defines no TEST_SUPPORT_MODULES")


def shipped_files(repo: Path) -> list[Path]:
    """The files of the build context, relative to repo, sorted: the packaging files
    and the Python modules the wheel ships. Caches and build leftovers never count."""
    excluded_pkgs = _excluded_packages(repo)
    excluded_mods = _excluded_modules(repo)
    files = [Path(name) for name in CONTEXT_FILES]
    for tree in SOURCE_TREES:
        for path in sorted((repo / tree).rglob("*.py")):
            rel = path.relative_to(repo)
            package = ".".join(rel.parent.parts)
            if "__pycache__" in rel.parts:
                continue
            if any(fnmatch.fnmatchcase(package, pat) for pat in excluded_pkgs):
                continue
            if (package, rel.stem) in excluded_mods:
                continue
            files.append(rel)
    for rel in files:
        if not (repo / rel).is_file():
            raise ImageError(f"{repo / rel} is missing; the image is built from it")
    return files


def base_key() -> str:
    recipe = [
        RECIPE_VERSION,
        BASE_SUITE,
        BASE_VARIANT,
        BASE_PACKAGES,
        BASE_SOURCES,
        BASE_DPKGOPTS,
        BASE_HOOKS,
    ]
    blob = json.dumps(recipe)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def image_key(repo: Path, files: Sequence[Path]) -> str:
    h = hashlib.sha256()
    h.update(f"recipe {RECIPE_VERSION}\nbase {base_key()}\n".encode())
    # This script is an input too: how it calls buildah shapes the image.
    h.update(hashlib.sha256(Path(__file__).read_bytes()).digest())
    for rel in files:
        h.update(f"{rel}\0".encode())
        h.update(hashlib.sha256((repo / rel).read_bytes()).digest())
    return h.hexdigest()[:16]


def _version(repo: Path) -> str:
    with (repo / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def _licenses(repo: Path) -> str:
    """pyproject.toml's license as an SPDX expression; NOASSERTION when it names none."""
    with (repo / "pyproject.toml").open("rb") as f:
        declared = tomllib.load(f)["project"].get("license")
    if isinstance(declared, str) and declared:
        return declared
    return "NOASSERTION"


def _created(repo: Path, revision: str) -> str:
    """RFC 3339 UTC: the commit's time for a clean revision, else now."""
    if revision != "unknown" and not revision.endswith("-dirty"):
        done = subprocess.run(
            ["git", "-C", str(repo), "show", "-s", "--format=%ct", revision],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode == 0 and done.stdout.strip().isdigit():
            when = dt.datetime.fromtimestamp(int(done.stdout.strip()), dt.UTC)
            return when.isoformat().replace("+00:00", "Z")
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    return now.isoformat().replace("+00:00", "Z")


def _revision(repo: Path, files: Sequence[Path]) -> str:
    """HEAD's commit, with `-dirty` when a file that goes in differs from it."""
    head = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    if head.returncode != 0:
        return "unknown"
    status = subprocess.run(
        ["git", "-C", str(repo), "status", "--porcelain", "--", *map(str, files)],
        capture_output=True,
        text=True,
        check=False,
    )
    return head.stdout.strip() + ("-dirty" if status.stdout.strip() else "")


# --- buildah storage and the cache -------------------------------------------------


def have_image(ref: str) -> bool:
    return (
        subprocess.run(
            ["buildah", "inspect", "--type", "image", ref], capture_output=True, check=False
        ).returncode
        == 0
    )


@contextlib.contextmanager
def locked(cache: Path) -> Iterator[None]:
    """One build at a time per cache (a test and `make image` may race)."""
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_base(cache: Path) -> str:
    ref = f"{BASE_NAME}:{base_key()}"
    if have_image(ref):
        return ref
    log(f"making the base {ref} from Debian packages with mmdebstrap")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=cache, prefix="base-") as tmp:
        tarball = Path(tmp) / "rootfs.tar"
        cmd = [
            "mmdebstrap",
            "--mode=root",
            f"--variant={BASE_VARIANT}",
            "--include=" + ",".join(BASE_PACKAGES),
            *(f"--dpkgopt={o}" for o in BASE_DPKGOPTS),
            *(f"--customize-hook={h}" for h in BASE_HOOKS),
            BASE_SUITE,
            str(tarball),
            *BASE_SOURCES,
        ]
        run(cmd, what="mmdebstrap (the base from Debian's packages)")
        ctr = run(["buildah", "from", "scratch"], what="buildah from scratch", capture=True).strip()
        try:
            run(["buildah", "add", ctr, str(tarball), "/"], what="buildah add (the base rootfs)")
            run(
                [
                    "buildah", "config",
                    "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "--cmd", "/bin/bash",
                    "--label", f"io.vpnctl.base.recipe={base_key()}",
                    ctr,
                ],
                what="buildah config (the base)",
            )  # fmt: skip
            run(["buildah", "commit", "--rm", ctr, ref], what="buildah commit (the base)")
        except BaseException:
            subprocess.run(["buildah", "rm", ctr], capture_output=True, check=False)
            raise
    log(f"base {ref} made in {time.monotonic() - started:.1f}s")
    return ref


def stage(repo: Path, files: Sequence[Path], dest: Path) -> None:
    for rel in files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / rel, dest / rel)


def build_wheelhouse(repo: Path, dest: Path) -> None:
    """The locked wheels of every dependency and of the build backend, downloaded on the
    host where PyPI's TLS is trusted and checked against the locks' hashes; the image
    build installs from them with --no-index and checks them again. Wheels only: a
    wheel built here would match no hash in the lock."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    run(
        [
            *pip, "download", "-q", "--only-binary=:all:", "--require-hashes",
            "--dest", str(dest),
            "-r", str(repo / RUNTIME_LOCK), "-r", str(repo / BUILD_LOCK),
        ],
        what="pip download (the locked dependencies and build backend)",
    )  # fmt: skip


def build(repo: Path, cache: Path, key: str, files: Sequence[Path], archive: Path) -> str:
    ref = f"{IMAGE_NAME}:{key}"
    base = ensure_base(cache)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=cache, prefix="ctx-") as tmp:
        ctx = Path(tmp) / "src"
        wheelhouse = Path(tmp) / "wheelhouse"
        stage(repo, files, ctx)
        log("downloading the locked wheels on the host")
        build_wheelhouse(repo, wheelhouse)
        revision = _revision(repo, files)
        log(f"buildah bud {ref} (BASE_IMAGE={base})")
        run(
            [
                "buildah", "bud",
                "--pull-never",
                "--runtime", "runc",
                "--network", "none",
                # /mnt exists (empty) in every Debian root: no mount point is left behind.
                "--volume", f"{wheelhouse}:/mnt:ro",
                "--build-arg", f"BASE_IMAGE={base}",
                "--build-arg", "WHEELHOUSE=/mnt",
                "--build-arg", f"VERSION={_version(repo)}",
                "--build-arg", f"REVISION={revision}",
                "--build-arg", f"CREATED={_created(repo, revision)}",
                "--build-arg", f"LICENSES={_licenses(repo)}",
                "--label", f"io.vpnctl.image.key={key}",
                "--tag", ref,
                "--file", str(ctx / "Dockerfile"),
                str(ctx),
            ],
            what="buildah bud (the image)",
        )  # fmt: skip
    log(f"image {ref} built in {time.monotonic() - started:.1f}s")
    save_archive(ref, archive)
    return ref


def save_archive(ref: str, archive: Path) -> None:
    partial = archive.with_name(archive.name + ".partial")
    partial.unlink(missing_ok=True)
    run(
        ["buildah", "push", "--quiet", ref, f"oci-archive:{partial}:{ref}"],
        what="buildah push (the OCI archive)",
    )
    partial.rename(archive)


def prune(cache: Path, keep: str, *, recent: int = 3) -> None:
    """Older images of ours go, their archives and their tags in buildah's storage;
    KEEP and the RECENT newest stay (several checkouts may share the cache)."""
    # Only vpnctl-<key>.oci.tar: other images share the folder (vpnctl-pause-<key>, ...).
    ours = [p for p in cache.glob("vpnctl-*.oci.tar") if ARCHIVE_RE.fullmatch(p.name)]
    archives = sorted(ours, key=lambda p: p.stat().st_mtime)
    for old in archives[:-recent]:
        key = old.name.removeprefix("vpnctl-").removesuffix(".oci.tar")
        if key == keep:
            continue
        old.unlink(missing_ok=True)
        old.with_name(f"vpnctl-{key}.json").unlink(missing_ok=True)
        subprocess.run(["buildah", "rmi", f"{IMAGE_NAME}:{key}"], capture_output=True, check=False)


def ensure_image(repo: Path, cache: Path, *, rebuild: bool = False) -> dict[str, object]:
    check_host()
    files = shipped_files(repo)
    key = image_key(repo, files)
    ref = f"{IMAGE_NAME}:{key}"
    archive = cache / f"vpnctl-{key}.oci.tar"
    meta = cache / f"vpnctl-{key}.json"
    started = time.monotonic()
    with locked(cache):
        if rebuild:
            subprocess.run(["buildah", "rmi", ref], capture_output=True, check=False)
            archive.unlink(missing_ok=True)
        stored, saved = have_image(ref), archive.is_file()
        if stored and saved and meta.is_file():
            info = json.loads(meta.read_text())
            info["cached"] = True
            return dict(info)
        how = "built"
        if saved and not stored:
            how = "restored from the OCI archive"
            log(f"restoring {ref} from {archive}")
            pulled = run(
                ["buildah", "pull", "--quiet", f"oci-archive:{archive}"],
                what="buildah pull",
                capture=True,
            ).split()
            if not pulled:
                raise ImageError(f"buildah pull of {archive} printed no image ID; delete it")
            run(["buildah", "tag", pulled[-1], ref], what="buildah tag")
        elif stored and not saved:
            how = "archived from buildah's storage"
            save_archive(ref, archive)
        elif not stored:
            build(repo, cache, key, files, archive)
        info = {
            "ref": ref,
            "key": key,
            "archive": str(archive),
            "archive_bytes": archive.stat().st_size,
            "image_size": _image_size(ref),
            "how": how,
            "seconds": round(time.monotonic() - started, 1),
        }
        meta.write_text(json.dumps(info, indent=2) + "\n")
        prune(cache, keep=key)
        info["cached"] = False
        return info


def _image_size(ref: str) -> str:
    """Unpacked size as buildah reports it ("303 MB")."""
    out = run(["buildah", "images", "--json", ref], what="buildah images", capture=True)
    entries = json.loads(out)
    return str(entries[0].get("size", "unknown")) if entries else "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache-dir", type=Path, default=None, help="default: $VPNCTL_CACHE/images")
    p.add_argument("--rebuild", action="store_true", help="build even if cached")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--print-key", action="store_true", help="print the input hash and exit")
    args = p.parse_args(argv)
    cache = (args.cache_dir or default_cache_dir()).expanduser().resolve()
    try:
        if args.print_key:
            print(image_key(REPO, shipped_files(REPO)))
            return 0
        info = ensure_image(REPO, cache, rebuild=args.rebuild)
    except ImageError as e:
        print(f"build-image: error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        state = "cached" if info["cached"] else f"{info['how']} in {info['seconds']}s"
        log(f"{state}; OCI archive {info['archive']}")
        print(info["ref"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
