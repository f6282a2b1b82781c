import pytest

from vpnctl.cli import _parser


def test_lab_up_defaults_to_three_nodes_over_udp() -> None:
    args = _parser().parse_args(["lab", "up"])
    assert (args.cmd, args.lab_cmd, args.nodes, args.proto) == ("lab", "up", 3, "udp")


def test_unknown_subcommand_is_rejected() -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["frobnicate"])
