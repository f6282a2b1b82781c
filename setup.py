"""Keeps test-support modules out of the wheel (and so out of the image).

`[tool.setuptools.packages.find]` in pyproject.toml can leave out whole packages (the lab,
the test environment) but not a single module inside a package that ships, so this
filters `build_py`. The editable install used for development maps the `vpnctl` package
to the source tree and is unaffected: tests still import `vpnctl.reconcile.samples`.
"""

from setuptools import setup
from setuptools.command.build_py import build_py

# (package, module): tenant objects for tests and the lab, not for production.
TEST_SUPPORT_MODULES = {("vpnctl.reconcile", "samples")}


class BuildPyWithoutTestSupport(build_py):
    def find_package_modules(self, package: str, package_dir: str) -> list[tuple[str, str, str]]:
        modules = super().find_package_modules(package, package_dir)
        return [m for m in modules if (m[0], m[1]) not in TEST_SUPPORT_MODULES]


setup(cmdclass={"build_py": BuildPyWithoutTestSupport})
