"""Keeps test-support modules out of the wheel (and so out of the image).

`[tool.setuptools.packages.find]` in pyproject.toml can leave out whole packages (the lab,
the test environment) but not a single module inside a package that ships, so this
filters `build_py`. The editable install used for development maps the packages to the
source tree and is unaffected.

No shipping package holds such a module today: the tenant samples moved to
tests/support/capi.py. scripts/build-image.py reads TEST_SUPPORT_MODULES (as a literal)
to hash what ships, so the name stays, empty.
"""

from setuptools import setup
from setuptools.command.build_py import build_py

# (package, module) pairs of test support inside a shipping package; none at present.
TEST_SUPPORT_MODULES: set[tuple[str, str]] = set()


class BuildPyWithoutTestSupport(build_py):
    def find_package_modules(self, package: str, package_dir: str) -> list[tuple[str, str, str]]:
        modules = super().find_package_modules(package, package_dir)
        return [m for m in modules if (m[0], m[1]) not in TEST_SUPPORT_MODULES]


setup(cmdclass={"build_py": BuildPyWithoutTestSupport})
