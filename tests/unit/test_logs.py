"""The one log format: every line valid logfmt (or JSON), RFC 3339 UTC, keyed level/logger."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from telemetry.logs import configure_logging, pairs, parse_pairs, quote

RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, logging.Logger]]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    try:
        yield stream, logging.getLogger("vpnctl.test")
    finally:
        root.handlers[:], root.level = saved


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", "plain"),
        ("198.19.0.0/24", "198.19.0.0/24"),
        ("", '""'),
        ("two words", '"two words"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("a=b", '"a=b"'),
        ("line\nbreak", '"line\\nbreak"'),
        ("back\\slash", '"back\\\\slash"'),
        (3, "3"),
    ],
)
def test_quote_gives_logfmt_values(value: object, expected: str) -> None:
    assert quote(value) == expected
    assert parse_pairs(f"k={quote(value)}") == [("k", str(value))]


def test_pairs_round_trip_and_skip_none() -> None:
    text = pairs(event="route_restored", dst="198.19.0.0/24", error="no such device", gone=None)
    assert text == 'event=route_restored dst=198.19.0.0/24 error="no such device"'
    assert parse_pairs(text) == [
        ("event", "route_restored"),
        ("dst", "198.19.0.0/24"),
        ("error", "no such device"),
    ]


@pytest.mark.parametrize("text", ["event='python repr'", "no pairs here", 'k="unterminated'])
def test_parse_pairs_refuses_what_is_not_logfmt(text: str) -> None:
    assert parse_pairs(text) is None


def test_logfmt_lines_are_keyed_and_always_valid(
    captured: tuple[io.StringIO, logging.Logger],
) -> None:
    stream, log = captured
    configure_logging(level="DEBUG", fmt="logfmt", stream=stream)
    log.info("%s", pairs(event="tenant_ready", tenant="ns/a", nodes=3))
    log.warning("event=tenant_kubeconfig_invalid tenant=%s error=%r", "ns/b", "bad input")
    log.info("free text with = and \"quotes\"\nand a second line")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("event=task_died task=watch")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4  # one record, one line: the traceback is folded in
    parsed = [dict(parse_pairs(line) or {}) for line in lines]
    assert all(parsed), lines
    for fields in parsed:
        assert RFC3339_UTC.fullmatch(fields["time"]), fields
        assert fields["logger"] == "vpnctl.test"
    assert parsed[0] == {**parsed[0], "level": "info", "event": "tenant_ready", "nodes": "3"}
    # A message that is not logfmt (Python's repr quoting) is kept whole as msg.
    assert parsed[1]["msg"] == "event=tenant_kubeconfig_invalid tenant=ns/b error='bad input'"
    assert parsed[2]["msg"].endswith('"quotes"\nand a second line')
    assert parsed[3]["level"] == "error"
    assert parsed[3]["event"] == "task_died"
    assert "RuntimeError: boom" in parsed[3]["exc"]


def test_json_lines(captured: tuple[io.StringIO, logging.Logger]) -> None:
    stream, log = captured
    configure_logging(level="INFO", fmt="json", stream=stream)
    log.debug("event=hidden")
    log.info("event=route_restored dst=198.19.0.0/24")
    log.info("plain words")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line.get("event", line.get("msg")) for line in lines] == [
        "route_restored",
        "plain words",
    ]
    assert all(RFC3339_UTC.fullmatch(line["time"]) for line in lines)
    assert lines[0]["level"] == "info"
    assert lines[0]["dst"] == "198.19.0.0/24"


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log format 'xml'"):
        configure_logging(fmt="xml")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "argv",
    [
        ["--log-format", "json", "--log-level", "debug", "status", "--help"],
        ["status", "--log-format", "json", "--log-level", "debug", "--help"],
    ],
)
def test_vpnctl_takes_log_flags_before_or_after_the_subcommand(argv: list[str]) -> None:
    from vpnctl.cli import parse_args

    args = parse_args([a for a in argv if a != "--help"])
    assert (args.log_format, args.log_level) == ("json", "DEBUG")


def test_vpnctl_log_flags_default() -> None:
    from vpnctl.cli import parse_args

    args = parse_args(["lab", "down"])
    assert (args.log_format, args.log_level) == ("logfmt", "INFO")


def test_both_binaries_write_the_same_format() -> None:
    """Run each binary on an input it rejects; its stderr lines are valid logfmt."""
    agent = subprocess.run(
        [sys.executable, "-m", "agent", "node", "--config", "/nonexistent/node.json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert agent.returncode == 2
    records = [ln for ln in agent.stderr.splitlines() if ln.startswith("time=")]
    assert records, agent.stderr
    fields = dict(parse_pairs(records[0]) or {})
    assert fields["logger"] == "agent"
    assert fields["event"] == "config_invalid"
    assert RFC3339_UTC.fullmatch(fields["time"])
