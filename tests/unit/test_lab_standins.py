import argparse

import pytest

from vpnctl.lab.probe import ProbeResult, check_lines
from vpnctl.lab.standins import log_line, parse_listen


def test_log_lines_are_deterministic_and_checkable() -> None:
    assert log_line("node-1", "web-0", 42) == "node-1 web-0 line 00000042"
    body = "".join(log_line("n", "p", k) + "\n" for k in range(5, 9)).encode()
    assert check_lines(body, 4) is None
    assert check_lines(body, 5) == "lines: got 4 want 5"
    gap = b"n p line 00000001\nn p line 00000003\n"
    assert check_lines(gap, 2) == "lines: line 1 is number 3 after 1"
    assert check_lines(b"garbage\n", 1) == "lines: line 0 has no number"


def test_listen_address_parsing() -> None:
    assert parse_listen("198.19.0.11:10250") == ("198.19.0.11", 10250)
    for bad in ("198.19.0.11", ":80", "h:0", "h:99999", "h:x"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_listen(bad)


def test_probe_result_round_trips_the_probe_json() -> None:
    text = '{"ok": false, "latency_ms": null, "error": "timeout", "bytes": 0}'
    assert ProbeResult.from_json(text) == ProbeResult(ok=False, error="timeout")
    ok = ProbeResult.from_json('{"ok": true, "latency_ms": 1.5, "error": null, "bytes": 2}')
    assert ok == ProbeResult(ok=True, latency_ms=1.5, bytes=2)
