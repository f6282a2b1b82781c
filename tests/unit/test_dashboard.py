"""The Grafana dashboard the chart ships (charts/vpnctl/dashboards/vpnctl.json).

A schema test, run on the ConfigMap ``helm template`` renders: the JSON is valid and
well-formed for Grafana (unique panel ids, a datasource on every query, every variable
used defined), every query parses as PromQL (``promtool check rules`` on them as
recording rules, Grafana's variables replaced by what Grafana would put there), and
every metric a query reads is one our binaries register (``tests/support/metric_catalog``),
so a renamed metric breaks this test, not a platform team's dashboard.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.metric_catalog import catalog
from tests.support.monitoring import VPNCTL_CHART, promtool, render_chart

DASHBOARD_FILE = VPNCTL_CHART / "dashboards" / "vpnctl.json"
# Series Prometheus makes itself, not our binaries.
PROMETHEUS_SERIES = frozenset({"up"})
# What Grafana substitutes for its built-in variables, in a form PromQL accepts.
GRAFANA_BUILTINS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
_PROMQL_WORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
     "unless", "offset", "inf", "nan"}
)  # fmt: skip
_VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads: identifiers that are not functions,
    aggregations, keywords, label names (in matchers or by/on clauses) or strings."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group().lower() in _PROMQL_WORDS:
            continue
        names.add(match.group())
    return names


def test_metric_names_finds_what_a_query_reads() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (namespace, le) (rate(a_bucket{job=~"x", n="by"}'
        "[$__rate_interval]))) / on (namespace) group_left (node) max(b_total) - time() > 0"
    )
    assert metric_names(expr) == {"a_bucket", "b_total"}


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows hold theirs
    return out


def _queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expr) of every panel query and every query variable."""
    found = [
        (f"panel {p['id']} ({p['title']}) {t['refId']}", t["expr"])
        for p in _panels(dashboard)
        for t in p.get("targets", [])
    ]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            found.append((f"variable {var['name']}", var["query"]["query"]))
    return found


def _as_promql(expr: str, variables: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in GRAFANA_BUILTINS:
            return GRAFANA_BUILTINS[name]
        assert name in variables, f"variable ${name} is not defined in the dashboard"
        return variables[name]

    return _VARIABLE.sub(value, expr)


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    """The dashboard as the chart ships it: out of the rendered ConfigMap."""
    objects = asyncio.run(render_chart({"monitoring": {"grafanaDashboard": {"enabled": True}}}))
    maps = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith(
        "-dashboard")]  # fmt: skip
    assert len(maps) == 1, [o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"]
    config_map = maps[0]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    data: dict[str, Any] = json.loads(config_map["data"]["vpnctl.json"])
    assert data == json.loads(DASHBOARD_FILE.read_text()), "the ConfigMap is not the file"
    return data


def test_dashboard_is_off_by_default() -> None:
    objects = asyncio.run(render_chart({}))
    assert not [o for o in objects if o["metadata"]["name"].endswith("-dashboard")]


def test_dashboard_is_well_formed(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"]
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert "datasource" in variables
    for panel in panels:
        if panel["type"] == "row":
            continue
        where = f"panel {panel['id']} ({panel['title']})"
        assert panel.get("description"), f"{where} has no description"
        assert panel["targets"], f"{where} has no query"
        assert panel["datasource"]["uid"] == "${datasource}", where
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", where
        grid = panel["gridPos"]
        assert grid["x"] >= 0, f"{where} is off the grid"
        assert grid["x"] + grid["w"] <= 24, f"{where} is off the grid"


def test_every_query_parses_and_reads_only_metrics_we_register(
    dashboard: dict[str, Any], tmp_path: Path
) -> None:
    variables = {
        v["name"]: v.get("allValue") or ".+"
        for v in dashboard["templating"]["list"]
        if v["type"] == "query"
    }
    queries = _queries(dashboard)
    rules: list[dict[str, Any]] = []
    for n, (where, expr) in enumerate(queries):
        promql = _as_promql(expr, variables)
        # label_values(metric, label) is Grafana's, not PromQL: check the metric by itself.
        label_values = re.fullmatch(r"label_values\((\w+),\s*\w+\)", promql)
        if label_values:
            promql = label_values.group(1)
        rules.append({"record": f"dashboard:query_{n}", "expr": promql, "labels": {"w": where}})
    (tmp_path / "dashboard_rules.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, width=1000)
    )
    checked = promtool("check", "rules", "dashboard_rules.yaml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules)} rules found" in checked.stdout

    known = {name for family in catalog(tmp_path).values() for name in family.series_names()}
    for rule in rules:
        unknown = metric_names(rule["expr"]) - known - PROMETHEUS_SERIES
        assert not unknown, f"{rule['labels']['w']} reads metrics nobody registers: {unknown}"
    read = {m for rule in rules for m in metric_names(rule["expr"])}
    assert len(read) > 20, sorted(read)  # the extraction found the metrics at all


def test_promtool_check_rejects_a_broken_query(tmp_path: Path) -> None:
    """The check above would pass vacuously if promtool did not parse the expressions."""
    rules = [{"record": "dashboard:broken", "expr": "sum(rate(vpnctl_reconciles_total[5m])"}]
    (tmp_path / "broken.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    checked = promtool("check", "rules", "broken.yaml", cwd=tmp_path)
    assert checked.returncode != 0
