"""One log format for every binary: logfmt by default, JSON by flag.

Each record is one line: `ts=<RFC 3339 UTC> level=<level> logger=<name>` followed by
the record's own keys, e.g.
`ts=2026-12-03T09:30:00.123Z level=info logger=agent event=route_restored dst=198.19.0.0/24`.

Our code logs events: a message template of `key=%s` pairs with `event=<name>` among
them (`log.info("event=tenant_ready tenant=%s nodes=%d", key, n)`), or a line built with
`pairs(...)`. The formatter reads the template, not the rendered text, so each argument
becomes one value, quoted and escaped as logfmt requires: a value with spaces, quotes or
`=` in it can neither break the line nor forge a key. `%r` of a string gives the string
(the quoting is the format's job); `%r` of anything else gives its repr. Any other
message (a library's, or free text) becomes `msg="..."`, so every line is valid logfmt
whatever was logged. Tracebacks are folded into one `exc="..."` value: one record, one
line. Quoted values use JSON's escapes, and characters that are not printable (a line or
paragraph separator, a control character) are always escaped.

With `--log-format=json` the same keys become one JSON object per line.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, TextIO

LogFormat = Literal["logfmt", "json"]
FORMATS: tuple[LogFormat, ...] = ("logfmt", "json")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# Keys every line starts with; an event's own field of the same name is renamed.
RESERVED_KEYS = ("ts", "level", "logger", "msg", "exc", "stack")

# A bare logfmt value: no space, quote, equals sign, backslash or control character.
_BARE = re.compile(r'[^\s"=\\\x00-\x1f\x7f]+')
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_PAIR = re.compile(rf'({_KEY.pattern})=("(?:[^"\\\x00-\x1f]|\\.)*"|{_BARE.pattern}|)(?:\s+|$)')
# One printf-style conversion of a %-template (logging's own style).
_SPEC = re.compile(r"%(\([^)]*\))?[#0 +\-]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?([diouxXeEfFgGcrsa%])")


def _escape_unprintable(text: str) -> str:
    if text.isprintable():
        return text
    # json.dumps of one character, ASCII-only, is its JSON escape (\u2028, \ud83d\ude00).
    return "".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in text)


def quote(value: object) -> str:
    """VALUE as a logfmt value: bare when it can be, else double-quoted and escaped."""
    text = str(value)
    if text and _BARE.fullmatch(text) and text.isprintable():
        return text
    return _escape_unprintable(json.dumps(text, ensure_ascii=False))


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


@dataclass(frozen=True)
class _Slot:
    """One whitespace-separated token of a message template.

    `key=fragment` names one value; a token that is only `%s` (no key) is a fragment of
    ready-made pairs (`"event=x %s" % pairs(...)`)."""

    key: str | None
    fragment: str  # with every %r turned into %s (see `reprs`)
    reprs: tuple[bool, ...]  # per argument: was it %r?


@functools.lru_cache(maxsize=1024)
def _compile(template: str) -> tuple[_Slot, ...] | None:
    """The slots of TEMPLATE, or None if it is not a template of pairs."""
    slots: list[_Slot] = []
    for token in template.split():
        key, eq, fragment = token.partition("=")
        if not eq:
            if token != "%s":
                return None
            key_or_none: str | None = None
            fragment = token
        elif _KEY.fullmatch(key):
            key_or_none = key
        else:
            return None
        reprs: list[bool] = []
        for spec in _SPEC.finditer(fragment):
            if spec.group(1) is not None or "*" in (spec.group(2) or "", spec.group(3) or ""):
                return None  # %(name)s and %*d: not worth reading; the text is logged as msg
            if spec.group(4) != "%":
                reprs.append(spec.group(4) == "r")
        rendered = _SPEC.sub(lambda m: m.group(0)[:-1] + "s" if m.group(4) == "r" else m.group(0),
                             fragment)  # fmt: skip
        slots.append(_Slot(key_or_none, rendered, tuple(reprs)))
    return tuple(slots)


def _event_pairs(record: logging.LogRecord) -> list[tuple[str, str]] | None:
    """The record's pairs, read from its template and arguments; None for free text."""
    if not isinstance(record.msg, str) or isinstance(record.args, Mapping):
        return None
    args = tuple(record.args or ())
    if not args:  # logging does not %-format a message without arguments
        return parse_pairs(record.msg)
    slots = _compile(record.msg)
    if slots is None or sum(len(s.reprs) for s in slots) != len(args):
        return None
    out: list[tuple[str, str]] = []
    pos = 0
    try:
        for slot in slots:
            mine = args[pos : pos + len(slot.reprs)]
            pos += len(slot.reprs)
            values = tuple(
                a if not is_repr or isinstance(a, str) else repr(a)
                for a, is_repr in zip(mine, slot.reprs, strict=True)
            )
            text = slot.fragment % values
            if slot.key is not None:
                out.append((slot.key, text))
                continue
            ready = parse_pairs(text)
            if ready is None:
                return None
            out.extend(ready)
    except (TypeError, ValueError):  # an argument that does not fit its conversion
        return None
    return out


def _fields(record: logging.LogRecord, formatter: logging.Formatter) -> list[tuple[str, str]]:
    when = datetime.fromtimestamp(record.created, tz=UTC)
    fields = [
        ("ts", when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"),
        ("level", record.levelname.lower()),
        ("logger", record.name),
    ]
    event = _event_pairs(record)
    if event is None or not any(k == "event" for k, _ in event):
        message = record.getMessage()
        # A template this module cannot read whose text is nevertheless logfmt.
        event = parse_pairs(message) if message.startswith("event=") else None
        if event is None:
            fields.append(("msg", message))
    if event is not None:
        event.sort(key=lambda kv: kv[0] != "event")  # stable: the event's name first
        fields.extend((f"{k}_" if k in RESERVED_KEYS else k, v) for k, v in event)
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
        return _escape_unprintable(json.dumps(dict(_fields(record, self)), ensure_ascii=False))


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
