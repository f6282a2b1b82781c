"""The Tunnel CRD goes with the release (issue 15, item 4): `helm upgrade` upgrades it,
`helm uninstall` keeps it and every Tunnel.

Helm installs a chart's crds/ folder once and never again, so the CRD is a template
(templates/crds.yaml). This runs the real helm against an apiserver of its own: the
shared service cluster has the CRD already, installed without Helm's ownership, which
is exactly the state `helm install` refuses to adopt.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from vpnctl.charts import REPO_CHARTS
from vpnctl.testenv import Binaries, KubeCluster, ServiceCluster
from vpnctl.testenv.helm import helm_command

pytestmark = pytest.mark.kube

VPNCTL = REPO_CHARTS / "vpnctl"
CRD_FILE = Path("files") / "crds" / "tunnels.vpnctl.io.yaml"
RELEASE = "vpnctl"
NAMESPACE = "vpnctl-system"
PROBE_FIELD = "upgradeProbe"


@pytest_asyncio.fixture(loop_scope="session")
async def bare_cluster(k8s_binaries: Binaries, tmp_path: Path) -> AsyncIterator[KubeCluster]:
    """An apiserver with no CRD of ours (nor CAPI's): helm owns the Tunnel CRD here."""
    async with ServiceCluster.start(
        tmp_path / "cluster",
        k8s_binaries,
        name="crd-upgrade",
        controller_manager=False,
        capi_crds=False,
    ) as cluster:
        yield cluster


def _chart_with_probe_field(tmp_path: Path) -> Path:
    """A copy of the chart whose Tunnel CRD has one more optional spec field: the next
    release's CRD."""
    chart = tmp_path / "next" / "vpnctl"
    shutil.copytree(VPNCTL, chart)
    path = chart / CRD_FILE
    crd = yaml.safe_load(path.read_text())
    spec_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert PROBE_FIELD not in spec_schema["properties"]
    spec_schema["properties"][PROBE_FIELD] = {"type": "string"}
    path.write_text(yaml.safe_dump(crd, sort_keys=False))
    return chart


async def _stored_crd(cluster: KubeCluster) -> dict[str, Any]:
    out = await cluster.kubectl("get", "crd", "tunnels.vpnctl.io", "-o", "json")
    crd = json.loads(out)
    assert isinstance(crd, dict)
    return crd


def _spec_fields(crd: dict[str, Any]) -> set[str]:
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return set(schema["properties"]["spec"]["properties"])


async def test_helm_upgrades_the_tunnel_crd_and_uninstall_keeps_it(
    bare_cluster: KubeCluster, tmp_path: Path
) -> None:
    helm_args = ["--namespace", NAMESPACE, "--set", "capi.enabled=false"]
    code, out = await helm_command(
        bare_cluster, "install", RELEASE, str(VPNCTL), "--create-namespace", *helm_args
    )
    assert code == 0, out
    installed = await _stored_crd(bare_cluster)
    assert installed["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert installed["metadata"]["annotations"]["meta.helm.sh/release-name"] == RELEASE
    assert installed["metadata"]["labels"]["clusterctl.cluster.x-k8s.io"] == ""
    assert PROBE_FIELD not in _spec_fields(installed)
    want = yaml.safe_load((VPNCTL / CRD_FILE).read_text())["spec"]["versions"][0]
    assert _spec_fields(installed) == set(
        want["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    )

    # A Tunnel, stored before the upgrade: it must outlive the upgrade and the uninstall.
    tunnel = {
        "apiVersion": "vpnctl.io/v1alpha1",
        "kind": "Tunnel",
        "metadata": {"name": "keep-me", "namespace": NAMESPACE},
        "spec": {"clusterName": "keep-me"},
    }
    await bare_cluster.kubectl("create", "-f", "-", input=json.dumps(tunnel))

    code, out = await helm_command(
        bare_cluster, "upgrade", RELEASE, str(_chart_with_probe_field(tmp_path)), *helm_args
    )
    assert code == 0, out
    upgraded = await _stored_crd(bare_cluster)
    assert PROBE_FIELD in _spec_fields(upgraded)
    assert upgraded["metadata"]["generation"] > installed["metadata"]["generation"]
    # The new field is served: a Tunnel may now set it (the old schema pruned it).
    patched = await bare_cluster.kubectl(
        "patch", "tunnel", "keep-me", "-n", NAMESPACE, "--type=merge",
        "-p", json.dumps({"spec": {PROBE_FIELD: "v2"}}), "-o", "json",
    )  # fmt: skip
    assert json.loads(patched)["spec"][PROBE_FIELD] == "v2"

    code, out = await helm_command(bare_cluster, "uninstall", RELEASE, "--namespace", NAMESPACE)
    assert code == 0, out
    assert "tunnels.vpnctl.io" in out  # helm names what it kept
    # Helm deleted the release's other objects, not the CRD nor the Tunnel.
    deployments = await bare_cluster.kubectl("get", "deployments", "-n", NAMESPACE, "-o", "name")
    assert not deployments.strip()
    kept = await _stored_crd(bare_cluster)
    assert kept["metadata"]["uid"] == installed["metadata"]["uid"]
    assert PROBE_FIELD in _spec_fields(kept)
    names = await bare_cluster.kubectl("get", "tunnels", "-n", NAMESPACE, "-o", "name")
    assert names.split() == ["tunnel.vpnctl.io/keep-me"]

    # Installing again adopts the kept CRD (same release name and namespace).
    code, out = await helm_command(bare_cluster, "install", RELEASE, str(VPNCTL), *helm_args)
    assert code == 0, out
    assert PROBE_FIELD not in _spec_fields(await _stored_crd(bare_cluster))


def _chart_before_templated_crds(tmp_path: Path) -> Path:
    """The chart as released before the CRD became a template: CRD in crds/."""
    chart = tmp_path / "old" / "vpnctl"
    shutil.copytree(VPNCTL, chart)
    (chart / "templates" / "crds.yaml").unlink()
    (chart / "crds").mkdir()
    shutil.copyfile(VPNCTL / CRD_FILE, chart / "crds" / CRD_FILE.name)
    return chart


async def test_upgrading_a_release_whose_crd_came_from_crds_folder(
    bare_cluster: KubeCluster, tmp_path: Path
) -> None:
    """The migration the chart README gives: helm refuses to take over the CRD it once
    installed from crds/ until the CRD carries the release's ownership; then it does."""
    helm_args = ["--namespace", NAMESPACE, "--set", "capi.enabled=false"]
    old = _chart_before_templated_crds(tmp_path)
    code, out = await helm_command(
        bare_cluster, "install", RELEASE, str(old), "--create-namespace", *helm_args
    )
    assert code == 0, out
    before = await _stored_crd(bare_cluster)
    assert "meta.helm.sh/release-name" not in (before["metadata"].get("annotations") or {})

    code, out = await helm_command(bare_cluster, "upgrade", RELEASE, str(VPNCTL), *helm_args)
    assert code != 0
    assert "invalid ownership metadata" in out, out

    # charts/vpnctl/README.md, "Upgrading a release made before this change".
    await bare_cluster.kubectl(
        "label", "crd", "tunnels.vpnctl.io", "app.kubernetes.io/managed-by=Helm"
    )
    await bare_cluster.kubectl(
        "annotate", "crd", "tunnels.vpnctl.io",
        f"meta.helm.sh/release-name={RELEASE}", f"meta.helm.sh/release-namespace={NAMESPACE}",
    )  # fmt: skip
    code, out = await helm_command(bare_cluster, "upgrade", RELEASE, str(VPNCTL), *helm_args)
    assert code == 0, out
    after = await _stored_crd(bare_cluster)
    assert after["metadata"]["uid"] == before["metadata"]["uid"]  # adopted, not recreated
    assert after["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert after["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
