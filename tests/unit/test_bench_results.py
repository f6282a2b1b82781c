"""bench/results.json keeps issue 14's shape: every key present, unmeasured ones null
with a reason, measured figures where they belong."""

from __future__ import annotations

import json
from typing import Any

from bench import results
from bench.dataplane import STYLES, summarize, table

SHAPE = {
    "latency": results.LATENCY_KEYS,
    "transfer": results.TRANSFER_KEYS,
    "l3": results.L3_KEYS,
}


def _raw(mbit: float) -> dict[str, object]:
    http = {"keepalive": {"p50_ms": 0.5, "p99_ms": 2.0}, "fresh": {"p50_ms": 4.0},
            "stream": {"mb_per_s": 20.0}, "concurrent": {"rps": 900.0, "p99_ms": 30.0}}  # fmt: skip
    return {"http": http, "iperf_mbit_1": mbit, "iperf_mbit_4": mbit * 1.1, "ping_p50_ms": 0.4}


def test_an_empty_run_has_every_key_null_with_a_reason() -> None:
    doc = results.results_doc(date="d", machine="m", versions={"openvpn": "2.6"})
    json.dumps(doc)  # serialisable as is
    for section, keys in SHAPE.items():
        for path in results.PATHS:
            entry = doc[section][path]
            assert all(entry[k] is None for k in keys), (section, path)
            assert entry["missing"], (section, path)
    for path in results.PATHS:
        for fault in results.FAULTS:
            assert doc["recovery"][path][fault] == {"p50_s": None, "p99_s": None, "trials": 0}
        assert doc["recovery"]["loss_5pct"][path] == {"success_ratio": None}
    for section, keys in (
        ("lifecycle", results.LIFECYCLE_KEYS), ("controller", results.CONTROLLER_KEYS),
        ("agent", results.AGENT_KEYS), ("node_scale", results.NODE_SCALE_KEYS),
    ):  # fmt: skip
        assert all(doc[section][k] is None for k in keys), section
        assert doc[section]["missing"], section
    assert doc["versions"] == {"openvpn": "2.6"}


def test_measured_paths_fill_their_keys_and_only_theirs() -> None:
    latency, l3 = summarize({"direct": _raw(9000.0), "vpnctl": _raw(600.0),
                             "gardener_style": _raw(400.0)})  # fmt: skip
    doc = results.results_doc(
        date="d", machine="m", versions={}, latency=latency, l3=l3,
        controller={"tenants": 1000, "tenants_per_s": 12.5, "rss_mib": 150.0},
    )  # fmt: skip
    assert doc["latency"]["vpnctl"]["c50_rps"] == 900.0
    assert doc["latency"]["vpnctl"]["new_conn_p50_ms"] == 4.0
    assert "missing" not in doc["latency"]["vpnctl"]
    assert doc["l3"]["gardener_style"]["iperf_mbit_1"] == 400.0
    assert doc["l3"]["kubermatic_style"]["iperf_mbit_1"] is None
    assert "TCP" in doc["l3"]["konnectivity"]["missing"]
    assert doc["controller"]["tenants_per_s"] == 12.5
    assert doc["controller"]["idle_resync_s"] is None
    assert doc["transfer"]["vpnctl"]["exec_mb_s_1"] is None


def test_table_reports_one_stream_against_gardener_style_from_the_same_run() -> None:
    text = table(*summarize({"vpnctl": _raw(600.0), "gardener_style": _raw(400.0)}))
    (vpnctl_row,) = (ln for ln in text.splitlines() if ln.startswith("| vpnctl "))
    assert "1.50x" in vpnctl_row


def test_peer_styles_say_what_differs() -> None:
    assert STYLES["vpnctl"].proto == "udp"
    assert STYLES["gardener_style"].keepalive == (10, 30)
    assert "tls-auth" in STYLES["gardener_style"].note
    assert STYLES["kubermatic_style"].proto == "tcp"


def test_styled_role_config_changes_timers_and_leaves_the_original() -> None:
    from bench.dataplane import styled

    config: dict[str, Any] = {
        "openvpn": {"proto": "tcp", "keepalive": [1, 5]},
        "probe": {"target": "x:1"},
    }
    out = styled(config, STYLES["gardener_style"])
    assert out["openvpn"]["keepalive"] == [10, 30]
    assert out["probe"] == {"target": "x:1", "interval": 2.0}
    assert config["openvpn"]["keepalive"] == [1, 5]
    assert "interval" not in config["probe"]
