"""A strict logfmt reader for tests, written apart from `telemetry.logs` on purpose.

The product's own `parse_pairs` is a regular expression that shares its idea of a bare
value with the writer; a test that read the writer's output with it could not catch a
mistake both make. This one is a small state machine after the logfmt convention
(github.com/go-logfmt/logfmt, as Prometheus and Loki read it):

    line   = pair *( 1*SP pair )
    pair   = key "=" value
    key    = 1*( any printable character but SP, "=" and DQUOTE )
    value  = bare / quoted            ; an empty bare value is allowed
    bare   = *( any printable character but SP, "=" and DQUOTE )
    quoted = DQUOTE *( char / escape ) DQUOTE   ; JSON's escapes; no raw control character

Anything else raises `LogfmtError` naming the offset, so a malformed line fails the test
that reads it.
"""

from __future__ import annotations

_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


class LogfmtError(ValueError):
    pass


def _printable(c: str) -> bool:
    return c.isprintable() and c != " "


def parse_line(line: str) -> list[tuple[str, str]]:
    """The (key, value) pairs of one logfmt LINE, in order (keys may repeat)."""
    if "\n" in line or "\r" in line:
        raise LogfmtError("a logfmt record is one line")
    out: list[tuple[str, str]] = []
    i, n = 0, len(line)
    while i < n:
        start = i
        while i < n and _printable(line[i]) and line[i] not in '="':
            i += 1
        if i == start:
            raise LogfmtError(f"a key was expected at offset {i} of {line!r}")
        key = line[start:i]
        if i >= n or line[i] != "=":
            raise LogfmtError(f"key {key!r} has no '=' (offset {i} of {line!r})")
        i += 1
        if i < n and line[i] == '"':
            i, value = _quoted(line, i + 1)
        else:
            start = i
            while i < n and _printable(line[i]) and line[i] not in '="':
                i += 1
            value = line[start:i]
            if i < n and line[i] != " ":
                raise LogfmtError(f"bad character {line[i]!r} in the value of {key!r}")
        out.append((key, value))
        if i < n:
            if line[i] != " ":
                raise LogfmtError(f"a space was expected at offset {i} of {line!r}")
            while i < n and line[i] == " ":
                i += 1
            if i == n:
                raise LogfmtError("trailing space")
    if not out:
        raise LogfmtError("an empty line is not a record")
    return out


def _quoted(line: str, i: int) -> tuple[int, str]:
    chars: list[str] = []
    n = len(line)
    while i < n:
        c = line[i]
        if c == '"':
            return i + 1, "".join(chars)
        if not c.isprintable() and c != " ":
            raise LogfmtError(f"raw unprintable {c!r} inside a quoted value")
        if c != "\\":
            chars.append(c)
            i += 1
            continue
        if i + 1 >= n:
            break
        e = line[i + 1]
        if e in _ESCAPES:
            chars.append(_ESCAPES[e])
            i += 2
        elif e == "u" and i + 6 <= n:
            code = int(line[i + 2 : i + 6], 16)
            i += 6
            if 0xD800 <= code < 0xDC00 and line[i : i + 2] == "\\u":  # a surrogate pair
                low = int(line[i + 2 : i + 6], 16)
                code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                i += 6
            chars.append(chr(code))
        else:
            raise LogfmtError(f"unknown escape \\{e} at offset {i}")
    raise LogfmtError("unterminated quoted value")


def parse_record(line: str) -> dict[str, str]:
    """One line as a dict; a repeated key is an error here (our lines never repeat one)."""
    pairs = parse_line(line)
    out = dict(pairs)
    if len(out) != len(pairs):
        raise LogfmtError(f"a key repeats in {line!r}")
    return out
