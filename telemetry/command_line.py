"""What both binaries' command lines share: the version they print and how help reads.

`vpnctl --version` and `python -m agent --version` print the installed distribution's
version (package metadata, the one number pyproject.toml sets), so a bug report names
the build that ran, whichever binary wrote it.
"""

from __future__ import annotations

import argparse
from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "vpnctl"


def package_version(distribution: str = DISTRIBUTION) -> str:
    """The installed version of DISTRIBUTION; "unknown" when it is not installed (a
    source tree on PYTHONPATH without `pip install`)."""
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"


def add_version_flag(parser: argparse.ArgumentParser, *, name: str) -> None:
    parser.add_argument(
        "--version",
        action="version",
        version=f"{name} {package_version()}",
        help="print the version and exit",
    )


class HelpFormatter(argparse.HelpFormatter):
    """argparse's help with each option's default shown, `(default: X)`, unless the help
    text already says it or there is nothing to show (an off switch; no value, where the
    help text says what happens then). A repeatable option starts empty: `(default:
    none)`."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or "default:" in text
            or default is None
            or default is argparse.SUPPRESS
            or isinstance(default, bool)
            or not action.option_strings
        ):
            return text
        if default == []:
            return f"{text} (default: none)"
        return f"{text} (default: %(default)s)"
