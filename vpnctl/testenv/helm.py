"""Check a Helm chart against a real apiserver: ``helm template`` piped into
``kubectl apply --dry-run=server``.

A server-side dry run runs the real thing short of storing it: schema validation
with unknown fields rejected (kubectl's default ``--validate=strict``), defaulting,
admission. It catches what ``helm lint`` can't, such as a field that doesn't exist in
this Kubernetes version or a typo in a CRD-backed object.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path

from vpnctl.testenv.cluster import KubeCluster
from vpnctl.testenv.cluster_options import KubectlError
from vpnctl.testenv.pinned_versions import KUBERNETES_VERSION
from vpnctl.testenv.procs import environ_without_proxies


class HelmError(RuntimeError):
    pass


async def helm_template(
    helm: Path,
    chart: Path,
    *,
    release: str = "test",
    namespace: str = "default",
    values_files: Sequence[Path] = (),
    set_values: Mapping[str, str] | None = None,
    include_crds: bool = True,
    kube_version: str = KUBERNETES_VERSION,
    timeout: float = 60.0,
) -> str:
    """Render ``chart`` and return the manifests. ``kube_version`` is what
    ``.Capabilities.KubeVersion`` reports: the version we test against, not helm's."""
    argv = [
        str(helm),
        "template",
        release,
        str(chart),
        "--namespace",
        namespace,
        "--kube-version",
        kube_version,
    ]
    if include_crds:
        argv.append("--include-crds")
    for values in values_files:
        argv += ["--values", str(values)]
    for key, value in (set_values or {}).items():
        argv += ["--set", f"{key}={value}"]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environ_without_proxies(),
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    if proc.returncode != 0:
        raise HelmError(f"helm template {chart} failed: {err.decode(errors='replace').strip()}")
    return out.decode()


async def server_dry_run(
    cluster: KubeCluster, manifests: str, *, namespace: str = "default"
) -> str:
    """``kubectl apply --dry-run=server`` the manifests; returns kubectl's output and
    raises ``KubectlError`` with the apiserver's complaint. Creates ``namespace``
    (for real) first: namespaced objects can't be dry-run into a missing one."""
    await ensure_namespace(cluster, namespace)
    return await cluster.kubectl(
        "apply", "--dry-run=server", "--namespace", namespace, "-f", "-", input=manifests
    )


async def ensure_namespace(cluster: KubeCluster, namespace: str) -> None:
    try:
        await cluster.kubectl("create", "namespace", namespace)
    except KubectlError as exc:
        if "AlreadyExists" not in exc.stderr:
            raise


async def helm_template_dry_run(
    cluster: KubeCluster,
    chart: Path,
    *,
    release: str = "test",
    namespace: str = "default",
    values_files: Sequence[Path] = (),
    set_values: Mapping[str, str] | None = None,
    include_crds: bool = True,
) -> str:
    """Render ``chart`` with the cluster's helm and server-dry-run it against the
    cluster. Returns kubectl's output (one ``... (server dry run)`` line an object).

    Note: custom resources of a CRD that the same chart installs fail a dry run
    (the CRD isn't established); apply such CRDs for real first."""
    manifests = await helm_template(
        cluster.binaries.helm,
        chart,
        release=release,
        namespace=namespace,
        values_files=values_files,
        set_values=set_values,
        include_crds=include_crds,
    )
    if not manifests.strip():
        raise HelmError(f"helm template {chart} rendered nothing")
    return await server_dry_run(cluster, manifests, namespace=namespace)


async def helm_command(cluster: KubeCluster, *args: str, timeout: float = 120.0) -> tuple[int, str]:
    """Run the cluster's helm with ARGS against the cluster (``install``, ``upgrade``,
    ``uninstall``...): (exit code, stdout and stderr together), for the caller to assert on.
    Helm gets no proxy variables, since the apiserver is on this machine."""
    proc = await asyncio.create_subprocess_exec(
        str(cluster.binaries.helm),
        "--kubeconfig",
        str(cluster.kubeconfig_path),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=environ_without_proxies(),
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise HelmError(f"helm {' '.join(args)} did not finish in {timeout:g}s") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")
