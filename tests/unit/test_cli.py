import pytest

from vpnctl.cli import _parser


def test_lab_up_defaults_to_three_nodes_over_udp() -> None:
    args = _parser().parse_args(["lab", "up"])
    assert (args.cmd, args.lab_cmd, args.nodes, args.proto) == ("lab", "up", 3, "udp")


def test_unknown_subcommand_is_rejected() -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["frobnicate"])


def test_version_is_printed_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    from vpnctl import __version__

    with pytest.raises(SystemExit) as exited:
        _parser().parse_args(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"vpnctl {__version__}"


def test_help_is_for_users_not_developers(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert "Sub-commands import" not in out  # the module docstring is a developer note
    assert "reverse connectivity" in out.lower()
