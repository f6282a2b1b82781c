"""The controller exactly as the vpnctl chart runs it (issue 11), as a process against the
real apiserver: `/metrics` on the rendered metrics port, `/healthz` and `/readyz` on the
rendered health port, tenants reconciled outside the release namespace.

`helm template` renders the chart; the controller container's `command`, `args` and
`env` are run as they are, with these substitutions only, each for what a pod has and a
test process has not:

- Access to the apiserver: in a pod, `vpnctl run` finds no kubeconfig and connects
  in-cluster (service account token, KUBERNETES_SERVICE_HOST). Here KUBECONFIG, an
  environment variable the container does not set, names the service cluster's admin
  kubeconfig, and KUBERNETES_SERVICE_HOST is removed from the environment. The args are
  untouched.
- The downward API: POD_NAME and POD_NAMESPACE get what the kubelet would resolve
  (a pod name, the release namespace).
- `vpnctl` is the console script of the virtualenv running the tests (the image's is
  the same entry point, vpnctl.cli:main).

The metrics and health ports are chosen free through the chart's values
(`controller.metricsPort`, `controller.healthPort`), so this test never collides with
another on the machine; the command line is what the chart renders for those values.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import yaml

from tests.support.capi import create_kubeconfig_secret, create_tenant, kubeconfig_text
from tests.support.polling import aeventually
from vpnctl.charts import REPO_CHARTS
from vpnctl.kube import LEASE, Kube
from vpnctl.testenv import ServiceCluster, helm_template
from vpnctl.testenv.cluster import free_ports

from .controllerfix import wait_condition
from .kubefix import kube, unique  # noqa: F401

pytestmark = pytest.mark.kube


@pytest_asyncio.fixture(loop_scope="session")
async def tenant_namespace(service_cluster: ServiceCluster) -> AsyncIterator[str]:
    """A namespace of tenants that is not the release's."""
    name = unique("tenants")
    await service_cluster.kubectl("create", "namespace", name)
    yield name
    await service_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _controller_container(manifests: str) -> dict[str, Any]:
    (container,) = [
        c
        for d in yaml.safe_load_all(manifests)
        if d and d["kind"] == "Deployment"
        and d["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/component") == "controller"
        for c in d["spec"]["template"]["spec"]["containers"]
        if c["name"] == "controller"
    ]  # fmt: skip
    return dict(container)


def _environment(
    container: dict[str, Any], *, pod_name: str, namespace: str, kubeconfig: Path
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    downward = {"metadata.name": pod_name, "metadata.namespace": namespace}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            env[var["name"]] = downward[var["valueFrom"]["fieldRef"]["fieldPath"]]
    env["KUBECONFIG"] = str(kubeconfig)  # the one substitution for in-cluster access
    return env


async def _get(url: str) -> tuple[int, str] | None:
    try:
        async with aiohttp.ClientSession() as s, s.get(url) as r:
            return r.status, await r.text()
    except aiohttp.ClientError:
        return None


@pytest.mark.parametrize(
    "ci_values", [None, "custom-values.yaml"], ids=["defaults", "custom-values"]
)
async def test_the_rendered_controller_serves_metrics_and_health_on_the_rendered_ports(
    kube: Kube,  # noqa: F811
    service_cluster: ServiceCluster,
    namespace: str,
    tenant_namespace: str,
    tmp_path: Path,
    ci_values: str | None,
) -> None:
    """With the chart's defaults, and with ci/custom-values.yaml (extraArgs, agentImage,
    extraEnv, tenantResources), ports overridden by a values file given after it."""
    metrics_port, health_port = free_ports(2)
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump({"controller": {"metricsPort": metrics_port, "healthPort": health_port}})
    )
    chart = REPO_CHARTS / "vpnctl"
    files = [values] if ci_values is None else [chart / "ci" / ci_values, values]
    manifests = await helm_template(
        service_cluster.binaries.helm,
        chart,
        release="vpnctl",
        namespace=namespace,
        values_files=files,
        include_crds=False,
    )
    container = _controller_container(manifests)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http-metrics": metrics_port, "http-health": health_port}
    (command,) = container["command"]
    executable = Path(sys.executable).parent / command
    assert executable.is_file(), f"{command} is not installed beside {sys.executable}"
    env = _environment(
        container,
        pod_name="vpnctl-0",
        namespace=namespace,
        kubeconfig=service_cluster.kubeconfig_path,
    )
    proc = await asyncio.create_subprocess_exec(
        str(executable),
        *container["args"],
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    metrics_url = f"http://127.0.0.1:{metrics_port}"
    health_url = f"http://127.0.0.1:{health_port}"
    try:

        async def answered(url: str) -> tuple[int, str] | None:
            if proc.returncode is not None:
                raise AssertionError(f"the rendered controller exited {proc.returncode}")
            return await _get(url)

        status, body = await aeventually(
            lambda: answered(f"{health_url}/healthz"), timeout=30, interval=0.2, what="/healthz"
        )
        assert (status, body) == (200, "ok\n")
        status, body = await aeventually(
            lambda: answered(f"{metrics_url}/metrics"), timeout=10, interval=0.2, what="/metrics"
        )
        assert status == 200
        assert "vpnctl_watch_restarts_total" in body or "vpnctl_reconciles_total" in body, body
        # Each port serves its own: probes never answer on the scraped port, nor metrics on
        # the probed one.
        assert await _get(f"{metrics_url}/healthz") == (404, "404: Not Found")
        assert await _get(f"{health_url}/metrics") == (404, "404: Not Found")

        async def ready() -> bool:
            got = await answered(f"{health_url}/readyz")
            return got is not None and got[0] == 200

        await aeventually(ready, timeout=30, interval=0.2, what="/readyz 200")

        # It leads (the Lease in the release namespace, its pod's name as holder) and
        # reconciles a tenant in another namespace: the chart confines it nowhere.
        async def leading() -> bool:
            lease = await kube.get(LEASE, "vpnctl-controller", namespace)
            return lease is not None and lease["spec"].get("holderIdentity") == "vpnctl-0"

        await aeventually(leading, timeout=30, interval=0.2, what="the Lease held by vpnctl-0")
        await create_tenant(kube, tenant_namespace, "charted", nodes=1, kubeconfig=False)
        await create_kubeconfig_secret(
            kube,
            tenant_namespace,
            "charted",
            text=kubeconfig_text("charted", server="https://127.0.0.1:1"),
        )
        await wait_condition(
            kube, tenant_namespace, "charted", "PKIReady", status="True", timeout=30
        )

        async def tenant_in_metrics() -> bool:
            got = await answered(f"{metrics_url}/metrics")
            return got is not None and f'namespace="{tenant_namespace}"' in got[1]

        await aeventually(tenant_in_metrics, timeout=10, interval=0.2, what="the tenant's metrics")

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        assert proc.stderr is not None
        log = (await proc.stderr.read()).decode(errors="replace")
        if os.environ.get("VPNCTL_SHOW_LOG"):
            print(log)
    assert "Traceback" not in log, log
