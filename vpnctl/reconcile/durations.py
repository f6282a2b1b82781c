"""Go-style durations (`8760h`, `90m`, `1h30m`), as Kubernetes APIs spell them.

Kubernetes' `metav1.Duration` and every controller's flags use Go's `time.ParseDuration`
syntax, so a Tunnel's certificate lifetimes do too; people already know `8760h`. Days are
not a Go unit and are rejected with a hint, rather than guessed.
"""

from __future__ import annotations

import re
from datetime import timedelta

# The CRD's OpenAPI pattern is the same grammar (see charts/vpnctl/files/crds/).
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(h|m|s|ms))+$"

_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(h|ms|m|s)")
_WHOLE = re.compile(DURATION_PATTERN)
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(text: str) -> timedelta:
    """Parse `text`; raise ValueError saying what is accepted."""
    if not isinstance(text, str) or not _WHOLE.fullmatch(text):
        hint = " (days are not a unit: write 720h for 30 days)" if "d" in str(text) else ""
        raise ValueError(f"{text!r} is not a duration like 8760h, 90m or 1h30m{hint}")
    seconds = sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _PART.findall(text))
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """The inverse for whole seconds: `timedelta(days=365)` -> `8760h`, `90m` -> `1h30m`."""
    total = int(delta.total_seconds())
    if total <= 0:
        return "0s"
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{v}{u}" for v, u in ((hours, "h"), (minutes, "m"), (seconds, "s")) if v]
    return "".join(parts)
