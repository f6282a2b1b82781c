"""The chart's monitoring objects rendered for real (``helm template``) and the real
``promtool``, for the alert-rule and dashboard tests.

Both tools are required, not optional: ``make test`` installs promtool (Debian's
``prometheus`` package, scripts/install-system.sh) and builds the pinned helm, so a
missing one is a broken set-up, reported as a failure that says what to run.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from vpnctl.charts import REPO_CHARTS, find_helm
from vpnctl.testenv import helm_template

VPNCTL_CHART = REPO_CHARTS / "vpnctl"
RELEASE = "vpnctl"
NAMESPACE = "vpnctl-system"


def require_promtool() -> Path:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(
            "promtool is not installed; scripts/install-system.sh installs it "
            "(Debian package prometheus), or: apt-get install --no-install-recommends prometheus"
        )
    return Path(found)


def require_helm() -> Path:
    found = find_helm()
    if found is None:
        pytest.fail("the pinned helm is not built; `make k8s-bins` builds it")
    return found


async def render_chart(values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The vpnctl chart rendered as release ``vpnctl`` in ``vpnctl-system``."""
    helm = require_helm()
    with tempfile.TemporaryDirectory(prefix="vpnctl-chart-") as tmp:
        values_file = Path(tmp, "values.yaml")
        values_file.write_text(yaml.safe_dump(dict(values)))
        text = await helm_template(
            helm, VPNCTL_CHART, release=RELEASE, namespace=NAMESPACE, values_files=[values_file]
        )
    return [d for d in yaml.safe_load_all(text) if d]


def prometheus_rule_groups(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rule groups of the rendered PrometheusRule, as a Prometheus rules file has them."""
    rules = [o for o in objects if o["kind"] == "PrometheusRule"]
    assert len(rules) == 1, f"want one PrometheusRule, got {len(rules)}"
    groups: list[dict[str, Any]] = rules[0]["spec"]["groups"]
    return groups


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(require_promtool()), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
