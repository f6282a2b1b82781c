"""The one log format: every line valid logfmt (or JSON), RFC 3339 UTC, keyed level/logger.

Output is read back with tests/support/logfmt.py, a strict reader written apart from the
product's writer, or with json.loads.
"""

from __future__ import annotations

import ast
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from telemetry.logs import (
    JsonFormatter,
    LogfmtFormatter,
    configure_logging,
    pairs,
    parse_pairs,
    quote,
)
from tests.support.logfmt import LogfmtError, parse_line, parse_record

REPO = Path(__file__).resolve().parents[2]
WHEN = datetime(2026, 12, 3, 15, 20, 37, 123456, tzinfo=UTC)
HOSTILE = [
    "plain",
    "198.19.0.0/24",
    "",
    "two words",
    'say "hi"',
    "a=b",
    "x level=debug logger=forged",
    "line\nbreak\r\n",
    "tab\there",
    "back\\slash",
    "nul\x00del\x7f",
    "c1\x85control",
    "line\u2028separator\u2029",
    "zero\u200bwidth",
    "ünïcödé ☃ 😀",
    '"',
    "\\",
    "=",
]


def record(msg: object, *args: object, level: int = logging.INFO, **extra: object) -> str:
    """The logfmt line of one record created at WHEN by logger vpnctl.controller."""
    rec = logging.LogRecord("vpnctl.controller", level, __file__, 1, msg, args or None, None)
    rec.created = WHEN.timestamp()
    for k, v in extra.items():
        setattr(rec, k, v)
    return LogfmtFormatter().format(rec)


def json_record(msg: object, *args: object) -> dict[str, str]:
    rec = logging.LogRecord("vpnctl.controller", logging.INFO, __file__, 1, msg, args or None, None)
    rec.created = WHEN.timestamp()
    line = JsonFormatter().format(rec)
    assert "\n" not in line
    assert len(line.splitlines()) == 1, line
    parsed = json.loads(line)
    assert isinstance(parsed, dict)
    return parsed


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, logging.Logger]]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    try:
        yield stream, logging.getLogger("vpnctl.test")
    finally:
        root.handlers[:], root.level = saved


# --- the test's own reader is strict --------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    ["", "k", "k=v ", 'k="open', "k=a=b", "k=v  x", 'k="raw\ttab"', "=v", 'k="bad \\q"', "k=\x7f"],
)
def test_the_reader_refuses_what_is_not_logfmt(line: str) -> None:
    with pytest.raises(LogfmtError):
        parse_line(line)


def test_the_reader_reads_logfmt() -> None:
    assert parse_line('a=1 b="two words" c= d="\\"\\u00e9\\ud83d\\ude00"') == [
        ("a", "1"), ("b", "two words"), ("c", ""), ("d", '"é😀'),
    ]  # fmt: skip


# --- values ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", HOSTILE)
def test_quote_gives_one_logfmt_value_that_reads_back(value: str) -> None:
    text = quote(value)
    assert text.isprintable(), text
    assert parse_line(f"k={text}") == [("k", value)]
    assert parse_pairs(f"k={text}") == [("k", value)]


def test_bare_values_stay_bare() -> None:
    assert [quote(v) for v in ("plain", "198.19.0.0/24", 3, "ns/a")] == [
        "plain", "198.19.0.0/24", "3", "ns/a",
    ]  # fmt: skip
    assert quote("") == '""'


def test_pairs_skip_none() -> None:
    text = pairs(event="route_restored", dst="198.19.0.0/24", error="no such device", gone=None)
    assert text == 'event=route_restored dst=198.19.0.0/24 error="no such device"'


# --- records ---------------------------------------------------------------------------


def test_a_record_has_ts_level_logger_first() -> None:
    line = record("event=tenant_ready tenant=%s nodes=%d", "ns/a", 3)
    assert line == (
        "ts=2026-12-03T15:20:37.123Z level=info logger=vpnctl.controller "
        "event=tenant_ready tenant=ns/a nodes=3"
    )
    ts = parse_record(line)["ts"]
    assert datetime.fromisoformat(ts) == WHEN.replace(microsecond=123000)
    assert datetime.fromisoformat(ts).utcoffset() == datetime.now(UTC).utcoffset()


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("conversion", ["%s", "%r"])
def test_every_argument_is_one_value(value: str, conversion: str) -> None:
    """Whatever a string argument holds, it is one value, read back unchanged: it cannot
    break the line or forge a key (`x level=debug` stays inside `error`)."""
    line = record(f"event=tenant_failed tenant=%s error={conversion}", "ns/a", value)
    fields = parse_record(line)
    assert fields == {
        "ts": "2026-12-03T15:20:37.123Z", "level": "info", "logger": "vpnctl.controller",
        "event": "tenant_failed", "tenant": "ns/a", "error": value,
    }  # fmt: skip
    assert json_record(f"event=tenant_failed tenant=%s error={conversion}", "ns/a", value) == fields


def test_conversions_and_fragments() -> None:
    fields = parse_record(
        record(
            "supervisor=%s event=backoff address=%s:%d retry_in=%.1fs serial=%x error=%r %s",
            "openvpn", "198.18.0.1", 1194, 1.25, 255, ValueError("bad"),
            pairs(tenant="ns/a", why="two words"),
        )
    )  # fmt: skip
    assert list(fields)[3] == "event"  # the event's name comes first
    assert fields["supervisor"] == "openvpn"
    assert fields["address"] == "198.18.0.1:1194"
    assert fields["retry_in"] == "1.2s"
    assert fields["serial"] == "ff"
    assert fields["error"] == "ValueError('bad')"  # %r of a non-string: its repr
    assert (fields["tenant"], fields["why"]) == ("ns/a", "two words")


def test_an_events_reserved_keys_are_renamed_not_dropped() -> None:
    fields = parse_record(record("event=x level=%s msg=%s", "high", "hello"))
    assert (fields["level"], fields["level_"], fields["msg_"]) == ("info", "high", "hello")


@pytest.mark.parametrize(
    ("msg", "args", "text"),
    [
        ('free text with = and "quotes"\nand a second line', (), None),
        ("attempt #%d/%d failed; will retry in %.1fs: %s", (2, 4, 1.5, "timeout"), None),
        ("a=%s b=%s", ("1", "2"), None),  # pairs, but no event: a library's text
        ("event=x %s", ("free words",), None),  # a fragment that is not pairs
        (ValueError("not a string"), (), "not a string"),
    ],
)
def test_anything_else_is_msg(msg: object, args: tuple[object, ...], text: str | None) -> None:
    if text is None:
        text = msg % args if args else str(msg)  # type: ignore[operator]
    fields = parse_record(record(msg, *args))
    assert fields["msg"] == text
    assert "event" not in fields


def test_a_template_with_names_is_read_from_its_text() -> None:
    fields = parse_record(record("event=x n=%(n)d", {"n": 1}))
    assert (fields["event"], fields["n"]) == ("x", "1")


def test_an_exception_is_folded_into_one_line(
    captured: tuple[io.StringIO, logging.Logger],
) -> None:
    stream, log = captured
    configure_logging(level="DEBUG", fmt="logfmt", stream=stream)
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        log.exception("event=task_died task=%r", "watch tunnels")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1, lines
    fields = parse_record(lines[0])
    assert (fields["level"], fields["event"], fields["task"]) == (
        "error",
        "task_died",
        "watch tunnels",
    )
    assert "RuntimeError: boom\nsecond line" in fields["exc"]


def test_json_lines_have_the_same_keys(captured: tuple[io.StringIO, logging.Logger]) -> None:
    stream, log = captured
    configure_logging(level="INFO", fmt="json", stream=stream)
    log.debug("event=hidden")
    log.info("event=route_restored dst=%s", "198.19.0.0/24")
    log.info("plain words")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [list(line) for line in lines] == [
        ["ts", "level", "logger", "event", "dst"],
        ["ts", "level", "logger", "msg"],
    ]
    assert lines[0]["dst"] == "198.19.0.0/24"
    assert lines[1]["msg"] == "plain words"
    assert all(datetime.fromisoformat(line["ts"]).utcoffset() is not None for line in lines)


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log format 'xml'"):
        configure_logging(fmt="xml")  # type: ignore[arg-type]


def _log_calls(tree: ast.AST) -> Iterator[tuple[int, str, int]]:
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr not in ("debug", "info", "warning", "error", "exception", "critical"):
            continue
        if node.args and isinstance(node.args[0], ast.Constant):
            template = node.args[0].value
            if isinstance(template, str) and "event=" in template:
                yield node.lineno, template, len(node.args) - 1


def test_every_event_template_in_the_product_is_read_as_pairs() -> None:
    """A template the formatter cannot read (free words after a value, `%(name)s`) would
    log as one msg string: keys lost for whoever filters on them."""
    from telemetry.logs import _compile

    checked, unreadable = 0, []
    for package in ("vpnctl", "agent", "certs", "telemetry"):
        for path in sorted((REPO / package).rglob("*.py")):
            for line, template, nargs in _log_calls(ast.parse(path.read_text())):
                checked += 1
                slots = _compile(template)
                if slots is None or sum(len(s.reprs) for s in slots) != nargs:
                    unreadable.append(f"{path.relative_to(REPO)}:{line}: {template!r}")
    assert checked > 100
    assert unreadable == []


# --- the binaries ----------------------------------------------------------------------


def _records(stderr: str) -> list[dict[str, str]]:
    return [parse_record(line) for line in stderr.splitlines() if line.startswith("ts=")]


def test_the_agent_logs_logfmt_and_json() -> None:
    """Run the agent on a config it rejects; its stderr records are logfmt, or JSON."""
    argv = [sys.executable, "-m", "agent", "node", "--config", "/nonexistent/node.json"]
    agent = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert agent.returncode == 2
    records = _records(agent.stderr)
    assert records, agent.stderr
    assert (records[0]["logger"], records[0]["level"]) == ("agent", "error")
    assert records[0]["event"] == "config_invalid"
    assert datetime.fromisoformat(records[0]["ts"]).utcoffset() is not None

    agent = subprocess.run(
        [*argv, "--log-format=json"], capture_output=True, text=True, timeout=60, check=False
    )
    lines = [json.loads(ln) for ln in agent.stderr.splitlines() if ln.startswith("{")]
    assert lines, agent.stderr
    assert lines[0]["event"] == "config_invalid"
    assert list(lines[0])[:4] == ["ts", "level", "logger", "event"]


@pytest.mark.parametrize("fmt", ["logfmt", "json"])
def test_vpnctl_run_logs_the_same_format(fmt: str, tmp_path: Path) -> None:
    """`vpnctl run` with a kubeconfig that does not exist: one error record, flags given
    after the sub-command."""
    missing = tmp_path / "missing.kubeconfig"
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG",)}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    run = subprocess.run(
        [sys.executable, "-m", "vpnctl", "run", "--agent-image", "x", "--kubeconfig",
         str(missing), "--log-format", fmt],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1, lines
    fields = json.loads(lines[0]) if fmt == "json" else parse_record(lines[0])
    assert (fields["level"], fields["logger"]) == ("error", "vpnctl.controller.cli")
    assert fields["event"] == "controller_exiting"
    assert str(missing) in fields["error"]
