"""The README's metrics table is what the binaries really register (issue 15): generated
from the controller's and each agent role's registry, compared here, so it cannot go
stale. `python -m tests.support.metric_catalog` rewrites it."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.metric_catalog import (
    README,
    TABLE_BEGIN,
    TABLE_END,
    catalog,
    metrics_table,
)


def test_readme_metrics_table_matches_the_registries(tmp_path: Path) -> None:
    found = catalog(tmp_path)
    text = README.read_text()
    documented = text[text.index(TABLE_BEGIN) + len(TABLE_BEGIN) : text.index(TABLE_END)]
    assert documented.strip() == metrics_table(found), (
        "README.md's metrics table is stale; regenerate it: python -m tests.support.metric_catalog"
    )


def test_the_catalog_sees_what_the_issue_asked_for(tmp_path: Path) -> None:
    """The catalog is only as good as the registries it builds: a few metrics that must be
    in it, and conventions every one of ours keeps."""
    found = catalog(tmp_path)
    for name in (
        "process_resident_memory_bytes",
        "python_gc_collections_total",
        "vpnctl_build_info",
        "vpnctl_leader",
        "vpnctl_workqueue_retries_total",
        "vpnctl_reconcile_duration_seconds",
        "vpnctl_certificate_expiry_timestamp_seconds",
        "vpnctl_agent_certificate_expiry_timestamp_seconds",
        "vpnctl_agent_crl_expiry_timestamp_seconds",
        "vpnctl_agent_node_bytes_total",
        "vpnctl_agent_tunnel_bytes_total",
        "vpnctl_agent_sysctl_ok",
        "vpnctl_agent_route_repairs_total",
    ):
        assert name in found, name
    assert found["vpnctl_build_info"].binary == "both"
    ours = [f for f in found.values() if f.name.startswith("vpnctl_")]
    for family in ours:
        assert family.help.strip(), f"{family.name} has no help text"
        # The tenant's namespace is never `namespace` (kube-prometheus enforces its own).
        assert "namespace" not in family.labels, family.name
        # A unit goes at the end: ..._bytes_total, never ..._bytes_received_total.
        assert not re.search(r"_(bytes|seconds)_(?!total$)", family.name), family.name
    # One tenant-side repair counter, not two (issue 12, item 6).
    assert [f.name for f in ours if "repair" in f.name and "tenant" in f.name] == [
        "vpnctl_tenant_repairs_total"
    ]
