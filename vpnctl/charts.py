"""Package the Helm charts for release, with the generated Cluster API CRDs inside.

Why a build step: the vpnctl chart bundles the Cluster API providers, and helm installs
the files in a chart's ``crds/`` folder before anything else, so a packaged chart should
carry CAPI's CRDs. Those are generated (controller-gen over the Cluster API Go module,
see ``vpnctl.testenv.build``) and big, so the repository never holds them. Packaging
copies them into a staged copy of the chart and runs ``helm package`` on that; the
chart in the repository has no crds/ and works with the CAPI CRDs installed separately
(clusterctl, or the test harness). The Tunnel CRD is not in crds/ at all: it is a
template (templates/crds.yaml over files/crds/), so that ``helm upgrade`` upgrades it.
CAPI's stay in crds/ on purpose: installed once and skipped when they exist, they never
fight a CAPI that clusterctl installed and upgrades.

    python -m vpnctl.charts package --out dist/

writes ``dist/vpnctl-<version>.tgz`` (Tunnel + CAPI CRDs) and
``dist/vpnctl-agent-<version>.tgz``, building the pinned helm and the CRDs first if
the cache lacks them (``make k8s-bins``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

# The charts of a source checkout (this file is vpnctl/charts.py).
REPO_CHARTS = Path(__file__).resolve().parents[1] / "charts"
# The annotation in charts/vpnctl/Chart.yaml naming the CAPI release it bundles.
CAPI_VERSION_ANNOTATION = "vpnctl.io/cluster-api-version"


class ChartError(RuntimeError):
    """A chart could not be staged or packaged; the message says what and where."""


def chart_metadata(chart: Path) -> dict[str, Any]:
    """The chart's Chart.yaml as a dict."""
    path = chart / "Chart.yaml"
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ChartError(f"{chart} is not a Helm chart: cannot read {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ChartError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
        raise ChartError(f"{path} has no chart name; a Chart.yaml needs `name:`")
    return doc


def crd_files(folder: Path) -> list[Path]:
    """The CRD manifests in ``folder`` (``*.yaml``), each checked to hold only
    CustomResourceDefinitions, so a stray file never reaches a chart's crds/."""
    if not folder.is_dir():
        raise ChartError(
            f"CRD folder {folder} does not exist; build the CAPI CRDs with `make k8s-bins`"
        )
    files = sorted(folder.glob("*.yaml"))
    if not files:
        raise ChartError(
            f"CRD folder {folder} holds no *.yaml; rebuild it with `make k8s-bins` "
            "(or remove it so the build makes it again)"
        )
    for path in files:
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        except yaml.YAMLError as exc:
            raise ChartError(f"{path} is not valid YAML: {exc}") from exc
        for doc in docs:
            kind = doc.get("kind") if isinstance(doc, dict) else None
            if kind != "CustomResourceDefinition":
                raise ChartError(
                    f"{path} holds a {kind or 'non-object document'}, not only "
                    "CustomResourceDefinitions; only CRDs go into a chart's crds/"
                )
        if not docs:
            raise ChartError(f"{path} is empty; rebuild the CRDs with `make k8s-bins`")
    return files


def stage_chart(*, chart: Path, into: Path, extra_crds: Path | None = None) -> Path:
    """Copy ``chart`` to ``into/<chart name>`` and add the CRDs of ``extra_crds`` to its
    crds/. Returns the staged chart. Refuses to overwrite anything."""
    name = str(chart_metadata(chart)["name"])
    dest = into / name
    if dest.exists():
        raise ChartError(f"{dest} exists already; stage into an empty folder")
    shutil.copytree(chart, dest, symlinks=False)
    if extra_crds is not None:
        crds = dest / "crds"
        crds.mkdir(exist_ok=True)
        for path in crd_files(extra_crds):
            target = crds / path.name
            if target.exists():
                raise ChartError(
                    f"{chart}/crds/{path.name} exists and {extra_crds} has a file of the "
                    "same name; rename one of them"
                )
            shutil.copyfile(path, target)
    return dest


_PACKAGED = re.compile(r"saved it to:\s*(\S+\.tgz)")


def package_chart(
    *,
    chart: Path,
    helm: Path,
    out_dir: Path,
    extra_crds: Path | None = None,
    version: str | None = None,
    app_version: str | None = None,
    timeout: float = 120.0,
) -> Path:
    """``helm package`` a staged copy of ``chart`` (with ``extra_crds`` added) into
    ``out_dir``; returns the archive. The repository's chart is never modified."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vpnctl-chart-") as tmp:
        staged = stage_chart(chart=chart, into=Path(tmp), extra_crds=extra_crds)
        argv = [str(helm), "package", str(staged), "--destination", str(out_dir.resolve())]
        if version:
            argv += ["--version", version]
        if app_version:
            argv += ["--app-version", app_version]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ChartError(f"could not run `{' '.join(argv)}`: {exc}") from exc
    if done.returncode != 0:
        raise ChartError(f"helm package {chart} failed: {done.stderr.strip()}")
    match = _PACKAGED.search(done.stdout)
    if match is None:
        raise ChartError(f"helm package {chart} printed no archive path: {done.stdout.strip()}")
    return Path(match[1])


def find_helm(*, env: Mapping[str, str] | None = None) -> Path | None:
    """The pinned helm if it is built (the harness's cache) or on PATH; never builds.
    For callers that would rather skip than wait for a build."""
    from vpnctl.testenv.build import default_cache_dir
    from vpnctl.testenv.pinned_versions import HELM_VERSION

    env = os.environ if env is None else env
    cached = default_cache_dir(env) / f"helm-{HELM_VERSION}" / "helm"
    if os.access(cached, os.X_OK):
        return cached
    found = shutil.which("helm", path=env.get("PATH", ""))
    if found is None:
        return None
    try:
        done = subprocess.run(
            [found, "version", "--short"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return Path(found) if done.stdout.strip().startswith(HELM_VERSION) else None


def _package_all(args: argparse.Namespace) -> int:
    from vpnctl.testenv.build import ensure_binaries
    from vpnctl.testenv.pinned_versions import CLUSTER_API_VERSION

    charts_dir = Path(args.charts_dir)
    vpnctl_chart = charts_dir / "vpnctl"
    bundled = chart_metadata(vpnctl_chart).get("annotations", {}).get(CAPI_VERSION_ANNOTATION)
    if bundled != CLUSTER_API_VERSION:
        raise ChartError(
            f"{vpnctl_chart}/Chart.yaml bundles Cluster API {bundled} "
            f"(annotation {CAPI_VERSION_ANNOTATION}) but the harness generates the CRDs of "
            f"{CLUSTER_API_VERSION}; make them agree (and capi.core.image.tag in values.yaml)"
        )
    binaries = ensure_binaries()
    out_dir = Path(args.out)
    archives = [
        package_chart(
            chart=vpnctl_chart,
            helm=binaries.helm,
            out_dir=out_dir,
            extra_crds=binaries.capi_crds,
            version=args.version,
            app_version=args.app_version,
        ),
        package_chart(
            chart=charts_dir / "agent",
            helm=binaries.helm,
            out_dir=out_dir,
            version=args.version,
            app_version=args.app_version,
        ),
    ]
    for archive in archives:
        print(archive)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vpnctl.charts",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    pkg = sub.add_parser("package", help="package both charts, the CAPI CRDs in vpnctl's")
    pkg.add_argument("--out", required=True, help="folder for the .tgz archives")
    pkg.add_argument("--charts-dir", default=str(REPO_CHARTS), help="default: %(default)s")
    pkg.add_argument("--version", default=None, help="override the charts' version")
    pkg.add_argument("--app-version", default=None, help="override the charts' appVersion")
    args = parser.parse_args(argv)
    try:
        return _package_all(args)
    except ChartError as exc:
        print(f"vpnctl.charts: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
