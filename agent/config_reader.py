"""The validating reader behind every agent input file (`role_config`, `desired_state`).

Why files, and why this strict: today a person or a test writes them; later the vpnctl
controller renders them from Kubernetes objects (Tunnel, Machines, Secrets) into a
ConfigMap or projected volume. Either way a mistake must stop at the door with a message
that names the file, the field and what to do, and never reach openvpn as a half-valid
config. So every file is plain JSON, unknown keys are refused (a typo is never silently
ignored), and each loads into frozen dataclasses.

`Reader` collects every problem of a document instead of stopping at the first, the
`as_*` converters turn one raw JSON value into a typed one or raise `FieldError`, and
`InputError` is what leaves: the file, then one line per problem naming the field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from ipaddress import AddressValueError, IPv4Address, IPv4Network, NetmaskValueError
from typing import Any, TypeVar

from agent.openvpn.config import (
    ConfigError,
    Proto,
    validate_common_name,
)

SERIAL_PATTERN = re.compile(r"[0-9A-Fa-f]{1,2}(:?[0-9A-Fa-f]{1,2})*")
_MAX_FILE_BYTES = 4 * 1024 * 1024

T = TypeVar("T")


class InputError(ValueError):
    """A config or desired-state file is unusable; `problems` lists each finding.

    The message starts with the file, then one line per problem naming the field (as a
    JSON path like `clients[2].iroutes[0]`) and what to do about it.
    """

    def __init__(self, path: str, problems: Sequence[str]) -> None:
        self.path = path
        self.problems = tuple(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{path}: {len(self.problems)} problem(s):\n{lines}")

    @property
    def summary(self) -> str:
        """One line for a readiness reason or a log field."""
        extra = f" (+{len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        return f"{self.path}: {self.problems[0]}{extra}"


class Problems(Exception):
    """Raised inside the parser to stop at a field that cannot be read further."""


class _Missing:
    """Marks "no default": the key is required."""


MISSING = _Missing()
NO_NETS: tuple[IPv4Network, ...] = ()


class Reader:
    """Collects problems while walking one JSON document; every check names its JSON path."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.problems: list[str] = []

    def fail(self, where: str, what: str) -> None:
        self.problems.append(f"{where}: {what}")

    def obj(self, value: object, where: str, *, keys: Sequence[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(where, f"must be a JSON object, got {kind_of(value)}")
            raise Problems
        unknown = sorted(set(value) - set(keys))
        for key in unknown:
            self.fail(
                join_where(where, key),
                f"unknown key; allowed keys here are {', '.join(sorted(keys))} "
                "(check the spelling)",
            )
        return value

    def get(
        self,
        obj: Mapping[str, Any],
        where: str,
        key: str,
        conv: Callable[[object, str], T],
        default: T | _Missing = MISSING,
    ) -> T:
        """OBJ[KEY] converted by CONV; a missing key is an error unless DEFAULT is given."""
        loc = join_where(where, key)
        if key not in obj:
            if isinstance(default, _Missing):
                self.fail(loc, "is required")
                raise Problems
            return default
        try:
            return conv(obj[key], loc)
        except FieldError as e:
            self.fail(loc, str(e))
            raise Problems from None

    def soft(self, fn: Callable[[], T]) -> T | None:
        """Run one field's parse; on a problem, record it and carry on with the next field."""
        try:
            return fn()
        except Problems:
            return None


class FieldError(ValueError):
    pass


def join_where(where: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else key


def kind_of(value: object) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), f"a {type(value).__name__}"
    ) + (f" {value!r}" if isinstance(value, int | float | str) else "")


# --- converters: (raw JSON value, location) -> typed value, raising FieldError -----------


def as_str(value: object, _where: str) -> str:
    if not isinstance(value, str) or not value:
        raise FieldError(f"must be a non-empty string, got {kind_of(value)}")
    return value


def as_opt_str(value: object, where: str) -> str | None:
    return None if value is None else as_str(value, where)


def as_abspath(value: object, where: str) -> str:
    text = as_str(value, where)
    if not text.startswith("/"):
        raise FieldError(f"{text!r} must be an absolute path (start with '/')")
    return text


def as_opt_abspath(value: object, where: str) -> str | None:
    return None if value is None else as_abspath(value, where)


def as_bool(value: object, _where: str) -> bool:
    if not isinstance(value, bool):
        raise FieldError(f"must be true or false, got {kind_of(value)}")
    return value


def as_int(value: object, _where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(f"must be an integer, got {kind_of(value)}")
    return value


def as_port(value: object, where: str) -> int:
    port = as_int(value, where)
    if not 1 <= port <= 65535:
        raise FieldError(f"port {port} is out of range; use 1..65535")
    return port


def as_seconds(low: float, high: float) -> Callable[[object, str], float]:
    def conv(value: object, _where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise FieldError(f"must be a number of seconds, got {kind_of(value)}")
        if not low <= float(value) <= high:
            raise FieldError(f"{value} s is out of range; use {low}..{high} seconds")
        return float(value)

    return conv


def as_proto(value: object, _where: str) -> Proto:
    if value not in ("udp", "tcp"):
        raise FieldError(f'must be "udp" or "tcp", got {kind_of(value)}')
    return value


def as_ip(value: object, where: str) -> IPv4Address:
    text = as_str(value, where)
    try:
        return IPv4Address(text)
    except AddressValueError:
        raise FieldError(f"{text!r} is not an IPv4 address like 198.18.8.11") from None


def as_opt_ip(value: object, where: str) -> IPv4Address | None:
    return None if value is None else as_ip(value, where)


def as_net(value: object, where: str) -> IPv4Network:
    text = as_str(value, where)
    try:
        return IPv4Network(text)
    except (AddressValueError, NetmaskValueError):
        raise FieldError(f"{text!r} is not an IPv4 CIDR like 198.19.0.0/24") from None
    except ValueError:
        raise FieldError(
            f"{text!r} has host bits set; use the network address {IPv4Network(text, strict=False)}"
        ) from None


def as_list(item: Callable[[object, str], T]) -> Callable[[object, str], tuple[T, ...]]:
    def conv(value: object, where: str) -> tuple[T, ...]:
        if not isinstance(value, list):
            raise FieldError(f"must be a list, got {kind_of(value)}")
        out: list[T] = []
        for i, raw in enumerate(value):
            try:
                out.append(item(raw, join_where(where, i)))
            except FieldError as e:
                raise FieldError(f"item {i}: {e}") from None
        return tuple(out)

    return conv


def as_pair(value: object, where: str) -> tuple[int, int]:
    if not isinstance(value, list) or len(value) != 2:
        raise FieldError(f"must be a list of two integers like [1, 5], got {kind_of(value)}")
    return (as_int(value[0], where), as_int(value[1], where))


def as_hostport(value: object, where: str) -> tuple[IPv4Address, int]:
    text = as_str(value, where)
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise FieldError(f'{text!r} must be "ip:port" like 198.19.0.11:10250')
    return (as_ip(host, where), as_port(int(port), where))


def as_listen(value: object, where: str) -> tuple[str, int]:
    ip, port = as_hostport(value, where)
    return (str(ip), port)


def as_remote(value: object, where: str) -> tuple[str, int]:
    if not isinstance(value, list) or len(value) != 2 or not isinstance(value[0], str):
        raise FieldError(
            f'must be a [host, port] pair like ["198.18.0.1", 1194], got {kind_of(value)}'
        )
    return (value[0], as_port(value[1], where))


def as_any(value: object, _where: str) -> object:
    return value


def as_common_name(value: object, where: str) -> str:
    text = as_str(value, where)
    try:
        return validate_common_name(text)
    except ConfigError as e:
        raise FieldError(str(e)) from None


def as_serial(value: object, where: str) -> int | None:
    if value is None:
        return None
    text = as_str(value, where)
    if not SERIAL_PATTERN.fullmatch(text):
        raise FieldError(
            f"{text!r} is not a hex certificate serial (like 5b:01:9f or 5b019f); "
            "copy it from `openssl x509 -serial -noout`"
        )
    return int(text.replace(":", ""), 16)


def as_opt_hostport(value: object, where: str) -> tuple[IPv4Address, int] | None:
    return None if value is None else as_hostport(value, where)


# --- file reading -------------------------------------------------------------------------


def read_json(path: str) -> object:
    """Parse the JSON file at PATH, raising InputError (never OSError/JSONDecodeError)."""
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise InputError(path, ["file not found; create it or fix the path"]) from None
    except OSError as e:
        raise InputError(path, [f"cannot read the file: {e.strerror}"]) from None
    if len(data) > _MAX_FILE_BYTES:
        raise InputError(
            path, [f"file is larger than {_MAX_FILE_BYTES} bytes; is it the right file?"]
        )
    try:
        return json.loads(data)
    except UnicodeDecodeError:
        raise InputError(path, ["file is not UTF-8 text"]) from None
    except json.JSONDecodeError as e:
        raise InputError(
            path, [f"line {e.lineno} column {e.colno}: invalid JSON ({e.msg}); fix the syntax"]
        ) from None
