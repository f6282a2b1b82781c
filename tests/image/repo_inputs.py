"""The repository's packaging inputs, copied for tests that build from them."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGING = (
    "pyproject.toml",
    "setup.py",
    "Dockerfile",
    "requirements/runtime.lock",
    "requirements/build.lock",
)
TREES = ("vpnctl", "agent", "certs", "telemetry")


def copy_inputs(dest: Path) -> Path:
    """Copies the packaging files and source trees to DEST, without caches or a stale
    `build/`, so what a test builds depends on the sources alone."""
    for name in PACKAGING:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for tree in TREES:
        shutil.copytree(REPO / tree, dest / tree, ignore=ignore)
    return dest
