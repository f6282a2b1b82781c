"""What ships: the wheel leaves out the lab, the test environment and the tests (with
their samples), and the repository's editable install still has all three (tests and
`make lab` need them).

The wheel is built with pip from a copy of the packaging inputs, so a stale `build/`
in the checkout can neither hide nor cause a leak.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from tests.image.repo_inputs import REPO, copy_inputs

pytestmark = [pytest.mark.image]

PIP_WHEEL = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
LEFT_OUT = ("vpnctl/lab/", "vpnctl/testenv/", "tests/")


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    src = copy_inputs(tmp_path_factory.mktemp("wheel-src"))
    out = tmp_path_factory.mktemp("wheel-out")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--wheel-dir",
            str(out),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, f"pip wheel failed:\n{done.stdout}\n{done.stderr}"
    (wheel,) = out.glob("vpnctl-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


def test_wheel_leaves_out_lab_testenv_and_tests(wheel_names: list[str]) -> None:
    leaked = [n for n in wheel_names if n.startswith(LEFT_OUT)]
    assert leaked == [], f"test and lab code in the wheel: {leaked}"


def test_wheel_still_ships_the_product(wheel_names: list[str]) -> None:
    # The exclusions must not take what production runs with them.
    for needed in (
        "vpnctl/cli.py",
        "vpnctl/reconcile/service_objects.py",
        "vpnctl/controller/cli.py",
        "vpnctl/kube/__init__.py",
        "agent/__main__.py",
        "agent/netlink.py",
        "certs/__init__.py",
    ):
        assert needed in wheel_names, f"{needed} missing from the wheel"
    (entry_points,) = [n for n in wheel_names if n.endswith(".dist-info/entry_points.txt")]
    assert entry_points


@pytest.mark.parametrize(
    "argv",
    [
        ["-m", "vpnctl", "lab", "--help"],  # what `make lab` runs
        ["-m", "vpnctl.testenv.build", "--help"],  # what `make k8s-bins` runs
        ["-c", "import vpnctl.lab.dataplane, vpnctl.testenv"],
    ],
)
def test_the_checkout_keeps_the_lab_and_testenv(argv: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
