"""Every alert of the chart's PrometheusRule, run by the real ``promtool test rules``.

The rules are what ``helm template`` renders with monitoring on (release ``vpnctl`` in
``vpnctl-system``), written to a rules file as Prometheus loads them. Each alert gets a
case where it fires, with the exact labels and rendered annotations (so a template
mistake in a summary fails here), and cases where it must not: too short, the healthy
state, or the look-alike it must not confuse (a node connected to one server replica
only, the CRL among the certificates, a leader handover). A test below makes sure no
alert of the chart is left without a firing case.

promtool evaluates from Unix time 0, so a timestamp metric of 5 days is "5 days from
now" at the start of a test.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.monitoring import prometheus_rule_groups, promtool, render_chart

CONTROLLER = {"job": "vpnctl-metrics", "namespace": "vpnctl-system"}
SERVERS_JOB = "vpnctl-system/vpnctl-servers"
WARNING = {"severity": "warning"}


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return {"series": f"{name}{{{inner}}}", "values": values}


def fired(
    rule: dict[str, Any], labels: dict[str, str], **rendered: str
) -> dict[str, dict[str, str]]:
    """One expected alert: LABELS plus the alert's own, and its annotations with each
    template expression replaced by what promtool must render for it (RENDERED maps
    ``$labels.node`` or ``$value`` or ``$value | humanizeDuration`` to the text)."""
    annotations = {}
    for key, text in rule["annotations"].items():
        for expression, value in rendered.items():
            text = text.replace("{{ " + expression + " }}", value)
        assert "{{" not in text, f"{rule['alert']}: no expected text for a template in {text!r}"
        annotations[key] = text
    return {"exp_labels": {**rule["labels"], **labels}, "exp_annotations": annotations}


def cases(rules: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    r = rules
    return [
        {  # the controller stops answering; fires once it has been down for 5m
            "interval": "1m",
            "input_series": [
                series("up", "1 1 1 0x20", **CONTROLLER, instance="10.0.0.1:8080"),
                series("up", "0x23", **CONTROLLER, instance="10.0.0.2:8080"),
            ],
            "alert_rule_test": [
                {"eval_time": "3m", "alertname": "VpnctlControllerDown", "exp_alerts": []},
                {"eval_time": "6m", "alertname": "VpnctlControllerDown", "exp_alerts": []},
                {
                    "eval_time": "10m",
                    "alertname": "VpnctlControllerDown",
                    "exp_alerts": [fired(r["VpnctlControllerDown"], {})],
                },
            ],
        },
        {  # no controller target at all (the broken-metrics-port case): absent() fires
            "interval": "1m",
            "input_series": [
                series("up", "1x20", job="other", namespace="vpnctl-system", instance="x"),
            ],
            "alert_rule_test": [
                {
                    "eval_time": "6m",
                    "alertname": "VpnctlControllerDown",
                    "exp_alerts": [fired(r["VpnctlControllerDown"], {})],
                },
            ],
        },
        {  # a handover (a -> b) is no alert; nobody leading for 5m is
            "interval": "1m",
            "input_series": [
                series("vpnctl_leader", "1 1 0x30", **CONTROLLER, instance="a"),
                series("vpnctl_leader", "0 0 1x10 0x20", **CONTROLLER, instance="b"),
            ],
            "alert_rule_test": [
                {"eval_time": "10m", "alertname": "VpnctlNoLeader", "exp_alerts": []},
                {"eval_time": "15m", "alertname": "VpnctlNoLeader", "exp_alerts": []},
                {
                    "eval_time": "20m",
                    "alertname": "VpnctlNoLeader",
                    "exp_alerts": [fired(r["VpnctlNoLeader"], {})],
                },
            ],
        },
        {  # two Tunnels not Ready for longer than 5m; both replicas report during handover
            "interval": "1m",
            "input_series": [
                series(
                    "vpnctl_tenants", "0 0 2x10", instance="a", condition="Ready", status="False"
                ),
                series("vpnctl_tenants", "0x12", instance="a", condition="Ready", status="Unknown"),
                series(
                    "vpnctl_tenants", "3 3 1x10", instance="a", condition="Ready", status="True"
                ),
                series("vpnctl_tenants", "2x12", instance="b", condition="Ready", status="False"),
            ],
            "alert_rule_test": [
                {"eval_time": "1m", "alertname": "VpnctlTunnelNotReady", "exp_alerts": []},
                {
                    "eval_time": "10m",
                    "alertname": "VpnctlTunnelNotReady",
                    "exp_alerts": [fired(r["VpnctlTunnelNotReady"], {}, **{"$value": "2"})],
                },
            ],
        },
        {  # one server pod stops answering its scrapes for 10m; the other is fine
            "interval": "1m",
            "input_series": [
                series(
                    "up",
                    "1 0x20",
                    job=SERVERS_JOB,
                    namespace="tenant-a",
                    pod="server-0",
                    instance="10.1.0.5:8081",
                ),
                series(
                    "up",
                    "1x20",
                    job=SERVERS_JOB,
                    namespace="tenant-a",
                    pod="server-1",
                    instance="10.1.0.6:8081",
                ),
            ],
            "alert_rule_test": [
                {"eval_time": "8m", "alertname": "VpnctlServerScrapeFailing", "exp_alerts": []},
                {
                    "eval_time": "15m",
                    "alertname": "VpnctlServerScrapeFailing",
                    "exp_alerts": [
                        fired(
                            r["VpnctlServerScrapeFailing"],
                            {
                                "job": SERVERS_JOB,
                                "namespace": "tenant-a",
                                "pod": "server-0",
                                "instance": "10.1.0.5:8081",
                            },
                            **{"$labels.pod": "server-0", "$labels.namespace": "tenant-a"},
                        )
                    ],
                },
            ],
        },
        {  # node-1 lost its tunnel to both replicas; node-2 is connected to one: fine
            "interval": "1m",
            "input_series": [
                series(
                    "vpnctl_agent_node_connected",
                    "1 1 0x10",
                    namespace="tenant-a",
                    pod="server-0",
                    role="server",
                    node="node-1",
                ),
                series(
                    "vpnctl_agent_node_connected",
                    "0x12",
                    namespace="tenant-a",
                    pod="server-1",
                    role="server",
                    node="node-1",
                ),
                series(
                    "vpnctl_agent_node_connected",
                    "1x12",
                    namespace="tenant-a",
                    pod="server-0",
                    role="server",
                    node="node-2",
                ),
                series(
                    "vpnctl_agent_node_connected",
                    "0x12",
                    namespace="tenant-a",
                    pod="server-1",
                    role="server",
                    node="node-2",
                ),
            ],
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "VpnctlNodeDisconnected", "exp_alerts": []},
                {
                    "eval_time": "10m",
                    "alertname": "VpnctlNodeDisconnected",
                    "exp_alerts": [
                        fired(
                            r["VpnctlNodeDisconnected"],
                            {"namespace": "tenant-a", "node": "node-1"},
                            **{"$labels.node": "node-1", "$labels.namespace": "tenant-a"},
                        )
                    ],
                },
            ],
        },
        {  # node-1's tunnel is up but its kubelet does not answer; node-2 has no tunnel
            # at all (that is VpnctlNodeDisconnected's, not this alert's)
            "interval": "1m",
            "input_series": [
                series(
                    "vpnctl_agent_node_connected",
                    "1x12",
                    namespace="tenant-a",
                    pod="server-0",
                    role="server",
                    node="node-1",
                ),
                series(
                    "vpnctl_agent_kubelet_reachable",
                    "1 0x11",
                    namespace="tenant-a",
                    pod="server-0",
                    role="server",
                    node="node-1",
                ),
                series(
                    "vpnctl_agent_node_connected",
                    "0x12",
                    namespace="tenant-a",
                    pod="server-0",
                    role="server",
                    node="node-2",
                ),
                series(
                    "vpnctl_agent_kubelet_reachable",
                    "0x12",
                    namespace="tenant-a",
                    pod="server-0",
                    role="server",
                    node="node-2",
                ),
            ],
            "alert_rule_test": [
                {"eval_time": "3m", "alertname": "VpnctlKubeletUnreachable", "exp_alerts": []},
                {
                    "eval_time": "10m",
                    "alertname": "VpnctlKubeletUnreachable",
                    "exp_alerts": [
                        fired(
                            r["VpnctlKubeletUnreachable"],
                            {"namespace": "tenant-a", "node": "node-1"},
                            **{"$labels.node": "node-1", "$labels.namespace": "tenant-a"},
                        )
                    ],
                },
            ],
        },
        {  # the server certificate expires in 5 days (< 7); the CRL, sooner, is not a
            # certificate (VpnctlCRLExpiring's); the CA, in 30 days, is fine
            "interval": "1m",
            "input_series": [
                series(
                    "vpnctl_certificate_expiry_timestamp_seconds",
                    f"{5 * 86400}x20",
                    tenant_namespace="tenant-a",
                    cluster="a",
                    certificate="server",
                    instance="c",
                ),
                series(
                    "vpnctl_certificate_expiry_timestamp_seconds",
                    f"{86400}x20",
                    tenant_namespace="tenant-a",
                    cluster="a",
                    certificate="crl",
                    instance="c",
                ),
                series(
                    "vpnctl_certificate_expiry_timestamp_seconds",
                    f"{30 * 86400}x20",
                    tenant_namespace="tenant-a",
                    cluster="a",
                    certificate="ca",
                    instance="c",
                ),
            ],
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "VpnctlCertificateExpiring", "exp_alerts": []},
                {
                    "eval_time": "15m",
                    "alertname": "VpnctlCertificateExpiring",
                    "exp_alerts": [
                        fired(
                            r["VpnctlCertificateExpiring"],
                            {
                                "tenant_namespace": "tenant-a",
                                "cluster": "a",
                                "certificate": "server",
                            },
                            **{
                                "$labels.certificate": "server",
                                "$labels.tenant_namespace": "tenant-a",
                                "$labels.cluster": "a",
                                "$value | humanizeDuration": "4d 23h 45m 0s",
                            },
                        )
                    ],
                },
            ],
        },
        {  # tenant-a's installed CRL reaches nextUpdate in 12 h (< 24 h); tenant-b's in 3 d
            "interval": "1m",
            "input_series": [
                series(
                    "vpnctl_agent_crl_expiry_timestamp_seconds",
                    f"{12 * 3600}x20",
                    namespace="tenant-a",
                    pod="server-0",
                    role="server",
                ),
                series(
                    "vpnctl_agent_crl_expiry_timestamp_seconds",
                    f"{72 * 3600}x20",
                    namespace="tenant-b",
                    pod="server-0",
                    role="server",
                ),
            ],
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "VpnctlCRLExpiring", "exp_alerts": []},
                {
                    "eval_time": "15m",
                    "alertname": "VpnctlCRLExpiring",
                    "exp_alerts": [
                        fired(
                            r["VpnctlCRLExpiring"],
                            {"namespace": "tenant-a"},
                            **{
                                "$labels.namespace": "tenant-a",
                                "$value | humanizeDuration": "11h 45m 0s",
                            },
                        )
                    ],
                },
            ],
        },
        {  # from minute 11, 5 of 18 reconciles a minute fail: pending, then firing after 15m
            "interval": "1m",
            "input_series": [
                series("vpnctl_reconciles_total", "0+10x60", result="ok", instance="a"),
                series("vpnctl_reconciles_total", "0x10 5+5x50", result="error", instance="a"),
                series("vpnctl_reconciles_total", "0+3x60", result="retry", instance="a"),
            ],
            "alert_rule_test": [
                {"eval_time": "20m", "alertname": "VpnctlReconcileErrors", "exp_alerts": []},
                {
                    "eval_time": "45m",
                    "alertname": "VpnctlReconcileErrors",
                    "exp_alerts": [
                        fired(
                            r["VpnctlReconcileErrors"],
                            {},
                            **{"$value | humanizePercentage": "27.78%"},
                        )
                    ],
                },
            ],
        },
        {  # the tunnels watch fails every minute; the nodes watch is only closed by the
            # server now and then, which is normal
            "interval": "1m",
            "input_series": [
                series(
                    "vpnctl_watch_restarts_total",
                    "0+1x30",
                    resource="tunnels",
                    reason="error",
                    instance="a",
                ),
                series(
                    "vpnctl_watch_restarts_total",
                    "0+1x30",
                    resource="nodes",
                    reason="closed",
                    instance="a",
                ),
                series(
                    "vpnctl_watch_restarts_total",
                    "0x30",
                    resource="nodes",
                    reason="error",
                    instance="a",
                ),
            ],
            "alert_rule_test": [
                {"eval_time": "2m", "alertname": "VpnctlWatchRestarts", "exp_alerts": []},
                {
                    "eval_time": "20m",
                    "alertname": "VpnctlWatchRestarts",
                    "exp_alerts": [
                        fired(
                            r["VpnctlWatchRestarts"],
                            {"resource": "tunnels"},
                            **{"$labels.resource": "tunnels", "$value": "15"},
                        )
                    ],
                },
            ],
        },
    ]


@pytest.fixture(scope="module")
def rule_groups() -> list[dict[str, Any]]:
    # Rendered once per module, outside the tests' event loops (helm takes ~0.2 s).
    return prometheus_rule_groups(asyncio.run(render_chart({"monitoring": {"enabled": True}})))


def _alerts(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def test_every_alert_has_a_firing_case(rule_groups: list[dict[str, Any]]) -> None:
    alerts = _alerts(rule_groups)
    firing = {
        t["alertname"] for case in cases(alerts) for t in case["alert_rule_test"] if t["exp_alerts"]
    }
    assert set(alerts) == firing, (
        f"alerts without a firing case: {sorted(set(alerts) - firing)}; "
        f"cases for alerts the chart lacks: {sorted(firing - set(alerts))}"
    )


def test_promtool_checks_and_tests_every_alert(
    rule_groups: list[dict[str, Any]], tmp_path: Path
) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups}))
    checked = promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": cases(_alerts(rule_groups)),
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests, width=1000))
    done = promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_test_can_fail(rule_groups: list[dict[str, Any]], tmp_path: Path) -> None:
    """The harness above would pass vacuously if promtool ignored our cases: here a case
    expects an alert that must not fire (a node connected to one replica of two)."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups}))
    rule = _alerts(rule_groups)["VpnctlNodeDisconnected"]
    wrong = {
        "interval": "1m",
        "input_series": [
            series(
                "vpnctl_agent_node_connected",
                "1x12",
                namespace="t",
                pod="server-0",
                role="server",
                node="node-2",
            ),
            series(
                "vpnctl_agent_node_connected",
                "0x12",
                namespace="t",
                pod="server-1",
                role="server",
                node="node-2",
            ),
        ],
        "alert_rule_test": [
            {
                "eval_time": "10m",
                "alertname": "VpnctlNodeDisconnected",
                "exp_alerts": [
                    fired(
                        rule,
                        {"namespace": "t", "node": "node-2"},
                        **{"$labels.node": "node-2", "$labels.namespace": "t"},
                    )
                ],
            }
        ],
    }
    (tmp_path / "tests.yaml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yaml"], "tests": [wrong]}, width=1000)
    )
    done = promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    assert done.returncode != 0
    assert "VpnctlNodeDisconnected" in done.stdout + done.stderr
