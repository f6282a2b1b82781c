"""openvpn's `>CLIENT:` notifications, read as client authorisation requests.

With `management-client-auth` the server asks the management client about every client
that passed TLS (`>CLIENT:CONNECT`) and again on every renegotiation (`>CLIENT:REAUTH`),
and holds the client until it gets `client-auth`/`client-auth-nt` or `client-deny`. The
question comes as a block of lines (management-notes.txt):

    >CLIENT:CONNECT,{CID},{KID}
    >CLIENT:ENV,common_name=node-1
    >CLIENT:ENV,tls_serial_0=123456789
    ...
    >CLIENT:ENV,END

`>CLIENT:ESTABLISHED` and `>CLIENT:DISCONNECT` have the same shape and are read only so
that their ENV lines are not taken for another block's; `>CLIENT:ADDRESS` has no ENV.

The ENV comes from openvpn, but parts of it describe what the peer sent, so it is read as
hostile: a block that repeats a variable, is cut short by another header, or grows past a
bound is still returned (so it can be denied promptly) with its `problems` listed, and
`serial` is only given when the decimal and hex forms agree.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

_log = logging.getLogger(__name__)

MAX_ENV_LINES = 512
_AUTH_KINDS = ("CONNECT", "REAUTH")
_BLOCK_KINDS = (*_AUTH_KINDS, "ESTABLISHED", "DISCONNECT", "CR_RESPONSE")
_DECIMAL = re.compile(r"[0-9]{1,60}")
_HEX = re.compile(r"[0-9A-Fa-f]{1,2}(:[0-9A-Fa-f]{1,2})*")

AuthKind = Literal["CONNECT", "REAUTH"]


@dataclass(frozen=True, kw_only=True)
class ClientAuthRequest:
    """One CONNECT or REAUTH question; answer it with (cid, kid)."""

    kind: AuthKind
    cid: int
    kid: int
    env: Mapping[str, str] = field(repr=False)
    problems: tuple[str, ...] = ()

    @property
    def common_name(self) -> str | None:
        return self.env.get("common_name") or None

    @property
    def serial(self) -> int | None:
        """The leaf certificate's serial (`tls_serial_0`, `tls_serial_hex_0`), or None if
        missing, malformed, or the two forms disagree."""
        dec = self.env.get("tls_serial_0")
        hexa = self.env.get("tls_serial_hex_0")
        values: set[int] = set()
        if dec is not None:
            if not _DECIMAL.fullmatch(dec):
                return None
            values.add(int(dec))
        if hexa is not None:
            if not _HEX.fullmatch(hexa):
                return None
            values.add(int(hexa.replace(":", ""), 16))
        return values.pop() if len(values) == 1 else None


def _ids(fields: list[str], want: int) -> tuple[int, ...] | None:
    if len(fields) < want or not all(f.isdigit() and len(f) <= 20 for f in fields[:want]):
        return None
    return tuple(int(f) for f in fields[:want])


@dataclass
class _Block:
    kind: str
    cid: int
    kid: int
    env: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    lines: int = 0

    def request(self) -> ClientAuthRequest | None:
        if self.kind not in _AUTH_KINDS:
            return None
        kind: AuthKind = "CONNECT" if self.kind == "CONNECT" else "REAUTH"
        return ClientAuthRequest(
            kind=kind, cid=self.cid, kid=self.kid, env=dict(self.env), problems=tuple(self.problems)
        )


class ClientBlockReader:
    """Feed it the payload of every `>CLIENT:` line, in order; it returns a request when a
    CONNECT or REAUTH block is complete."""

    def __init__(self) -> None:
        self._block: _Block | None = None

    def reset(self) -> None:
        """The connection is gone: a half-read block will never be completed."""
        self._block = None

    def feed(self, payload: str) -> ClientAuthRequest | None:
        kind, _, rest = payload.partition(",")
        if kind == "ENV":
            return self._env(rest)
        if kind == "ADDRESS":
            return None
        if kind not in _BLOCK_KINDS:
            _log.warning("event=management-garbage reason=unknown-client-notification kind=%r",
                         kind[:40])  # fmt: skip
            return None
        cut = self._block
        ids = _ids(rest.split(","), 1 if kind in ("ESTABLISHED", "DISCONNECT") else 2)
        if ids is None:
            _log.warning("event=management-garbage reason=bad-client-header line=%r",
                         payload[:200])  # fmt: skip
            self._block = None
            return None
        self._block = _Block(kind=kind, cid=ids[0], kid=ids[1] if len(ids) > 1 else 0)
        if cut is not None:
            # A header before the previous block's END: answer that one (it is incomplete,
            # so it is denied) rather than leaving the client waiting.
            cut.problems.append("the ENV block was cut short by another >CLIENT: header")
            return cut.request()
        return None

    def _env(self, rest: str) -> ClientAuthRequest | None:
        block = self._block
        if block is None:
            _log.warning("event=management-garbage reason=client-env-outside-block")
            return None
        if rest == "END":
            self._block = None
            return block.request()
        block.lines += 1
        if block.lines > MAX_ENV_LINES:
            if block.lines == MAX_ENV_LINES + 1:
                block.problems.append(f"more than {MAX_ENV_LINES} ENV lines")
            return None
        name, sep, value = rest.partition("=")
        if not sep or not name:
            block.problems.append(f"ENV line without name=value: {rest[:60]!r}")
        elif name in block.env:
            block.problems.append(f"ENV variable {name[:60]!r} repeated")
        else:
            block.env[name] = value
        return None
