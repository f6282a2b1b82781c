"""requirements/*.lock cover every dependency pyproject.toml names, each pinned to one
version that its range allows, with hashes; and the venv (`make`), the image
(Dockerfile) and so CI install from them. scripts/lock.sh rewrites them."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
LOCKS = REPO / "requirements"

# `name==version \` followed by `--hash=sha256:...` lines, as pip-compile writes them.
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)(?:\s*\\)?$")
_HASH = re.compile(r"^\s+--hash=sha256:[0-9a-f]{64}(?:\s*\\)?$")


def read_lock(name: str) -> dict[NormalizedName, tuple[Version, int]]:
    """{package: (version, number of hashes)}; anything but pins, hashes and comments
    (an unpinned line, a URL, an option) fails."""
    pins: dict[NormalizedName, tuple[Version, int]] = {}
    current: NormalizedName | None = None
    for number, line in enumerate((LOCKS / name).read_text().splitlines(), 1):
        where = f"requirements/{name}:{number}"
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if pin := _PIN.match(line):
            current = canonicalize_name(pin[1])
            assert current not in pins, f"{where}: {current} pinned twice"
            pins[current] = (Version(pin[2]), 0)
        elif _HASH.match(line):
            assert current is not None, f"{where}: a hash before any pin"
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
        else:
            pytest.fail(f"{where}: not a pin, a hash or a comment: {line!r}")
    return pins


def pyproject() -> dict[str, object]:
    with (REPO / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def requirements(kind: str) -> list[Requirement]:
    data = pyproject()
    project = data["project"]
    assert isinstance(project, dict)
    if kind == "runtime":
        names = project["dependencies"]
    elif kind == "build":
        build_system = data["build-system"]
        assert isinstance(build_system, dict)
        names = build_system["requires"]
    else:
        names = project["optional-dependencies"][kind]
    return [Requirement(n) for n in names]


@pytest.mark.parametrize(
    ("kinds", "lock"),
    [
        (("runtime",), "runtime.lock"),
        (("runtime", "dev"), "dev.lock"),
        (("build",), "build.lock"),
    ],
)
def test_the_lock_pins_every_named_dependency_within_its_range(
    kinds: tuple[str, ...], lock: str
) -> None:
    pins = read_lock(lock)
    for kind in kinds:
        for req in requirements(kind):
            name = canonicalize_name(req.name)
            assert name in pins, f"{req} ({kind}, pyproject.toml) is not in requirements/{lock}"
            version, _ = pins[name]
            assert req.specifier.contains(version, prereleases=True), (
                f"requirements/{lock} pins {name}=={version}, outside {req} in pyproject.toml; "
                "run scripts/lock.sh"
            )


@pytest.mark.parametrize("lock", ["runtime.lock", "dev.lock", "build.lock"])
def test_every_pin_carries_hashes(lock: str) -> None:
    pins = read_lock(lock)
    assert pins, f"requirements/{lock} pins nothing"
    unhashed = sorted(name for name, (_, hashes) in pins.items() if hashes == 0)
    assert not unhashed, f"requirements/{lock}: no --hash for {unhashed}"


def test_the_image_runs_the_versions_the_tests_ran() -> None:
    runtime, dev, build = read_lock("runtime.lock"), read_lock("dev.lock"), read_lock("build.lock")
    for name, (version, _) in [*runtime.items(), *build.items()]:
        assert name in dev, f"{name} is locked for the image but not for the venv"
        assert dev[name][0] == version, (
            f"{name}: {version} in the image's lock, {dev[name][0]} in dev.lock; "
            "run scripts/lock.sh"
        )


def test_setup_py_names_no_dependencies_of_its_own() -> None:
    """Dependencies live in pyproject.toml only, which the locks are checked against."""
    tree = ast.parse((REPO / "setup.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    setup_calls = [c for c in calls if isinstance(c.func, ast.Name) and c.func.id == "setup"]
    assert setup_calls, "setup.py no longer calls setup()"
    for call in setup_calls:
        named = {k.arg for k in call.keywords} & {
            "install_requires",
            "extras_require",
            "setup_requires",
        }
        assert not named, f"setup.py names {named}: move them to pyproject.toml and relock"


def test_make_and_the_image_install_from_the_locks() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert "LOCK  := requirements/dev.lock" in makefile
    assert "--require-hashes -r $(LOCK)" in makefile
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "--require-hashes -r /src/requirements/runtime.lock" in dockerfile
    assert "-r /src/requirements/build.lock" in dockerfile
    assert "--no-deps --no-build-isolation /src" in dockerfile
    # CI runs exactly `make test`, which makes the venv from the lock.
    assert (REPO / ".ci/run").read_text().rstrip().endswith("exec make test")
