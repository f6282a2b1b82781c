"""bench/results.json: every benchmark summary in one document of a fixed shape (issue 14).

Every section and key of the shape is always present. A section this benchmark does not
measure yet holds null values and a `"missing"` note saying why, so a reader (or a later
run that fills it) never has to guess whether a figure was zero or never taken.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_JSON = Path(__file__).resolve().parent / "results.json"

PATHS = ("direct", "vpnctl", "konnectivity", "gardener_style", "kubermatic_style")
FAULTS = ("server_sigkill", "server_restart", "client_sigkill", "agent_pod_deleted",
          "uplink_down_10s")  # fmt: skip
LATENCY_KEYS = ("p50_ms", "p99_ms", "new_conn_p50_ms", "c50_rps", "c50_p99_ms")
TRANSFER_KEYS = ("logs_100k_s", "exec_mb_s_1", "exec_mb_s_4", "port_forward_mb_s_1",
                 "port_forward_mb_s_4")  # fmt: skip
L3_KEYS = ("iperf_mbit_1", "iperf_mbit_4", "ping_p50_ms")
LIFECYCLE_KEYS = ("join_to_reachable_p50_s", "delete_to_refused_s")
CONTROLLER_KEYS = ("tenants", "tenants_per_s", "rss_mib", "idle_resync_s", "idle_resync_writes")
AGENT_KEYS = ("rss_mib", "idle_cpu_pct", "openvpn_rss_mib", "soak_rss_growth_mib",
              "soak_fd_growth", "soak_route_growth")  # fmt: skip
NODE_SCALE_KEYS = ("nodes", "server_idle_cpu_pct", "server_rss_mib", "reconnect_all_s")

KONNECTIVITY_MISSING = (
    "konnectivity is not built or run by the benchmark yet (issue 14: a wrapper module "
    "around apiserver-network-proxy v0.33.0 and a second tenant apiserver)"
)
NOT_NETNS = "needs real kubelets (the lab's tenant nodes); the netns data-path bench has none"


def _nulls(keys: tuple[str, ...]) -> dict[str, Any]:
    return dict.fromkeys(keys)


def _per_path(
    measured: Mapping[str, Mapping[str, Any]], keys: tuple[str, ...], *, why: str
) -> dict[str, Any]:
    """{path: figures} for every path: the measured figures (every key of KEYS, extra keys
    kept), or nulls with a note."""
    out: dict[str, Any] = {}
    for path in PATHS:
        if path in measured:
            out[path] = {**_nulls(keys), **measured[path]}
        else:
            note = KONNECTIVITY_MISSING if path == "konnectivity" else why
            out[path] = {**_nulls(keys), "missing": note}
    return out


def results_doc(
    *,
    date: str,
    machine: str,
    versions: Mapping[str, str],
    latency: Mapping[str, Mapping[str, Any]] | None = None,
    l3: Mapping[str, Mapping[str, Any]] | None = None,
    controller: Mapping[str, Any] | None = None,
    notes: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The whole document: what was measured, and nulls with a reason for the rest."""
    not_run = "not measured in this run"
    recovery: dict[str, Any] = {
        path: {fault: {"p50_s": None, "p99_s": None, "trials": 0} for fault in FAULTS}
        for path in PATHS
    }
    recovery["missing"] = "the fault matrix is not in the benchmark yet (issue 14, item 5)"
    recovery["loss_5pct"] = {path: {"success_ratio": None} for path in PATHS}
    return {
        "date": date,
        "machine": machine,
        "versions": dict(versions),
        "notes": dict(notes or {}),
        "latency": _per_path(latency or {}, LATENCY_KEYS, why=not_run),
        "transfer": _per_path({}, TRANSFER_KEYS, why=NOT_NETNS),
        "l3": _per_path(l3 or {}, L3_KEYS, why=not_run)
        | {"konnectivity": {**_nulls(L3_KEYS), "missing": "konnectivity proxies TCP only"}},
        "recovery": recovery,
        "lifecycle": {**_nulls(LIFECYCLE_KEYS), "missing": NOT_NETNS},
        "controller": {**_nulls(CONTROLLER_KEYS), **controller}
        if controller
        else {**_nulls(CONTROLLER_KEYS), "missing": not_run},
        "agent": {**_nulls(AGENT_KEYS),
                  "missing": "footprint and reconnect soak not in the benchmark yet (item 8)"},
        "node_scale": {**_nulls(NODE_SCALE_KEYS),
                       "missing": "200-node reconnect storm not in the benchmark yet (item 9)"},
    }  # fmt: skip


def _first_line(*argv: str) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "absent"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "kernel": platform.release(),
        "openvpn": _first_line("openvpn", "--version"),
        "iperf3": _first_line("iperf3", "--version"),
    }


def machine() -> str:
    load = os.getloadavg()
    return (f"{platform.node()}, {platform.machine()}, {os.cpu_count()} CPUs, "
            f"load average {load[0]:.1f} at write")  # fmt: skip


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write(doc: Mapping[str, Any], path: Path = RESULTS_JSON) -> None:
    path.write_text(json.dumps(doc, indent=2) + "\n")
