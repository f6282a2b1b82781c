"""One log format for every binary: logfmt by default, JSON by flag.

Each record is one line: `time=<RFC 3339 UTC> level=<level> logger=<name>` followed by
the event. Our code logs events as `event=<name> k=v ...` (see `pairs`); such a message
is emitted as its pairs, so a line reads
`time=2026-12-03T09:30:00.123Z level=info logger=agent event=route_restored dst=198.19.0.0/24`.
Any other message (a library's, or free text) becomes `msg="..."`, quoted, so every line
stays valid logfmt whatever was logged. Tracebacks are folded into one `exc="..."` value:
one record, one line.

With `--log-format=json` the same keys become one JSON object per line.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Literal, TextIO

LogFormat = Literal["logfmt", "json"]
FORMATS: tuple[LogFormat, ...] = ("logfmt", "json")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# A bare logfmt value: no space, quote, equals sign or control character.
_BARE = re.compile(r'[^\s"=\\\x00-\x1f\x7f]+')
_KEY = r"[A-Za-z_][A-Za-z0-9_.\-]*"
_PAIR = re.compile(rf'({_KEY})=("(?:[^"\\\x00-\x1f]|\\.)*"|{_BARE.pattern}|)(?:\s+|$)')


def quote(value: object) -> str:
    """VALUE as a logfmt value: bare when it can be, else double-quoted and escaped."""
    text = str(value)
    if text and _BARE.fullmatch(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def pairs(**fields: object) -> str:
    """`k=v` pairs for one event, in order; fields whose value is None are left out."""
    return " ".join(f"{k}={quote(v)}" for k, v in fields.items() if v is not None)


def parse_pairs(text: str) -> list[tuple[str, str]] | None:
    """The (key, value) pairs of a logfmt TEXT, values unquoted; None if it is not logfmt."""
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _PAIR.match(text, pos)
        if m is None:
            return None
        key, raw = m.group(1), m.group(2)
        out.append((key, json.loads(raw) if raw.startswith('"') else raw))
        pos = m.end()
    return out


def _fields(record: logging.LogRecord, formatter: logging.Formatter) -> list[tuple[str, str]]:
    when = datetime.fromtimestamp(record.created, tz=UTC)
    fields = [
        ("time", when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"),
        ("level", record.levelname.lower()),
        ("logger", record.name),
    ]
    message = record.getMessage()
    event = parse_pairs(message) if message.startswith("event=") else None
    if event is not None:
        fields.extend((k, v) for k, v in event if k not in ("time", "level", "logger"))
    else:
        fields.append(("msg", message))
    if record.exc_info:
        fields.append(("exc", formatter.formatException(record.exc_info)))
    if record.stack_info:
        fields.append(("stack", record.stack_info))
    return fields


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={quote(v)}" for k, v in _fields(record, self))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(dict(_fields(record, self)), ensure_ascii=False)


def configure_logging(
    *, level: str | int = "INFO", fmt: LogFormat = "logfmt", stream: TextIO | None = None
) -> None:
    """Route every logger to one handler on STREAM (stderr) in format FMT."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)
