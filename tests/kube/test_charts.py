"""Both Helm charts, linted and checked by the real apiserver (server-side dry run), and the
packaged vpnctl chart carrying the generated Cluster API CRDs.

A server-side dry run is what `helm install` would meet short of storing anything:
schema validation with unknown fields rejected, defaulting, admission. The charts put
objects in more than one namespace (the release's and the CAPI providers'), so every
namespaced object names its namespace and the output is applied without `--namespace`.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import tarfile
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from vpnctl.charts import REPO_CHARTS, main, package_chart
from vpnctl.testenv import Binaries, ServiceCluster, helm_template
from vpnctl.testenv.helm import HelmError, ensure_namespace

pytestmark = pytest.mark.kube

VPNCTL = REPO_CHARTS / "vpnctl"
AGENT = REPO_CHARTS / "agent"
_CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


def _lint(helm: Path, chart: Path, *values: Path) -> subprocess.CompletedProcess[str]:
    argv = [str(helm), "lint", "--strict", str(chart)]
    for path in values:
        argv += ["--values", str(path)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(
    ("chart", "values"),
    [
        (VPNCTL, ()),
        (VPNCTL, (VPNCTL / "ci" / "custom-values.yaml",)),
        (VPNCTL, (VPNCTL / "ci" / "namespaced-values.yaml",)),
        (AGENT, (AGENT / "ci" / "example-values.yaml",)),
        (AGENT, (AGENT / "ci" / "custom-values.yaml",)),
    ],
    ids=["vpnctl", "vpnctl-custom", "vpnctl-namespaced", "agent", "agent-custom"],
)
def test_helm_lint(k8s_binaries: Binaries, chart: Path, values: tuple[Path, ...]) -> None:
    done = _lint(k8s_binaries.helm, chart, *values)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


def test_helm_lint_fails_on_a_bad_value(k8s_binaries: Binaries, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("controller:\n  replicas: two\n")
    done = _lint(k8s_binaries.helm, VPNCTL, bad)
    assert done.returncode != 0
    assert "/controller/replicas" in done.stdout + done.stderr


def _documents(manifests: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(manifests) if d]


async def _render(
    cluster: ServiceCluster, chart: Path, release: str, **options: Any
) -> tuple[str, str]:
    """CHART rendered as RELEASE into a fresh namespace named after it, with OPTIONS of
    ``helm_template``: (that namespace, the manifests)."""
    namespace = f"{release}-{uuid.uuid4().hex[:6]}"
    manifests = await helm_template(
        cluster.binaries.helm, chart, release=release, namespace=namespace, **options
    )
    return namespace, manifests


async def _dry_run(cluster: ServiceCluster, manifests: str) -> str:
    """Create (for real) the namespaces the objects go to, then server-dry-run them all."""
    docs = _documents(manifests)
    for doc in docs:
        assert doc["kind"] in _CLUSTER_SCOPED or doc["metadata"].get("namespace"), (
            f"{doc['kind']} {doc['metadata']['name']} names no namespace"
        )
    for namespace in sorted({d["metadata"].get("namespace") for d in docs} - {None}):
        await ensure_namespace(cluster, str(namespace))
    out = await cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=manifests)
    lines = [line for line in out.splitlines() if line.strip()]
    # One "... (server dry run)" line per object: nothing skipped.
    assert len(lines) == len(docs), out
    assert all(line.endswith("(server dry run)") for line in lines), out
    return out


@pytest.mark.parametrize(
    "values",
    [(), (VPNCTL / "ci" / "custom-values.yaml",)],
    ids=["defaults", "custom"],
)
async def test_vpnctl_chart_passes_server_dry_run(
    service_cluster: ServiceCluster, values: tuple[Path, ...]
) -> None:
    release_ns, manifests = await _render(service_cluster, VPNCTL, "vpnctl", values_files=values)
    out = await _dry_run(service_cluster, manifests)
    assert "customresourcedefinition.apiextensions.k8s.io/tunnels.vpnctl.io" in out
    assert re.search(r"deployment\.apps/(vpnctl|vpnctl-ctl) (created|configured)", out), out
    assert "deployment.apps/capi-controller-manager" in out
    assert "poddisruptionbudget.policy/" in out
    # A dry run stores nothing.
    stored = await service_cluster.kubectl("get", "deployments", "-n", release_ns, "-o", "name")
    assert not stored.strip()


async def test_vpnctl_chart_without_capi_stays_in_its_namespace(
    service_cluster: ServiceCluster,
) -> None:
    release_ns, manifests = await _render(
        service_cluster, VPNCTL, "vpnctl", set_values={"capi.enabled": "false"}, include_crds=False
    )
    docs = _documents(manifests)
    assert {d["metadata"].get("namespace") for d in docs} == {release_ns, None}
    await _dry_run(service_cluster, manifests)


@pytest.mark.parametrize("values", ["example-values.yaml", "custom-values.yaml"])
async def test_agent_chart_passes_server_dry_run(
    service_cluster: ServiceCluster, values: str
) -> None:
    # The chart goes into an existing namespace (no Namespace object by default);
    # _dry_run creates it first.
    _, manifests = await _render(
        service_cluster, AGENT, "agent", values_files=[AGENT / "ci" / values]
    )
    out = await _dry_run(service_cluster, manifests)
    assert "daemonset.apps/vpnctl-node-agent" in out


async def test_schema_rejects_a_bad_value_with_a_clear_error(
    service_cluster: ServiceCluster,
) -> None:
    with pytest.raises(HelmError) as caught:
        await helm_template(
            service_cluster.binaries.helm, VPNCTL, set_values={"controller.replicas": "two"}
        )
    # helm --set turns "two" into a string; the schema wants an integer.
    message = str(caught.value)
    assert "values don't meet the specifications of the schema" in message
    assert "at '/controller/replicas': got string, want integer" in message

    with pytest.raises(HelmError, match=re.escape("at '/server/remotes/0/port'")):
        await helm_template(
            service_cluster.binaries.helm,
            AGENT,
            values_files=[AGENT / "ci" / "example-values.yaml"],
            set_values={"server.remotes[0].port": "https"},
        )


async def test_packaged_chart_carries_the_capi_crds(
    service_cluster: ServiceCluster, tmp_path: Path
) -> None:
    binaries = service_cluster.binaries
    archive = await asyncio.to_thread(
        package_chart,
        chart=VPNCTL,
        helm=binaries.helm,
        out_dir=tmp_path / "dist",
        extra_crds=binaries.capi_crds,
    )
    assert archive.name == "vpnctl-0.1.0.tgz"
    with tarfile.open(archive) as tar:
        members = set(tar.getnames())
    # The Tunnel CRD is a template's file (upgraded by `helm upgrade`), CAPI's are crds/.
    assert "vpnctl/files/crds/tunnels.vpnctl.io.yaml" in members
    assert "vpnctl/crds/tunnels.vpnctl.io.yaml" not in members
    for crd in sorted(binaries.capi_crds.glob("*.yaml")):
        assert f"vpnctl/crds/{crd.name}" in members
    assert not [m for m in members if m.startswith("vpnctl/ci/")], "ci/ values are not shipped"
    # The repository's chart is untouched: still no crds/ folder.
    assert not (VPNCTL / "crds").exists()

    manifests = await helm_template(
        binaries.helm, archive, release="vpnctl", namespace="vpnctl-pkg", include_crds=True
    )
    crds = {
        d["metadata"]["name"]
        for d in _documents(manifests)
        if d["kind"] == "CustomResourceDefinition"
    }
    assert "clusters.cluster.x-k8s.io" in crds
    assert {"machines.cluster.x-k8s.io", "tunnels.vpnctl.io"} <= crds
    # CAPI's CRDs are in crds/: without --include-crds only the Tunnel CRD (a template) is.
    without = await helm_template(
        binaries.helm, archive, release="vpnctl", namespace="vpnctl-pkg", include_crds=False
    )
    assert [
        d["metadata"]["name"]
        for d in _documents(without)
        if d["kind"] == "CustomResourceDefinition"
    ] == ["tunnels.vpnctl.io"]
    # The packaged chart, CAPI CRDs and all, passes the apiserver too (the CRDs exist in
    # the service cluster already: configured, not created).
    out = await _dry_run(service_cluster, manifests)
    assert "customresourcedefinition.apiextensions.k8s.io/clusters.cluster.x-k8s.io" in out


async def test_package_command_writes_both_charts(
    k8s_binaries: Binaries, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "dist"
    rc = await asyncio.to_thread(main, ["package", "--out", str(out_dir), "--version", "0.2.0"])
    assert rc == 0
    printed = capsys.readouterr().out.split()
    assert [Path(p).name for p in printed] == ["vpnctl-0.2.0.tgz", "vpnctl-agent-0.2.0.tgz"]
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "vpnctl-0.2.0.tgz",
        "vpnctl-agent-0.2.0.tgz",
    ]
    with tarfile.open(out_dir / "vpnctl-0.2.0.tgz") as tar:
        assert "vpnctl/crds/cluster.x-k8s.io_clusters.yaml" in tar.getnames()
    with tarfile.open(out_dir / "vpnctl-agent-0.2.0.tgz") as tar:
        assert not [m for m in tar.getnames() if "/crds/" in m]


def test_package_command_explains_a_missing_chart(
    k8s_binaries: Binaries, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["package", "--out", str(tmp_path), "--charts-dir", str(tmp_path / "nowhere")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "is not a Helm chart" in err
    assert "nowhere/vpnctl" in err
