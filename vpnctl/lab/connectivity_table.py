"""The lab's connectivity table, rendered the way `kubectl get` renders tables.

This is what `vpnctl lab up` and `lab status` end with, and what a person reads
to know whether the tunnel works: one row per node, one cell per path the
apiserver needs (kubelet, logs, exec, port-forward, a webhook behind the node, and
metrics through the aggregated API), each OK with a latency (a rate for the streams)
or FAIL with a reason. Pure: it takes results and returns text, so the
layout is tested without a lab.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

COLUMNS = (
    "NODE", "INTERNAL-IP", "TUNNEL-IP", "KUBELET", "LOGS", "EXEC", "PORT-FORWARD", "WEBHOOK",
    "TOP",
)  # fmt: skip
CHECK_COLUMNS = COLUMNS[3:]
GAP = "   "  # kubectl separates columns by three spaces


class CheckResult(Protocol):
    """What a cell needs; `probe.ProbeResult` is one."""

    @property
    def ok(self) -> bool: ...
    @property
    def latency_ms(self) -> float | None: ...
    @property
    def error(self) -> str | None: ...
    @property
    def rate(self) -> bool: ...
    @property
    def bytes(self) -> int: ...


@dataclass(frozen=True, kw_only=True)
class NodeRow:
    node: str
    internal_ip: str
    tunnel_ip: str | None  # None: the node has no tunnel address (yet)
    kubelet: CheckResult
    logs: CheckResult
    exec: CheckResult
    port_forward: CheckResult
    webhook: CheckResult
    top: CheckResult

    @property
    def checks(self) -> tuple[CheckResult, ...]:
        """In CHECK_COLUMNS order."""
        return (self.kubelet, self.logs, self.exec, self.port_forward, self.webhook, self.top)


def format_latency(ms: float) -> str:
    """`0.42ms`, `2.1ms`, `153ms`: about two significant digits, as a person reads them."""
    if ms < 1:
        return f"{ms:.2f}ms"
    if ms < 10:
        return f"{ms:.1f}ms"
    return f"{ms:.0f}ms"


def format_rate(nbytes: int, ms: float) -> str:
    """`38MB/s`, `4.2MB/s`, `0.31MB/s` (10^6 bytes a second)."""
    mb_s = nbytes / 1e6 / (ms / 1000) if ms > 0 else 0.0
    if mb_s >= 10:
        return f"{mb_s:.0f}MB/s"
    return f"{mb_s:.1f}MB/s" if mb_s >= 1 else f"{mb_s:.2f}MB/s"


def cell(result: CheckResult) -> str:
    """`OK 2.1ms`, `OK 38MB/s` (a stream), `OK`, `FAIL timeout`."""
    if result.ok:
        if result.latency_ms is None:
            return "OK"
        if result.rate and result.bytes:
            return f"OK {format_rate(result.bytes, result.latency_ms)}"
        return f"OK {format_latency(result.latency_ms)}"
    reason = " ".join((result.error or "failed").split())  # one line, whatever came in
    return f"FAIL {reason}"


def render_table(rows: Sequence[NodeRow]) -> str:
    """The table, header first, one line per row, columns aligned, no trailing spaces."""
    lines: list[tuple[str, ...]] = [COLUMNS]
    for r in rows:
        lines.append(
            (r.node, r.internal_ip, r.tunnel_ip or "<none>", *(cell(c) for c in r.checks))
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    return "\n".join(
        GAP.join(text.ljust(w) for text, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def failures(rows: Sequence[NodeRow]) -> list[str]:
    """`node-2 KUBELET: timeout` for every failed cell, in table order."""
    out = []
    for r in rows:
        for column, check in zip(CHECK_COLUMNS, r.checks, strict=True):
            if not check.ok:
                out.append(f"{r.node} {column}: {check.error or 'failed'}")
    return out


def any_failed(rows: Sequence[NodeRow]) -> bool:
    return any(not c.ok for r in rows for c in r.checks)


def summary(rows: Sequence[NodeRow]) -> str:
    """One line under the table: `3/3 nodes OK, 9/9 checks OK` or what failed."""
    total = sum(len(r.checks) for r in rows)
    ok_checks = sum(c.ok for r in rows for c in r.checks)
    ok_nodes = sum(all(c.ok for c in r.checks) for r in rows)
    line = f"{ok_nodes}/{len(rows)} nodes OK, {ok_checks}/{total} checks OK"
    failed = failures(rows)
    if failed:
        line += "; FAIL: " + ", ".join(failed)
    return line


def render(rows: Sequence[NodeRow]) -> str:
    """Table plus summary line, ready to print."""
    return f"{render_table(rows)}\n\n{summary(rows)}"
