"""The images a real tenant node runs, made here without a registry.

- the sandbox (pause) image: a static binary compiled with gcc from ``PAUSE_C`` below,
  which sleeps until SIGTERM or SIGINT and reaps the children it inherits;
- the workload image: Debian's ``busybox-static`` with a link for every applet;
- with ``metrics_server=`` the static metrics-server binary that
  ``ensure_binaries(with_nodes=True)`` built, alone in its image;
- vpnctl's own image (``ensure_vpnctl_image``), which ``scripts/build-image.py`` builds
  with buildah; it is added to a ``NodeImages`` with ``with_extra``.

Each of ours is one uncompressed layer written as an OCI image layout in a tar archive
by hand (a layer, a config, a manifest and an index), which
``ctr -n k8s.io images import`` loads. Archives are cached in
``$VPNCTL_CACHE/images/node/`` under a key made of their inputs (the files' content), and
tagged with it, so a changed input makes a new image and a warm run only hashes them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Bump when the way the images are made changes in a way the inputs don't show.
RECIPE_VERSION = "1"
BUSYBOX = Path("/bin/busybox")

PAUSE_C = r"""
/* vpnctl's pause: hold the pod's namespaces, reap orphans, stop on SIGTERM/SIGINT. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {}
}

int main(void) {
    struct sigaction sa = {0};
    sa.sa_handler = stop;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = reap;
    sa.sa_flags = SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, NULL);
    for (;;) pause();
    return 0;
}
"""


class ImageBuildError(RuntimeError):
    """An image could not be made; the message says which step failed."""


@dataclass(frozen=True, kw_only=True)
class NodeImage:
    ref: str  # e.g. localhost/vpnctl-pause:<key>
    archive: Path  # OCI archive for `ctr images import`


@dataclass(frozen=True, kw_only=True)
class NodeImages:
    pause: NodeImage
    busybox: NodeImage
    pause_binary: Path  # also the mount-namespace holder of a node
    metrics_server: NodeImage | None = None
    extra: tuple[NodeImage, ...] = ()  # made elsewhere, e.g. vpnctl's own image

    @property
    def all(self) -> tuple[NodeImage, ...]:
        """Every image a node imports into containerd, the sandbox first."""
        ours = (self.pause, self.busybox, self.metrics_server)
        return tuple(i for i in ours if i is not None) + self.extra

    def with_extra(self, *images: NodeImage) -> NodeImages:
        return dataclasses.replace(self, extra=self.extra + images)


def default_images_dir() -> Path:
    root = os.environ.get("VPNCTL_CACHE") or str(Path.home() / ".cache" / "vpnctl")
    return Path(root) / "images"


def ensure_node_images(
    cache_dir: Path | None = None, *, metrics_server: Path | None = None
) -> NodeImages:
    """Build (or find) the pause and busybox images, and with ``metrics_server`` (the
    binary's path) its image too; blocking, a second or two cold."""
    cache = cache_dir or default_images_dir()
    cache.mkdir(parents=True, exist_ok=True)
    pause_key = _key(RECIPE_VERSION, PAUSE_C.encode(), _gcc_version().encode())
    pause_bin = cache / f"pause-{pause_key}"
    if not os.access(pause_bin, os.X_OK):
        _compile_pause(pause_bin)
    pause = _ensure_image(
        cache,
        "vpnctl-pause",
        pause_key,
        entrypoint=["/pause"],
        files=[("pause", pause_bin.read_bytes(), 0o755)],
        links=[],
    )
    if not BUSYBOX.exists():
        raise ImageBuildError(f"{BUSYBOX} is missing: run scripts/install-node-tools.sh")
    busybox_bytes = BUSYBOX.read_bytes()
    applets = subprocess.run(
        [str(BUSYBOX), "--list-full"], capture_output=True, text=True, check=True
    ).stdout.split()
    busybox = _ensure_image(
        cache,
        "vpnctl-busybox",
        _key(RECIPE_VERSION, busybox_bytes, " ".join(applets).encode()),
        entrypoint=["/bin/sh"],
        files=[("bin/busybox", busybox_bytes, 0o755)],
        links=[(a, "/bin/busybox") for a in applets if a != "bin/busybox"],
    )
    return NodeImages(
        pause=pause,
        busybox=busybox,
        pause_binary=pause_bin,
        metrics_server=_metrics_server_image(cache, metrics_server) if metrics_server else None,
    )


def _metrics_server_image(cache: Path, binary: Path) -> NodeImage:
    try:
        data = binary.read_bytes()
    except OSError as exc:
        raise ImageBuildError(
            f"metrics-server binary {binary}: {exc}; build it with `make node-bins`"
        ) from None
    return _ensure_image(
        cache,
        "vpnctl-metrics-server",
        _key(RECIPE_VERSION, data),
        entrypoint=["/metrics-server"],
        files=[("metrics-server", data, 0o755)],
        links=[],
    )


def ensure_vpnctl_image(repo: Path | None = None) -> NodeImage:
    """vpnctl's own image, as ``scripts/build-image.py`` builds and caches it (a warm
    run only hashes the inputs; a cold one takes a minute or more). Needs root."""
    root = repo or Path(__file__).resolve().parents[3]
    script = root / "scripts" / "build-image.py"
    done = subprocess.run(
        [sys.executable, str(script), "--json"], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-10:])
        raise ImageBuildError(f"{script} exited {done.returncode}:\n{tail}")
    info = json.loads(done.stdout)
    return NodeImage(ref=str(info["ref"]), archive=Path(info["archive"]))


def _key(*parts: bytes | str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()[:16]


def _gcc_version() -> str:
    try:
        return subprocess.run(
            ["gcc", "--version"], capture_output=True, text=True, check=True
        ).stdout.splitlines()[0]
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ImageBuildError(f"no gcc ({exc}): run scripts/install-node-tools.sh") from None


def _compile_pause(target: Path) -> None:
    with tempfile.TemporaryDirectory(prefix=".pause-", dir=target.parent) as tmp:
        source = Path(tmp) / "pause.c"
        source.write_text(PAUSE_C)
        out = Path(tmp) / "pause"
        done = subprocess.run(
            ["gcc", "-static", "-Os", "-s", "-o", str(out), str(source)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise ImageBuildError(f"gcc pause.c failed: {done.stderr.strip()}")
        os.replace(out, target)


def _ensure_image(
    cache: Path,
    name: str,
    key: str,
    *,
    entrypoint: Sequence[str],
    files: Sequence[tuple[str, bytes, int]],
    links: Sequence[tuple[str, str]],
) -> NodeImage:
    ref = f"localhost/{name}:{key}"
    # A folder of their own: scripts/build-image.py prunes vpnctl-*.oci.tar in `cache`.
    archive = cache / "node" / f"{name}-{key}.oci.tar"
    archive.parent.mkdir(exist_ok=True)
    if not archive.exists():
        data = _oci_archive(ref, key, entrypoint=entrypoint, files=files, links=links)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}-", dir=archive.parent)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, archive)
    return NodeImage(ref=ref, archive=archive)


def _tar_bytes(members: Sequence[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _entry(
    path: str, *, kind: bytes, mode: int, data: bytes = b"", link: str = ""
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(path)
    info.type = kind
    info.mode = mode
    info.mtime = 0  # reproducible: the same inputs give the same digests
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        return info, data
    info.linkname = link
    return info, None


def _oci_archive(
    ref: str,
    tag: str,
    *,
    entrypoint: Sequence[str],
    files: Sequence[tuple[str, bytes, int]],
    links: Sequence[tuple[str, str]],
) -> bytes:
    dirs = {"tmp"}
    for path in [f for f, _, _ in files] + [link for link, _ in links]:
        parts = path.split("/")[:-1]
        dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    members = [_entry(d, kind=tarfile.DIRTYPE, mode=0o755) for d in sorted(dirs)]
    members[[d for d in sorted(dirs)].index("tmp")][0].mode = 0o1777
    members += [_entry(p, kind=tarfile.REGTYPE, mode=m, data=d) for p, d, m in files]
    members += [_entry(p, kind=tarfile.SYMTYPE, mode=0o777, link=t) for p, t in links]
    layer = _tar_bytes(members)
    layer_digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Entrypoint": list(entrypoint),
                "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
            },
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        },
        sort_keys=True,
    ).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest,
                    "size": len(layer),
                }
            ],
        },
        sort_keys=True,
    ).encode()
    manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": manifest_digest,
                    "size": len(manifest),
                    "annotations": {
                        "io.containerd.image.name": ref,
                        "org.opencontainers.image.ref.name": tag,
                    },
                }
            ],
        }
    ).encode()
    out: list[tuple[tarfile.TarInfo, bytes | None]] = [
        _entry("blobs", kind=tarfile.DIRTYPE, mode=0o755),
        _entry("blobs/sha256", kind=tarfile.DIRTYPE, mode=0o755),
    ]
    for digest, blob in (
        (layer_digest, layer),
        (config_digest, config),
        (manifest_digest, manifest),
    ):
        out.append(
            _entry(f"blobs/sha256/{digest[7:]}", kind=tarfile.REGTYPE, mode=0o644, data=blob)
        )
    out.append(
        _entry(
            "oci-layout", kind=tarfile.REGTYPE, mode=0o644, data=b'{"imageLayoutVersion":"1.0.0"}'
        )
    )
    out.append(_entry("index.json", kind=tarfile.REGTYPE, mode=0o644, data=index))
    return _tar_bytes(out)
