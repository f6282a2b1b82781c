import argparse

import pytest

from vpnctl.lab.probe import check_lines
from vpnctl.testenv.https_target import MAX_LINES, line, lines_count, parse_listen


def test_lines_are_numbered_in_the_format_the_probe_checks() -> None:
    assert line("target-node-node-1", 42) == "target-node-node-1 line 00000042"
    body = "".join(line("t", k) + "\n" for k in range(5, 9)).encode()
    assert check_lines(body, 4) is None
    assert check_lines(body, 5) == "lines: got 4 want 5"
    gap = b"t line 00000001\nt line 00000003\n"
    assert check_lines(gap, 2) == "lines: line 1 is number 3 after 1"
    assert check_lines(b"garbage\n", 1) == "lines: line 0 has no number"


def test_lines_count_must_be_given_and_bounded() -> None:
    assert lines_count("0") == 0
    assert lines_count(str(MAX_LINES)) == MAX_LINES
    for bad in (None, "", "x", "-1", str(MAX_LINES + 1)):
        with pytest.raises(ValueError, match=r"\?count=N"):
            lines_count(bad)


def test_listen_address_parsing() -> None:
    assert parse_listen("198.19.0.11:10250") == ("198.19.0.11", 10250)
    for bad in ("198.19.0.11", ":80", "h:0", "h:99999", "h:x"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_listen(bad)

