"""One event per log line, `event=<name> role=<role> k=v ...`, for every part of the agent."""

from __future__ import annotations

import logging

from telemetry.logs import LogFormat, configure_logging, pairs


def kv(**fields: object) -> str:
    """`k=v` pairs for one log line, in logfmt (`telemetry.logs.pairs`)."""
    return pairs(**fields)


class EventLog:
    """One event per line: `event=<name> role=<role> k=v ...`."""

    def __init__(self, *, logger: logging.Logger, role: str) -> None:
        self._log = logger
        self._role = role

    def __call__(self, event: str, *, level: int = logging.INFO, **fields: object) -> None:
        self._log.log(level, "%s", kv(event=event, role=self._role, **fields))

    def warning(self, event: str, **fields: object) -> None:
        self(event, level=logging.WARNING, **fields)

    def error(self, event: str, **fields: object) -> None:
        self(event, level=logging.ERROR, **fields)


def setup_logging(*, level: int | str = logging.INFO, fmt: LogFormat = "logfmt") -> None:
    """One record a line on stderr, in the format every vpnctl binary writes."""
    configure_logging(level=level, fmt=fmt)
