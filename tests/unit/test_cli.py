"""The command lines of both binaries: version, help, global flags, `lab` as non-root."""

from __future__ import annotations

import argparse
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest

from agent.__main__ import _parser as agent_parser
from vpnctl.cli import LAB_NEEDS_ROOT, _parser, lab_refusal, parse_args

REPO = Path(__file__).resolve().parents[2]


def test_lab_up_defaults_to_three_nodes_over_udp() -> None:
    args = _parser().parse_args(["lab", "up"])
    assert (args.cmd, args.lab_cmd, args.nodes, args.proto) == ("lab", "up", 3, "udp")


def test_unknown_subcommand_is_rejected() -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["frobnicate"])


# --- --version ---------------------------------------------------------------------------


@pytest.mark.parametrize(("parser", "name"), [(_parser, "vpnctl"), (agent_parser, "vpnctl-agent")])
def test_version_comes_from_the_package_metadata(
    parser: object, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parser().parse_args(["--version"])  # type: ignore[operator]
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"{name} {version('vpnctl')}"


def test_the_version_is_pyprojects() -> None:
    from vpnctl import __version__

    declared = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert declared is not None
    assert __version__ == declared.group(1)


@pytest.mark.parametrize("argv", [["-m", "vpnctl", "--version"], ["-m", "agent", "--version"]])
def test_both_binaries_print_their_version(argv: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(f" {version('vpnctl')}")


# --- help ------------------------------------------------------------------------------


def _all_parsers(
    parser: argparse.ArgumentParser, path: str
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _all_parsers(sub, f"{path} {name}")


PARSERS = [*_all_parsers(_parser(), "vpnctl"), *_all_parsers(agent_parser(), "agent")]


@pytest.mark.parametrize(("path", "parser"), PARSERS, ids=[p for p, _ in PARSERS])
def test_every_flag_has_help_and_every_default_is_shown(
    path: str, parser: argparse.ArgumentParser
) -> None:
    text = parser.format_help()
    assert parser.description, f"{path}: no description"
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        name = action.option_strings[-1] if action.option_strings else action.dest
        assert action.help, f"{path} {name}: no help"
        if action.option_strings and action.nargs != 0 and not action.required:
            shown = formatter._get_help_string(action) or ""
            assert "default" in shown, f"{path} {name}: its default is not said"
    # No developer notes: module docstrings and source paths stay out of --help.
    assert "import" not in text, text
    assert ".py" not in text, text


def test_log_flags_show_their_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["status", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: INFO)" in out
    assert "(default: logfmt)" in out
    assert "(default: table)" in out


# --- global flags ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--log-format", "json", "--log-level", "debug", "--kubeconfig", "k", "--context", "c",
         "status"],
        ["status", "--log-format", "json", "--log-level", "debug", "--kubeconfig", "k",
         "--context", "c"],
        ["--log-format", "json", "--context", "c", "status", "--log-level", "debug",
         "--kubeconfig", "k"],
        ["--log-format=json", "--log-level=DEBUG", "run", "--agent-image", "i",
         "--kubeconfig=k", "--context=c"],
    ],
)  # fmt: skip
def test_global_flags_go_before_or_after_the_subcommand(argv: list[str]) -> None:
    args = parse_args(argv)
    assert (args.log_format, args.log_level) == ("json", "DEBUG")
    assert (args.kubeconfig, args.context) == ("k", "c")


def test_a_flag_given_after_the_subcommand_wins() -> None:
    args = parse_args(["--log-level", "error", "status", "--log-level", "debug"])
    assert args.log_level == "DEBUG"


@pytest.mark.parametrize("argv", [["lab", "down"], ["status"]])
def test_global_flags_default(argv: list[str]) -> None:
    args = parse_args(argv)
    assert (args.log_format, args.log_level) == ("logfmt", "INFO")
    assert (args.kubeconfig, args.context) == (None, None)


def test_agent_flags_go_either_side_of_the_role() -> None:
    a = agent_parser().parse_args(["--log-format", "json", "node", "--config", "c.json"])
    b = agent_parser().parse_args(["node", "--config", "c.json", "--log-format", "json"])
    assert vars(a) == vars(b)
    args = agent_parser().parse_args(["server", "--config", "c", "--log-level", "debug"])
    assert args.log_level == "DEBUG"


def test_status_output_formats() -> None:
    assert parse_args(["status"]).output == "table"
    assert parse_args(["status", "-o", "wide"]).output == "wide"
    assert parse_args(["status", "--output=json", "c"]).output == "json"
    with pytest.raises(SystemExit):
        parse_args(["status", "-o", "xml"])


# --- the lab needs root -------------------------------------------------------------------


def test_lab_refuses_a_non_root_user_in_one_line() -> None:
    args = parse_args(["lab", "up"])
    assert lab_refusal(args, euid=1000) == LAB_NEEDS_ROOT
    assert "\n" not in LAB_NEEDS_ROOT
    assert lab_refusal(args, euid=0) is None


def test_lab_refuses_the_cluster_flags() -> None:
    refusal = lab_refusal(parse_args(["--kubeconfig", "k", "lab", "down"]), euid=0)
    assert refusal is not None
    assert "--kubeconfig" in refusal
    with pytest.raises(SystemExit):
        parse_args(["lab", "down", "--kubeconfig", "k"])


# The venv's python may live under /root (pyenv), which nobody cannot enter; the source
# tree needs only the standard library to parse the command line and refuse.
SYSTEM_PYTHON = Path("/usr/bin/python3")


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
@pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="no /usr/bin/python3 for user nobody")
def test_lab_as_nobody_exits_2_with_one_line() -> None:
    """The real command, run as user nobody: one line on stderr, exit 2, nothing built.

    nobody gets a copy of the source packages in a folder it may read: the checkout may
    sit where it cannot (a fresh clone under a 0700 mktemp folder, as in CI)."""
    nobody = pwd.getpwnam("nobody")
    # Not pytest's tmp_path: its parent /tmp/pytest-of-root is 0700.
    with tempfile.TemporaryDirectory(prefix="vpnctl-nobody-") as top:
        Path(top).chmod(0o755)
        source = Path(top) / "src"
        for package in ("vpnctl", "telemetry", "certs", "agent"):
            shutil.copytree(REPO / package, source / package,
                            ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
        for folder in (source, *source.rglob("*")):
            if folder.is_dir():
                folder.chmod(0o755)
        done = _run_as(nobody, source)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [LAB_NEEDS_ROOT]
    assert done.stdout == ""


def _run_as(user: pwd.struct_passwd, source: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SYSTEM_PYTHON), "-m", "vpnctl", "lab", "up", "--state-dir", "/nonexistent/vtroot"],
        capture_output=True, text=True, timeout=60, check=False, cwd="/",
        user=user.pw_uid, group=user.pw_gid, extra_groups=[],
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(source),
             "PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip
