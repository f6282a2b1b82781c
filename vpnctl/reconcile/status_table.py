"""`vpnctl status`: kubectl-style tables of Tunnels and their nodes, rendered purely.

The CLI fetches the Tunnels (through the kube layer) and prints `render_status(...)`, or
`render_objects(...)` for `-o json|yaml`; everything shown comes from the Tunnels'
status, so the table is what the controller last wrote, with ages computed against the
`now` passed in.

REASON is the Ready condition's reason: why a tenant is not Ready, at a glance; `-o
wide` adds the parts Ready is made of and its message.

Per node, SINCE is the age of the server's connect time (`connectedSince`: openvpn's
connected-since for the current connection) while the node is connected and the server
reports it, else of `since` (when the controller saw `connected` change). RTT is the
server's last probe through the node's tunnel (`rttSeconds`), in milliseconds; `-` when
unknown: disconnected, the kubelet not answering, or a server too old to report it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

import yaml

from vpnctl.api import TUNNEL_API_VERSION, TUNNEL_KIND, Tunnel, TunnelNodeStatus
from vpnctl.reconcile.conditions import (
    AGENT_INSTALLED,
    PKI_READY,
    READY,
    SERVER_READY,
    find_condition,
    parse_rfc3339,
)

TUNNEL_COLUMNS = ("NAMESPACE", "CLUSTER", "READY", "REASON", "NODES", "CONNECTED", "AGE")
TUNNEL_WIDE_COLUMNS = (*TUNNEL_COLUMNS, "PKI", "SERVER", "AGENT", "ROUTE-NODE", "MESSAGE")
NODE_COLUMNS = ("NODE", "TUNNEL-IP", "CONNECTED", "SINCE", "RTT", "KUBELET")
NODE_WIDE_COLUMNS = ("NODE", "MACHINE", "TUNNEL-IP", "CONNECTED", "SINCE", "RTT", "KUBELET")


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
    # Three significant digits at most; a tunnel inside one host is well under 1 ms.
    if ms < 1:
        return f"{ms:.2f}ms"
    return f"{ms:.1f}ms" if ms < 10 else f"{ms:.0f}ms"


def _kubelet(row: TunnelNodeStatus) -> str:
    value = row.get("kubeletReachable")
    return "OK" if value is True else "FAIL" if value is False else "-"


def _condition_status(tunnel: Tunnel, type_: str) -> str:
    found = find_condition((tunnel.get("status") or {}).get("conditions"), type_)
    return found.get("status", "Unknown") if found is not None else "Unknown"


def tunnel_row(tunnel: Tunnel, *, now: datetime, wide: bool = False) -> tuple[str, ...]:
    meta = tunnel.get("metadata") or {}
    status = tunnel.get("status") or {}
    spec = tunnel.get("spec") or {}
    ready = find_condition(status.get("conditions"), READY)
    row = (
        meta.get("namespace", ""),
        spec.get("clusterName") or meta.get("name", ""),
        _condition_status(tunnel, READY),
        (ready.get("reason") if ready is not None else None) or "-",
        str(status.get("nodeCount", 0)),
        str(status.get("connectedCount", 0)),
        _age(meta.get("creationTimestamp"), now=now),
    )
    if not wide:
        return row
    message = " ".join(((ready.get("message") if ready is not None else None) or "-").split())
    return (
        *row,
        *(_condition_status(tunnel, part) for part in (PKI_READY, SERVER_READY, AGENT_INSTALLED)),
        status.get("serviceRouteNode") or "-",
        message,
    )


def _since(row: TunnelNodeStatus, *, now: datetime) -> str:
    connected_since = row.get("connectedSince")
    if row.get("connected") and isinstance(connected_since, str) and connected_since:
        return _age(connected_since, now=now)
    return _age(row.get("since"), now=now)


def node_row(row: TunnelNodeStatus, *, now: datetime, wide: bool = False) -> tuple[str, ...]:
    cells = [
        row.get("name", ""),
        *([row.get("machine") or "-"] if wide else []),
        row.get("tunnelIP") or "-",
        _yes_no(row.get("connected")),
        _since(row, now=now),
        _rtt(row) if row.get("connected") else "-",
        _kubelet(row),
    ]
    return tuple(cells)


def render_status(tunnels: Sequence[Tunnel], *, now: datetime, wide: bool = False) -> str:
    """The tenants table, a blank line, then the nodes table.

    With one Tunnel the nodes table has exactly NODE_COLUMNS (NODE_WIDE_COLUMNS); with
    several, NAMESPACE and CLUSTER come first so rows can be told apart.
    """

    def key(t: Tunnel) -> tuple[str, str]:
        meta = t.get("metadata") or {}
        return (meta.get("namespace", ""), meta.get("name", ""))

    ordered = sorted(tunnels, key=key)
    if not ordered:
        return "No tunnels found.\n"
    out = format_table(
        TUNNEL_WIDE_COLUMNS if wide else TUNNEL_COLUMNS,
        [tunnel_row(t, now=now, wide=wide) for t in ordered],
    )
    many = len(ordered) > 1
    columns = NODE_WIDE_COLUMNS if wide else NODE_COLUMNS
    header = (("NAMESPACE", "CLUSTER") if many else ()) + columns
    rows: list[tuple[str, ...]] = []
    for tunnel in ordered:
        prefix = tunnel_row(tunnel, now=now)[:2] if many else ()
        for node in (tunnel.get("status") or {}).get("nodes") or []:
            rows.append(prefix + node_row(node, now=now, wide=wide))
    if rows:
        out += "\n" + format_table(header, rows)
    return out


def _as_object(tunnel: Tunnel) -> dict[str, Any]:
    """The Tunnel as `kubectl get -o json` shows it: kind and apiVersion set (a list's
    items come without them), managedFields left out."""
    obj: dict[str, Any] = copy.deepcopy(dict(tunnel))
    obj.setdefault("apiVersion", TUNNEL_API_VERSION)
    obj.setdefault("kind", TUNNEL_KIND)
    (obj.get("metadata") or {}).pop("managedFields", None)
    return obj


def render_objects(
    tunnels: Sequence[Tunnel], *, output: Literal["json", "yaml"], single: bool = False
) -> str:
    """The Tunnels as a `v1 List` in JSON or YAML, like kubectl; SINGLE (one Tunnel asked
    for by name) prints that object alone."""

    def key(t: Tunnel) -> tuple[str, str]:
        meta = t.get("metadata") or {}
        return (meta.get("namespace", ""), meta.get("name", ""))

    items = [_as_object(t) for t in sorted(tunnels, key=key)]
    if single and len(items) == 1:
        doc: dict[str, Any] = items[0]
    else:
        doc = {"apiVersion": "v1", "kind": "List", "items": items, "metadata": {}}
    if output == "json":
        return json.dumps(doc, indent=4, sort_keys=True, ensure_ascii=False) + "\n"
    return yaml.safe_dump(doc, sort_keys=True, default_flow_style=False, allow_unicode=True)
