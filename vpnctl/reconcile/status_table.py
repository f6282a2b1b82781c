"""`vpnctl status`: kubectl-style tables of Tunnels and their nodes, rendered purely.

The CLI fetches the Tunnels (through the kube layer) and prints `render_status(...)`;
everything shown comes from the Tunnels' status, so the table is what the controller
last wrote, with ages computed against the `now` passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from vpnctl.api import Tunnel, TunnelNodeStatus
from vpnctl.reconcile.conditions import READY, find_condition, parse_rfc3339

TUNNEL_COLUMNS = ("NAMESPACE", "CLUSTER", "READY", "NODES", "CONNECTED", "AGE")
NODE_COLUMNS = ("NODE", "TUNNEL-IP", "CONNECTED", "SINCE", "RTT", "KUBELET")


def human_duration(delta: timedelta) -> str:
    """kubectl's rounding of ages (k8s.io/apimachinery duration.HumanDuration)."""
    seconds = int(delta.total_seconds())
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        s = seconds % 60
        return f"{minutes}m" if s == 0 else f"{minutes}m{s}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = seconds // 3600
    if hours < 8:
        m = minutes % 60
        return f"{hours}h" if m == 0 else f"{hours}h{m}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        h = hours % 24
        return f"{hours // 24}d" if h == 0 else f"{hours // 24}d{h}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        d = (hours // 24) % 365
        years = hours // 24 // 365
        return f"{years}y" if d == 0 else f"{years}y{d}d"
    return f"{hours // 24 // 365}y"


def _age(timestamp: object, *, now: datetime) -> str:
    if not isinstance(timestamp, str) or not timestamp:
        return "<unknown>"
    try:
        return human_duration(now - parse_rfc3339(timestamp))
    except ValueError:
        return "<unknown>"


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, three spaces apart, like kubectl get."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = []
    for row in (header, *rows):
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def _yes_no(value: object) -> str:
    if value is True:
        return "yes"
    if value is False:
        return "no"
    return "-"


def _rtt(row: TunnelNodeStatus) -> str:
    rtt = row.get("rttSeconds")
    if not isinstance(rtt, int | float) or isinstance(rtt, bool):
        return "-"
    ms = rtt * 1000
    return f"{ms:.1f}ms" if ms < 10 else f"{ms:.0f}ms"


def _kubelet(row: TunnelNodeStatus) -> str:
    value = row.get("kubeletReachable")
    return "OK" if value is True else "FAIL" if value is False else "-"


def tunnel_row(tunnel: Tunnel, *, now: datetime) -> tuple[str, ...]:
    meta = tunnel.get("metadata") or {}
    status = tunnel.get("status") or {}
    spec = tunnel.get("spec") or {}
    ready = find_condition(status.get("conditions"), READY)
    return (
        meta.get("namespace", ""),
        spec.get("clusterName") or meta.get("name", ""),
        ready["status"] if ready is not None else "Unknown",
        str(status.get("nodeCount", 0)),
        str(status.get("connectedCount", 0)),
        _age(meta.get("creationTimestamp"), now=now),
    )


def node_row(row: TunnelNodeStatus, *, now: datetime) -> tuple[str, ...]:
    return (
        row.get("name", ""),
        row.get("tunnelIP") or "-",
        _yes_no(row.get("connected")),
        _age(row.get("since"), now=now),
        _rtt(row) if row.get("connected") else "-",
        _kubelet(row),
    )


def render_status(tunnels: Sequence[Tunnel], *, now: datetime) -> str:
    """The tenants table, a blank line, then the nodes table.

    With one Tunnel the nodes table has exactly NODE_COLUMNS; with several, NAMESPACE and
    CLUSTER come first so rows can be told apart.
    """

    def key(t: Tunnel) -> tuple[str, str]:
        meta = t.get("metadata") or {}
        return (meta.get("namespace", ""), meta.get("name", ""))

    ordered = sorted(tunnels, key=key)
    if not ordered:
        return "No tunnels found.\n"
    out = format_table(TUNNEL_COLUMNS, [tunnel_row(t, now=now) for t in ordered])
    many = len(ordered) > 1
    header = (("NAMESPACE", "CLUSTER") if many else ()) + NODE_COLUMNS
    rows: list[tuple[str, ...]] = []
    for tunnel in ordered:
        prefix = tunnel_row(tunnel, now=now)[:2] if many else ()
        for node in (tunnel.get("status") or {}).get("nodes") or []:
            rows.append(prefix + node_row(node, now=now))
    if rows:
        out += "\n" + format_table(header, rows)
    return out
