"""The image's cache key follows what ships, no more: `scripts/build-image.py` is loaded
as a module and asked for the key of a copy of the repository's inputs."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import ModuleType

import pytest

from tests.image.repo_inputs import REPO, copy_inputs

pytestmark = [pytest.mark.image]


def load_build_image() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_image", REPO / "scripts/build-image.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def key_of(bi: ModuleType, repo: Path) -> str:
    return str(bi.image_key(repo, bi.shipped_files(repo)))


def test_image_key_follows_what_ships(tmp_path: Path) -> None:
    bi = load_build_image()
    repo = copy_inputs(tmp_path)
    first = key_of(bi, repo)
    assert key_of(bi, repo) == first, "the key is not stable"

    # Lab and testenv do not go in: editing them must not rebuild the image.
    for left_out in (
        "vpnctl/lab/connectivity_table.py",
        "vpnctl/testenv/build.py",
        "vpnctl/lab/address_plan.py",
    ):
        (repo / left_out).write_text((repo / left_out).read_text() + "\n# edited\n")
        assert key_of(bi, repo) == first, f"{left_out} changed the image key"
    (repo / "vpnctl/__pycache__").mkdir(exist_ok=True)
    (repo / "vpnctl/__pycache__/junk.cpython-311.pyc").write_bytes(b"\0")
    assert key_of(bi, repo) == first, "a bytecode cache changed the image key"

    keys = {first}
    for shipped in (
        "vpnctl/cli.py",
        "agent/netlink.py",
        "Dockerfile",
        "pyproject.toml",
        "setup.py",
    ):
        (repo / shipped).write_text((repo / shipped).read_text() + "\n# edited\n")
        key = key_of(bi, repo)
        assert key not in keys, f"editing {shipped} did not change the image key"
        keys.add(key)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another uid")
def test_build_as_non_root_says_what_to_do() -> None:
    # uid 65534 runs a copy of the script from a folder it may read, with the system's
    # python: the checkout (and its venv) may sit where it cannot, e.g. a fresh clone
    # under a 0700 mktemp folder, and pytest's tmp_path is under a 0700 folder too.
    with tempfile.TemporaryDirectory(prefix="vpnctl-nonroot-") as top:
        Path(top).chmod(0o755)
        script = Path(top) / "build-image.py"
        shutil.copyfile(REPO / "scripts" / "build-image.py", script)
        script.chmod(0o644)
        done = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             "/usr/bin/python3", str(script), "--cache-dir", str(Path(top) / "cache")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd="/",
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "build-image: error: needs root" in done.stderr
    assert "sudo make image" in done.stderr
    assert "Traceback" not in done.stderr
